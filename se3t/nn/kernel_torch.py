"""The torch evaluations of the fused TFN contraction (module docstring of
:mod:`se3t.nn.kernel`): ``torch-pairs`` (:class:`_FusedTFN`, any fibers, one bmm per degree
pair), ``torch-concat`` (:class:`_ConcatTFN`, input degrees concatenated; the readable
reference of the compiled kernels), and ``pairwise`` (plain autograd on the whole radial
output: the reference of ``Fusion.PAIRWISE`` that every fused path is tested against).
"""

from __future__ import annotations

import torch
from torch import Tensor

from se3t.choices import Evaluation, Kernel
from se3t.nn.evaluations import Registered, register
from se3t.nn.graph_ops import gather
from se3t.nn.kernel_spec import KernelSpec, permuted_weights
from se3t.so3.basis import num_freq, unflatten_basis

__all__ = ["pairwise"]


def _pair_radial(R: Tensor, spec: KernelSpec, di: int, ci: int, do: int, co: int) -> Tensor:
    # [c, C_o, C_i * nf] view of one pair's radial weights inside R_do [c, rows of d_out]
    off = spec.w_off[(di, do)] - spec.do_rows[do][0]
    return R[:, off : off + co * ci * num_freq(di, do)].view(R.shape[0], co, ci * num_freq(di, do))


class _FusedTFN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, weight, basis, src, spec, state, *xs):
        E, chunk = z.shape[0], state.chunk_edges(spec, z)
        x_of = {di: x for (di, _), x in zip(spec.ins, xs, strict=True)}
        outs = {do: z.new_empty(E, co, 2 * do + 1) for do, co in spec.outs}
        for s in range(0, E, chunk):
            e = slice(s, s + chunk)
            src_e, z_e, b_e = src[e], z[e], basis[e]
            xs_e = {di: gather(x, src_e) for di, x in x_of.items()}  # [c, C_i, 2 d_in + 1]
            c = z_e.shape[0]
            for do, co in spec.outs:
                first, rows = spec.do_rows[do]
                # [c, rows]: radial weights of d_out, into reused scratch (no page faults)
                R = torch.mm(
                    z_e,
                    weight[first : first + rows].t(),
                    out=state.scratch("R", c * rows, z).view(c, rows),
                )
                acc = outs[do][e]
                for k, (di, ci) in enumerate(spec.ins):
                    nf = num_freq(di, do)
                    # [c, C_i, 2 d_in+1] @ [c, 2 d_in+1, nf (2 d_out+1)] -> [c, C_i nf, 2 d_out+1]
                    T = state.scratch("T", c * ci * nf * (2 * do + 1), z).view(
                        c, ci, nf * (2 * do + 1)
                    )
                    torch.bmm(xs_e[di], spec.basis_pair(b_e, di, do), out=T)
                    T = T.view(c, ci * nf, 2 * do + 1)
                    Rp = _pair_radial(R, spec, di, ci, do, co)  # [c, C_o, C_i nf]
                    if k == 0:
                        torch.bmm(Rp, T, out=acc)
                    else:
                        acc.baddbmm_(Rp, T)
        ctx.spec, ctx.state = spec, state
        ctx.save_for_backward(z, weight, basis, src, *xs)
        return tuple(outs[do] for do, _ in spec.outs)

    @staticmethod
    def backward(ctx, *grads):
        z, weight, basis, src, *xs = ctx.saved_tensors
        spec, state = ctx.spec, ctx.state
        chunk = state.chunk_edges(spec, z)
        need_z, need_w, need_b = ctx.needs_input_grad[:3]
        need_x = ctx.needs_input_grad[6:]
        grad_of = {
            do: (g.contiguous() if g is not None else None)
            for (do, _), g in zip(spec.outs, grads, strict=True)
        }
        x_of = {di: x for (di, _), x in zip(spec.ins, xs, strict=True)}
        acc = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
        gz = torch.zeros_like(z) if need_z else None
        gw = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        gb = torch.zeros_like(basis) if need_b else None
        gx_of = {
            di: torch.zeros_like(x) if n else None
            for (di, _), x, n in zip(spec.ins, xs, need_x, strict=True)
        }
        for s in range(0, z.shape[0], chunk):
            e = slice(s, s + chunk)
            _pairs_backward_chunk(
                spec, state, e, z, weight, basis, src, x_of, grad_of, gz, gw, gb, gx_of, acc
            )
        if gw is not None:
            gw = gw.to(weight.dtype)
        return (gz, gw, gb, None, None, None, *(gx_of[di] for di, _ in spec.ins))


def _pairs_backward_chunk(
    spec, state, e, z, weight, basis, src, x_of, grad_of, gz, gw, gb, gx_of, acc
):
    """The pair loop's backward pass over the edges ``e``: adds their share into the gradients
    ``gz``, ``gw`` (accumulated in ``acc``), ``gb`` and ``gx_of`` (None where not wanted)."""
    need_z, need_w, need_b = gz is not None, gw is not None, gb is not None
    same = acc == weight.dtype  # accumulate the weight gradient in place (addmm_)
    src_e, z_e, b_e = src[e], z[e], basis[e]
    c = z_e.shape[0]
    gz_e = gz[e] if gz is not None else None
    xs_e = {di: gather(x, src_e) for di, x in x_of.items()}
    gxs_e = {di: None for di in x_of}
    for do, co in spec.outs:
        g = grad_of[do]
        if g is None:
            continue
        g = g[e]  # [c, C_o, 2 d_out + 1]
        first, rows = spec.do_rows[do]
        W = weight[first : first + rows]
        R = torch.mm(z_e, W.t(), out=state.scratch("R", c * rows, z).view(c, rows))  # recomputed
        # gradient of the radial weights of d_out, [c, rows]: pair blocks filled by bmm,
        # then ONE GEMM each for the weight and z gradients (not one per pair)
        gR = state.scratch("gR", c * rows, z).view(c, rows) if need_w or need_z else None
        for di, ci in spec.ins:
            nf, m = num_freq(di, do), 2 * do + 1
            Bp = spec.basis_pair(b_e, di, do)  # [c, 2 d_in+1, nf m]
            if gR is not None:
                T = state.scratch("T", c * ci * nf * m, z).view(c, ci, nf * m)
                torch.bmm(xs_e[di], Bp, out=T)
                T = T.view(c, ci * nf, m)
                torch.bmm(g, T.transpose(1, 2), out=_pair_radial(gR, spec, di, ci, do, co))
            if gx_of[di] is None and not need_b:
                continue
            gT = state.scratch("gT", c * ci * nf * m, z).view(c, ci * nf, m)
            torch.bmm(_pair_radial(R, spec, di, ci, do, co).transpose(1, 2), g, out=gT)
            gT = gT.view(c, ci, nf * m)  # [c, C_i, nf m]
            if gx_of[di] is not None:
                if gxs_e[di] is None:
                    gxs_e[di] = torch.bmm(gT, Bp.transpose(1, 2))  # [c, C_i, 2 d_in + 1]
                else:
                    gxs_e[di].baddbmm_(gT, Bp.transpose(1, 2))
            if need_b:
                spec.basis_pair(gb[e], di, do).add_(torch.bmm(xs_e[di].transpose(1, 2), gT))
        if need_w:
            if same:
                gw[first : first + rows].addmm_(gR.t(), z_e)
            else:
                gw[first : first + rows] += (gR.t() @ z_e).to(acc)
        if need_z:
            gz_e.addmm_(gR, W)
    for di, gx in gxs_e.items():
        if gx is not None:
            t = gx_of[di]
            t.view(t.shape[0], -1).index_add_(0, src_e, gx.view(c, -1))


class _ConcatTFN(torch.autograd.Function):
    """The degree-concatenated evaluation (module docstring): inputs ``z [E, H]``, ``weight``
    (stored row order), ``x_all [N, sum (2 d_in + 1), C]`` (channels last), ``src``, and the
    stacked block basis of the group's output degrees (:func:`se3t.so3.blocks.block_basis`).
    Every per-edge operand of the three big batched matmuls (message, radial-weight gradient,
    ``T`` gradient) is laid out so that MKL reads it contiguously: the messages come out as
    ``[E, 2 d_out + 1, C_o]`` and are returned as a transposed view. With the radial weights
    ``R[e]`` as ``[K, C_o]`` (``K = (d_in, J, c_i)``) and ``T[e]`` as ``[2 d_out + 1, K]``:

        msg^T = T @ R        dR = T^T @ dmsg^T        dT = dmsg^T @ R^T

    where the backward pass recomputes ``R`` directly as ``R^T`` (``[C_o, K]``, the
    ``channels_first`` row order) so that ``dT``'s operands are contiguous too. ``T`` (and its
    gradient, and the node-feature gradient) of all output degrees is one bmm per chunk.
    """

    @staticmethod
    def forward(ctx, z, weight, x_all, src, spec, state, block):
        E, C, nb = z.shape[0], x_all.shape[2], block.shape[1]
        chunk = state.chunk_edges(spec, z)
        wts = permuted_weights(spec, weight)  # {d_out: [H, rows]}, rows (d_in, J, c_i, c_o)
        outs = [z.new_empty(E, 2 * do + 1, co) for do, co in spec.outs]
        for s in range(0, E, chunk):
            e = slice(s, s + chunk)
            z_e = z[e]
            c = z_e.shape[0]
            x_e = gather(x_all, src[e])  # [c, sum (2 d_in + 1), C]
            # T of every degree pair at once: [c, sum_{d_out} (m_out, d_in, J), C]
            T = torch.bmm(block[e], x_e, out=state.scratch("T", c * nb * C, z).view(c, nb, C))
            for k, (do, co) in enumerate(spec.outs):
                r0, r1 = spec.block_rows[do]
                rows, m = wts[do].shape[1], 2 * do + 1
                R = torch.mm(z_e, wts[do], out=state.scratch("R", c * rows, z).view(c, rows))
                T_do = T[:, r0:r1].view(c, m, -1)  # [c, m_out, K]
                torch.bmm(T_do, R.view(c, rows // co, co), out=outs[k][e])
        ctx.spec, ctx.state = spec, state
        ctx.wts = wts  # 4 B x num_radial x H: cheaper to keep than to gather again
        ctx.save_for_backward(z, weight, x_all, src, block)
        return tuple(o.transpose(1, 2) for o in outs)  # [E, C_o, 2 d_out + 1]

    @staticmethod
    def backward(ctx, *grads):
        z, weight, x_all, src, block = ctx.saved_tensors
        spec, state = ctx.spec, ctx.state
        chunk = state.chunk_edges(spec, z)
        need_z, need_w, need_x, need_b = (ctx.needs_input_grad[i] for i in (0, 1, 2, 6))
        wts = ctx.wts
        wts_cf = None
        if need_x or need_b:
            wts_cf = permuted_weights(spec, weight, channels_first=True)
        acc = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
        # [E, m, C_o], contiguous (free when the incoming gradient is a transposed view)
        grads_t = [None if g is None else g.transpose(1, 2).contiguous() for g in grads]
        gz = torch.zeros_like(z) if need_z else None
        gx = torch.zeros_like(x_all) if need_x else None
        gwts = None  # the permuted weight gradients
        if need_w:
            gwts = {do: torch.zeros(w.shape, dtype=acc, device=w.device) for do, w in wts.items()}
        gb = torch.zeros_like(block) if need_b else None
        for s in range(0, z.shape[0], chunk):
            e = slice(s, s + chunk)
            x_e = gather(x_all, src[e])
            gT = _concat_backward_degrees(
                spec,
                state,
                e,
                z,
                block,
                x_e,
                grads_t,
                (wts, wts_cf),
                gz,
                gwts,
                acc,
                need_x or need_b,
            )
            if gT is None:
                continue
            c = x_e.shape[0]
            if need_x:
                gx_e = torch.bmm(block[e].transpose(1, 2), gT)  # [c, sum (2 d_in + 1), C]
                gx.view(gx.shape[0], -1).index_add_(0, src[e], gx_e.view(c, -1))
            if need_b:
                torch.bmm(gT, x_e.transpose(1, 2), out=gb[e])
        gw = _stored_order(spec, weight, gwts, acc) if need_w else None
        return (gz, gw, gx, None, None, None, gb)


def _concat_backward_degrees(
    spec, state, e, z, block, x_e, grads_t, weights, gz, gwts, acc, need_t
):
    """The output degrees' backward pass over the edges ``e``: adds into ``gz`` and the
    permuted weight gradients ``gwts`` (None: not wanted); returns the gradient of ``T``
    (``need_t``) or None. ``weights``: the permuted weights, rows-first and channels-first."""
    (wts, wts_cf), need_w = weights, gwts is not None
    z_e = z[e]
    c, C, nb = z_e.shape[0], x_e.shape[2], block.shape[1]
    T = torch.bmm(block[e], x_e, out=state.scratch("T", c * nb * C, z).view(c, nb, C))
    gT = None
    if need_t:
        gT = state.scratch("gT", c * nb * C, z).view(c, nb, C)
    for k, (do, co) in enumerate(spec.outs):
        r0, r1 = spec.block_rows[do]
        if grads_t[k] is None:
            if gT is not None:
                gT[:, r0:r1].zero_()
            continue
        g = grads_t[k][e]  # [c, m, C_o]
        rows, m = wts[do].shape[1], 2 * do + 1
        T_do = T[:, r0:r1].view(c, m, -1)  # [c, m, K]
        if need_w or gz is not None:
            gR = state.scratch("gR", c * rows, z).view(c, rows // co, co)
            torch.bmm(T_do.transpose(1, 2), g, out=gR)
            gR = gR.view(c, rows)
            if need_w:
                if acc == z.dtype:
                    gwts[do].addmm_(z_e.t(), gR)
                else:
                    gwts[do] += (z_e.t() @ gR).to(acc)
            if gz is not None:
                gz[e].addmm_(gR, wts[do].t())
        if gT is None:
            continue  # e.g. the first layer: no gradient to its inputs, no recompute
        Rt = torch.mm(z_e, wts_cf[do], out=state.scratch("R", c * rows, z).view(c, rows))
        gT_do = state.scratch("gTd", c * m * (rows // co), z).view(c, m, rows // co)
        torch.bmm(g, Rt.view(c, co, rows // co), out=gT_do)
        gT[:, r0:r1] = gT_do.view(c, r1 - r0, C)
    return gT


def _stored_order(spec, weight, gwts, acc) -> Tensor:
    """The weight gradient back in the stored row order (the output degrees' blocks cover
    every row), in the weight's dtype."""
    gw = torch.empty(weight.shape, dtype=acc, device=weight.device)
    for do, g in gwts.items():
        first, rows = spec.do_rows[do]
        inv = spec.concat_inverse(do, gw.device)
        torch.index_select(g.t().contiguous(), 0, inv, out=gw[first : first + rows])
    return gw.to(weight.dtype)


def pairwise(spec: KernelSpec, state, z, weight, basis, src, xs, share=None) -> tuple[Tensor]:
    """The message of a one-pair group ``(d_in, d_out)`` in plain autograd: the whole radial
    output ``R = z @ W^T [E, C_o, C_i nf]`` is formed and kept for backward (``Fusion.PAIRWISE``,
    the reference). Runs under the caller's autocast."""
    (di, ci), (do, co) = spec.ins[0], spec.outs[0]
    E, nf, m = src.shape[0], num_freq(di, do), 2 * do + 1
    x_src = gather(xs[0], src)  # [E, C_i, 2 d_in + 1]
    B = unflatten_basis(basis, spec.basis_degree)[(di, do)]
    B = B.reshape(E, 2 * di + 1, nf * m).to(x_src.dtype)
    T = torch.bmm(x_src, B).view(E, ci * nf, m)  # [E, C_i * nf, m_o]
    R = torch.nn.functional.linear(z, weight).view(E, co, ci * nf)  # [E, C_o, C_i * nf]
    return (torch.bmm(R, T.to(R.dtype)),)  # [E, C_o, m_o]


def _pairs(spec: KernelSpec, state, z, weight, basis, src, xs, share=None):
    return _FusedTFN.apply(z, weight, basis.to(z.dtype), src, spec, state, *xs)


def _concat(spec: KernelSpec, state, z, weight, basis, src, xs, share=None):
    x_all, block = state.concat_operands(spec, basis, xs, z.dtype)
    return _ConcatTFN.apply(z, weight, x_all, src, spec, state, block)


def _one_channel_count(spec: KernelSpec, device, dt) -> str | None:
    if spec.uniform_channels:
        return None
    return (
        f"kernel: the degree-concatenated evaluations need one channel count across the "
        f"input degrees of a fused group, got {spec.ins}"
    )


register(
    Registered(
        Evaluation.TORCH_CONCAT,
        _concat,
        serves=frozenset({Kernel.AUTO, Kernel.TORCH, Kernel.CPP}),
        rank=20,
        unsupported=_one_channel_count,
    )
)
register(
    Registered(
        Evaluation.TORCH_PAIRS, _pairs, serves=frozenset({Kernel.AUTO, Kernel.TORCH}), rank=30
    )
)
register(Registered(Evaluation.PAIRWISE, pairwise, serves=frozenset(), rank=40, autocast=True))
