"""The RoseTTAFold family's SE(3)-Transformer blocks on se3t: no DGL, any recent torch.

RFdiffusion, RoseTTAFold2 (RF2) and RoseTTAFold All-Atom (RFAA) vendor modified copies of
NVIDIA's SE3Transformer and call it through an ``SE3TransformerWrapper`` on residue graphs built
with DGL (docs/rosettafold.md). This module is a drop-in for both:

- :class:`SE3TransformerWrapper`: their constructor (``num_layers``, ``num_channels``,
  ``num_degrees``, ``n_heads``, ``div``, ``l0_in_features``, ``l0_out_features``,
  ``l1_in_features``, ``l1_out_features``, ``num_edge_features``) and ``forward(G,
  type_0_features, type_1_features=None, edge_features=None) -> {"0": ..., "1": ...}``,
  computing the vendored code's function; ``variant`` picks whose copy ("rfdiffusion", "rf2",
  "rfaa"). ``G`` is a :class:`ResidueGraph` or a ``DGLGraph`` with ``edata["rel_pos"]``.
  ``state_dict()`` / ``load_state_dict()`` use the vendored keys and layouts, also when the
  module sits inside a whole RF model under any prefix, so an RF checkpoint loads unchanged.
- :func:`make_full_graph`, :func:`make_topk_graph`: their graph builders, returning a
  :class:`ResidueGraph` with the same edges in the same order.

What differs between the copies, and how each is reproduced here:

- final layer: RFdiffusion ends with NVIDIA's TFN convolution (self-interaction added per
  incoming edge); RF2 and RFAA with a per-node linear layer (``final_layer="lin"``);
- edge length fed to the radial profiles: ``|x|`` (RFdiffusion) or ``asinh(max(|x| - 4, 0)) / 3``
  (``populate_edge="arcsin"``, RF2, RFAA); also ``"log"`` (``log(1 + |x|)``) and ``"zero"``;
- fuse levels, which fix which degree pairs share a radial profile (the parameter layout):
  RFdiffusion and RFAA run attention blocks FULL with ``tensor_cores and not low_memory``, else
  PARTIAL, and their final convolution at FULL; RF2 follows NVIDIA (``low_memory`` -> NONE).
  Each layer then downgrades on its fibers as NVIDIA's does (:func:`se3t.nn.conv.nvidia_fusion`).
  RFdiffusion's and RFAA's per-input convolutions are built "FULL" only to skip an unpadding
  slice: the same function as NVIDIA's PARTIAL;
- RFAA: ``sum_over_edge=False`` averages the final convolution's messages over incoming edges;
  ``channels_div`` may be a per-degree dict; the attention (logits, softmax, weighted sum) and
  the queries run with autocast off, in float32 at least. RF2 runs the whole block with
  autocast off.

Everything NVIDIA-specific (Clebsch-Gordan signs of e3nn 0.3.3, the radial rows' order, the
``(0, 0)`` pairwise kernel without ``Y_0``, bases without gradient) is what
:mod:`se3t.interop.nvidia` already reproduces; this module reuses its key mapping.
"""

from se3t.interop.rosettafold.blocks import VARIANTS
from se3t.interop.rosettafold.graphs import ResidueGraph, make_full_graph, make_topk_graph
from se3t.interop.rosettafold.wrapper import SE3TransformerWrapper

__all__ = [
    "VARIANTS",
    "ResidueGraph",
    "SE3TransformerWrapper",
    "make_full_graph",
    "make_topk_graph",
]
