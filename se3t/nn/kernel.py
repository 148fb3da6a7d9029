"""The fused TFN contraction: radial last layer, basis and features in one edge-chunked op.

For one group of degree pairs that share a radial profile (a fusion group of ``ConvSE3``), the
message of edge ``e`` to output degree ``d_out`` is

    msg[e, c_o, m_o] = sum_{d_in, c_i, J, m_i} R[e, c_o, (d_in, c_i, J)] * B[e, d_in, m_i, J, m_o]
                                                * x_{d_in}[src(e), c_i, m_i]
    R[e, :] = z[e, :] @ W^T              (z: radial hidden layer [E, H]; W: last layer, no bias)

evaluated in the order with fewest operations (NVIDIA's two-step contraction):

    T[e, (c_i, J), m_o] = x_{d_in}[src(e)] @ B[e, d_in]      (per input degree, small bmm)
    msg[e, :, m_o]      = R[e] (as [C_o, K]) @ T[e]  (K = sum over d_in of C_i * num_freq)

The radial output ``R`` is by far the largest tensor of the model (``E * sum C_o K`` values:
~45,000 per edge per layer at the paper's sizes, 0.7 GB per layer at batch 100), so this op never
keeps it: the forward pass runs edge chunk by edge chunk, and the backward pass recomputes
``R`` and ``T`` per chunk from the saved ``z``, ``W``, node features and basis. Saved memory per
layer is O(E * H + N * C * 16) instead of O(E * C_o * K); the price is one extra GEMM
(``z @ W^T``) in backward. Gradients flow to ``z``, ``W``, the node features and the basis.

Evaluations of the same sums, each registered in :mod:`se3t.nn.evaluations` (chosen there per
fusion group for the state's :class:`se3t.choices.Kernel`, recorded in the
:class:`KernelState`'s ``repr``):

- ``cpp`` (:mod:`se3t.nn.kernel_cpu`, CPU, float32/float64): a C++/OpenMP kernel compiled at
  first use that computes ``R`` tile by tile in L1 and contracts it at once: ``R`` is never
  written to memory, not even per chunk (docs/kernel.md). It computes ``R`` once for an edge
  and its reverse when their radial inputs are equal (:mod:`se3t.nn.sharing`).
- ``triton`` (:mod:`se3t.nn.kernel_triton`, CUDA; opt-in): the same tiling in Triton.
- ``torch-concat`` (:class:`se3t.nn.kernel_torch._ConcatTFN`): the readable torch reference
  of the two above, used when every input degree of the group has the same channel count
  (every group of the paper's model): node features of all input degrees are concatenated
  along ``m`` (``[N, sum (2 d_in + 1), C]``) and the basis is laid out per output degree as a
  block matrix ``[E, sum (2 d_in + 1), sum_{d_in} num_freq (2 d_out + 1)]`` (zero off the
  diagonal blocks, :func:`se3t.so3.blocks.block_basis`). Then ``T`` of ALL input degrees is
  one bmm and the message to ``d_out`` another, with the radial weights' rows permuted to
  ``(c_o, c_i, d_in, J)`` so that ``K`` runs over every input degree at once.
- ``torch-pairs`` (:class:`se3t.nn.kernel_torch._FusedTFN`, any fibers): one bmm per
  ``(d_in, d_out)`` pair.
- ``pairwise`` (:func:`se3t.nn.kernel_torch.pairwise`): plain autograd on the whole radial
  output of one pair, what ``Fusion.PAIRWISE`` asks for; the reference of all the above.

This module is the dispatcher: the descriptor (:class:`KernelSpec`, :mod:`se3t.nn.kernel_spec`)
and the per-pass state (:class:`KernelState`, :mod:`se3t.nn.kernel_state`) live in their own
modules, and the evaluations' modules are imported here so that they register.
"""

from __future__ import annotations

import torch
from torch import Tensor

# the evaluations' modules are imported for their registration in se3t.nn.evaluations
from se3t.nn import evaluations, kernel_cpu, kernel_torch, kernel_triton  # noqa: F401
from se3t.nn.kernel_spec import KernelSpec
from se3t.nn.kernel_state import KernelState, compute_dtype
from se3t.nn.sharing import RadialShare

__all__ = ["KernelSpec", "KernelState", "fused_tfn"]


def fused_tfn(
    spec: KernelSpec,
    z: Tensor,
    weight: Tensor,
    basis: Tensor,
    src: Tensor,
    xs: list[Tensor],
    state: KernelState,
    share: RadialShare | None = None,
    evaluation: str | None = None,
) -> dict[int, Tensor]:
    """Messages ``{d_out: [E, C_o, 2 d_out + 1]}`` of one fusion group (see the module docstring).

    ``z [E, H]`` radial hidden features, ``weight [num_radial, H]`` the radial last layer,
    ``basis [E, basis_size(spec.basis_degree)]`` flat (the state's basis, or a per-layer one
    such as the first layer's), ``src [E]`` long, ``xs`` node features ``[N, C_i, 2 d_in + 1]``
    in ``spec.ins`` order, ``state`` the pass's :class:`KernelState`. All floating inputs share
    one dtype (under autocast they are cast to the autocast dtype first). With ``share``
    (:meth:`KernelState.radial_share`), ``z`` has one row per run of edges that share their
    radial weights, ``[U, H]`` (:mod:`se3t.nn.sharing`). ``evaluation``: run this one (a
    :class:`se3t.choices.Evaluation`) instead of the state's choice.
    """
    how = evaluations.entry(evaluation or state.evaluation(spec, z))
    state.ran[how.name.value] = state.ran.get(how.name.value, 0) + 1
    if how.autocast:
        out = how.apply(spec, state, z, weight, basis, src, xs, share)
    else:
        device_type = z.device.type
        dt = compute_dtype(z)
        z, weight = z.to(dt), weight.to(dt)
        xs = [x.to(dt) for x in xs]
        if share is not None and not how.shares_radial:
            z, share = share.expand(z), None  # the other evaluations take one row per edge
        with torch.autocast(device_type, enabled=False):
            out = how.apply(spec, state, z, weight, basis, src, xs, share)
    return {do: o for (do, _), o in zip(spec.outs, out, strict=True)}
