"""NVIDIA's SE3Transformer (DeepLearningExamples, DGLPyTorch/DrugDiscovery/SE3Transformer) on se3t.

``from_state_dict(state_dict, **kwargs)`` builds the se3t model that computes NVIDIA's function
from the keyword arguments of NVIDIA's ``SE3TransformerPooled`` (``fiber_in``, ``fiber_out``,
``fiber_edge``, ``num_degrees``, ``num_channels``, ``output_dim``, ``num_layers``,
``num_heads``, ``channels_div``, ``pooling``, ``norm``, ``use_layer_norm``, ``tensor_cores``,
``low_memory``) or of its plain ``SE3Transformer`` (``fiber_hidden`` instead of
``num_degrees``/``num_channels``/``output_dim``, plus ``return_type``), and loads every tensor of
NVIDIA's state dict into it. No DGL: the model runs on se3t's :class:`~se3t.graph.Batch` or on
NVIDIA-style feature dicts with an se3t :class:`~se3t.graph.Graph`.

What makes the function NVIDIA's (docs/model.md, "NVIDIA's parameterization"):

- the fuse level of every convolution as NVIDIA decides it (``tensor_cores`` -> FULL,
  ``low_memory`` -> NONE, else PARTIAL, each layer downgrading when its fibers fail the
  level's channel conditions: :func:`se3t.nn.conv.nvidia_fusion`), which fixes which degree
  pairs share a radial MLP;
- the radial last layer's rows, which NVIDIA orders ``(c_out, c_in, pair, J)`` across a fused
  group and se3t per pair (``se3t.nn.kernel.KernelSpec``): a fixed row permutation, exact;
- NVIDIA's Clebsch-Gordan signs: its pinned e3nn (0.3.3) returns some ``Q_J`` with the
  opposite sign to later releases; each ``Q_J`` meets its own radial weight, so the loader
  negates those weights (exact; the table is recorded from NVIDIA's environment by
  benchmarks/nvidia/cg_table.py into :mod:`se3t.interop._nvidia_cg`);
- NVIDIA's pairwise ``(0, 0)`` kernel without the basis constant ``Y_0``;
- the final convolution's self-interaction added per incoming edge;
- bases computed without gradient (NVIDIA's ``get_basis(compute_gradients=False)``): the
  gradient with respect to positions flows through the edge lengths only, as in NVIDIA.

``to_state_dict(model)`` writes NVIDIA's keys back; a round trip is the identity. Unknown,
missing or wrongly shaped keys raise :class:`NvidiaStateDictError` naming the key and the shape
NVIDIA's model has for it.

The parts: :mod:`se3t.interop.nvidia_model` (the model of NVIDIA's arguments),
:mod:`se3t.interop.nvidia_weights` (state dicts in and out) and
:mod:`se3t.interop.nvidia_checkpoint` (DLE training checkpoints with their sidecar YAML).
"""

from __future__ import annotations

from se3t.interop.nvidia_checkpoint import DLEModel, load_dle_checkpoint, read_sidecar, sidecar_path
from se3t.interop.nvidia_model import (
    NVIDIA_COMMIT,
    NvidiaSE3Transformer,
    NvidiaStateDictError,
    nv_order,
    nvidia_model,
)
from se3t.interop.nvidia_weights import (
    Entry,
    block_entries,
    conv_entries,
    expected_shapes,
    from_state_dict,
    fuse_levels,
    to_state_dict,
)

__all__ = [
    "NVIDIA_COMMIT",
    "NvidiaSE3Transformer",
    "DLEModel",
    "Entry",
    "NvidiaStateDictError",
    "block_entries",
    "conv_entries",
    "expected_shapes",
    "load_dle_checkpoint",
    "read_sidecar",
    "sidecar_path",
    "from_state_dict",
    "fuse_levels",
    "nv_order",
    "nvidia_model",
    "to_state_dict",
]
