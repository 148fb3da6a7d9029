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
"""

from __future__ import annotations

import torch
from torch import Tensor

from se3t.nn.graph_ops import gather
from se3t.so3.basis import num_freq, pair_offsets

__all__ = ["KernelSpec", "fused_tfn", "release_workspace"]

# radial outputs held at once per chunk (elements): 8 MB in float32, i.e. 128 edges of the
# paper model's widest output degree. Small enough that the chunk's radial weights stay in the
# CPU's L2/L3 cache between the GEMM that writes them and the bmm calls that read them (at
# 1 << 25, 2048 edges, every chunk streamed 128 MB through DRAM and a conv's fwd+bwd was ~3x
# slower on the 2-core dev box); large enough that per-chunk op overhead stays small.
DEFAULT_CHUNK_ELEMENTS = 1 << 21


class KernelSpec:
    """Static layout of one fusion group: input and output degrees/channels and offsets.

    ``ins``/``outs``: lists of ``(degree, channels)``; ``basis_degree``: the max degree of the
    flat basis the op reads. The radial last layer's rows are laid out per output degree, then
    per input degree, as a ``[C_o, C_i * num_freq]`` block (``J`` fastest) for each pair:
    ``w_off[(d_in, d_out)]`` is the block's first row. One group's messages to ``d_out`` are
    returned as ``[E, C_o, 2 d_out + 1]``.
    """

    def __init__(self, ins: list[tuple[int, int]], outs: list[tuple[int, int]], basis_degree: int):
        self.ins, self.outs, self.basis_degree = list(ins), list(outs), basis_degree
        po = pair_offsets(basis_degree)
        self.w_off: dict[tuple[int, int], int] = {}
        self.do_rows: dict[int, tuple[int, int]] = {}  # d_out -> (first row, rows)
        self.basis_cols: dict[tuple[int, int], tuple[int, int, int]] = {}
        o = 0
        for do, co in self.outs:
            first = o
            for di, ci in self.ins:
                self.w_off[(di, do)] = o
                o += co * ci * num_freq(di, do)
                self.basis_cols[(di, do)] = po[(di, do)]
            self.do_rows[do] = (first, o - first)
        self.num_radial = o

    def pairs(self):
        for do, co in self.outs:
            for di, ci in self.ins:
                yield di, ci, do, co

    def basis_pair(self, basis: Tensor, di: int, do: int) -> Tensor:
        """[E, 2 d_in + 1, num_freq * (2 d_out + 1)] view of a flat basis."""
        start, cols, col = self.basis_cols[(di, do)]
        block = basis[:, start : start + (2 * di + 1) * cols].view(-1, 2 * di + 1, cols)
        return block[:, :, col : col + num_freq(di, do) * (2 * do + 1)]

    def chunk_size(self, elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
        widest = max(rows for _, rows in self.do_rows.values())
        return max(1, elements // max(widest, 1))


def _pair_radial(R: Tensor, spec: KernelSpec, di: int, ci: int, do: int, co: int) -> Tensor:
    # [c, C_o, C_i * nf] view of one pair's radial weights inside R_do [c, rows of d_out]
    off = spec.w_off[(di, do)] - spec.do_rows[do][0]
    return R[:, off : off + co * ci * num_freq(di, do)].view(R.shape[0], co, ci * num_freq(di, do))


_WORKSPACE: dict[tuple, Tensor] = {}


def _scratch(slot: str, numel: int, like: Tensor) -> Tensor:
    """A flat scratch buffer of ``numel`` elements, reused across chunks, layers and steps.

    On CPU a fresh multi-MB tensor is a fresh ``mmap``: its pages fault in on first write,
    which made the big radial GEMMs ~3x slower than writing into memory already mapped.
    The op's temporaries (radial weights, ``T``, their gradients) are never returned or saved,
    so one buffer per slot, grown on demand, serves every call; callers must not hold a
    view of a slot across another ``_scratch`` call of the same slot.
    """
    key = (slot, like.dtype, like.device)
    buf = _WORKSPACE.get(key)
    if buf is None or buf.numel() < numel:
        _WORKSPACE.pop(key, None)  # free the old buffer before allocating the larger one
        buf = _WORKSPACE[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
    return buf[:numel]


def release_workspace() -> None:
    """Free the fused op's scratch buffers (they are otherwise kept for the next call)."""
    _WORKSPACE.clear()


class _FusedTFN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, weight, basis, src, spec, chunk, *xs):
        E = z.shape[0]
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
                    out=_scratch("R", c * rows, z).view(c, rows),
                )
                acc = outs[do][e]
                for k, (di, ci) in enumerate(spec.ins):
                    nf = num_freq(di, do)
                    # [c, C_i, 2 d_in+1] @ [c, 2 d_in+1, nf (2 d_out+1)] -> [c, C_i nf, 2 d_out+1]
                    T = _scratch("T", c * ci * nf * (2 * do + 1), z).view(c, ci, nf * (2 * do + 1))
                    torch.bmm(xs_e[di], spec.basis_pair(b_e, di, do), out=T)
                    T = T.view(c, ci * nf, 2 * do + 1)
                    Rp = _pair_radial(R, spec, di, ci, do, co)  # [c, C_o, C_i nf]
                    if k == 0:
                        torch.bmm(Rp, T, out=acc)
                    else:
                        acc.baddbmm_(Rp, T)
        ctx.spec, ctx.chunk = spec, chunk
        ctx.save_for_backward(z, weight, basis, src, *xs)
        return tuple(outs[do] for do, _ in spec.outs)

    @staticmethod
    def backward(ctx, *grads):
        z, weight, basis, src, *xs = ctx.saved_tensors
        spec, chunk = ctx.spec, ctx.chunk
        need_z, need_w, need_b = ctx.needs_input_grad[:3]
        need_x = ctx.needs_input_grad[6:]
        grad_of = {
            do: (g.contiguous() if g is not None else None)
            for (do, _), g in zip(spec.outs, grads, strict=True)
        }
        x_of = {di: x for (di, _), x in zip(spec.ins, xs, strict=True)}
        acc = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
        same = acc == weight.dtype  # accumulate the weight gradient in place (addmm_)
        gz = torch.zeros_like(z) if need_z else None
        gw = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        gb = torch.zeros_like(basis) if need_b else None
        gx_of = {
            di: torch.zeros_like(x) if n else None
            for (di, _), x, n in zip(spec.ins, xs, need_x, strict=True)
        }
        for s in range(0, z.shape[0], chunk):
            e = slice(s, s + chunk)
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
                R = torch.mm(z_e, W.t(), out=_scratch("R", c * rows, z).view(c, rows))  # recomputed
                # gradient of the radial weights of d_out, [c, rows]: pair blocks filled by bmm,
                # then ONE GEMM each for the weight and z gradients (not one per pair)
                gR = _scratch("gR", c * rows, z).view(c, rows) if need_w or need_z else None
                for di, ci in spec.ins:
                    nf, m = num_freq(di, do), 2 * do + 1
                    Bp = spec.basis_pair(b_e, di, do)  # [c, 2 d_in+1, nf m]
                    if gR is not None:
                        T = _scratch("T", c * ci * nf * m, z).view(c, ci, nf * m)
                        torch.bmm(xs_e[di], Bp, out=T)
                        T = T.view(c, ci * nf, m)
                        torch.bmm(g, T.transpose(1, 2), out=_pair_radial(gR, spec, di, ci, do, co))
                    if gx_of[di] is None and not need_b:
                        continue
                    gT = _scratch("gT", c * ci * nf * m, z).view(c, ci * nf, m)
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
        if gw is not None:
            gw = gw.to(weight.dtype)
        return (gz, gw, gb, None, None, None, *(gx_of[di] for di, _ in spec.ins))


def fused_tfn(
    spec: KernelSpec,
    z: Tensor,
    weight: Tensor,
    basis: Tensor,
    src: Tensor,
    xs: list[Tensor],
    chunk: int | None = None,
) -> dict[int, Tensor]:
    """Messages ``{d_out: [E, C_o, 2 d_out + 1]}`` of one fusion group (see the module docstring).

    ``z [E, H]`` radial hidden features, ``weight [num_radial, H]`` the radial last layer,
    ``basis [E, basis_size(spec.basis_degree)]`` flat, ``src [E]`` long, ``xs`` node features
    ``[N, C_i, 2 d_in + 1]`` in ``spec.ins`` order. All floating inputs share one dtype (under
    autocast they are cast to the autocast dtype first).
    """
    device_type = z.device.type
    if torch.is_autocast_enabled(device_type):
        dt = torch.get_autocast_dtype(device_type)
    else:
        dt = z.dtype
    z, weight, basis = z.to(dt), weight.to(dt), basis.to(dt)
    xs = [x.to(dt) for x in xs]
    with torch.autocast(device_type, enabled=False):
        out = _FusedTFN.apply(z, weight, basis, src, spec, chunk or spec.chunk_size(), *xs)
    return {do: o for (do, _), o in zip(spec.outs, out, strict=True)}
