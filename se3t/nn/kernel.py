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

__all__ = ["KernelSpec", "fused_tfn"]

# radial outputs held at once per chunk (elements); ~16 MB in float32
DEFAULT_CHUNK_ELEMENTS = 1 << 22


class KernelSpec:
    """Static layout of one fusion group: input and output degrees/channels and offsets.

    ``ins``/``outs``: lists of ``(degree, channels)``; ``basis_degree``: the max degree of the
    flat basis the op reads. Radial last-layer rows are laid out per output degree as
    ``[C_o, K]`` with ``K`` ordered ``(d_in, c_i, J)``; messages as ``[C_o, 2 d_out + 1]`` blocks
    concatenated over output degrees.
    """

    def __init__(self, ins: list[tuple[int, int]], outs: list[tuple[int, int]], basis_degree: int):
        self.ins, self.outs, self.basis_degree = list(ins), list(outs), basis_degree
        po = pair_offsets(basis_degree)
        self.w_off, self.K, self.m_off, self.k_off = {}, {}, {}, {}
        o = m = 0
        for do, co in self.outs:
            k = 0
            for di, ci in self.ins:
                self.k_off[(di, do)] = k
                k += ci * num_freq(di, do)
            self.K[do], self.w_off[do], self.m_off[do] = k, o, m
            o += co * k
            m += co * (2 * do + 1)
        self.num_radial, self.num_msg = o, m
        # pieces: basis column ranges contracted with one input degree in one bmm. When the
        # group feeds every output degree of the basis, one piece per input degree covers all
        # its columns; otherwise one piece per pair.
        out_degrees = {do for do, _ in self.outs}
        all_out = out_degrees == set(range(basis_degree + 1))
        self.pieces = []  # (d_in, block_start, block_cols, lo, hi)
        self.pair_piece = {}  # (d_in, d_out) -> (piece index, column offset in piece)
        for di, _ in self.ins:
            start, cols, _ = po[(di, 0)]
            if all_out:
                self.pieces.append((di, start, cols, 0, cols))
                for do, _ in self.outs:
                    self.pair_piece[(di, do)] = (len(self.pieces) - 1, po[(di, do)][2])
            else:
                for do, _ in self.outs:
                    col = po[(di, do)][2]
                    width = num_freq(di, do) * (2 * do + 1)
                    self.pieces.append((di, start, cols, col, col + width))
                    self.pair_piece[(di, do)] = (len(self.pieces) - 1, 0)

    def basis_piece(self, basis: Tensor, p: int) -> Tensor:
        """[E, 2 d_in + 1, hi - lo] view of piece ``p`` of a flat basis."""
        di, start, cols, lo, hi = self.pieces[p]
        block = basis[:, start : start + (2 * di + 1) * cols].view(-1, 2 * di + 1, cols)
        return block[:, :, lo:hi]

    def chunk_size(self, elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
        return max(1, elements // max(self.num_radial, 1))


def _t_pieces(spec: KernelSpec, xs_e: dict[int, Tensor], basis: Tensor) -> list[Tensor]:
    # [c, C_i, hi - lo] per piece: node features contracted with the basis over m_in
    return [torch.bmm(xs_e[p[0]], spec.basis_piece(basis, i)) for i, p in enumerate(spec.pieces)]


def _t_out(spec: KernelSpec, T: list[Tensor], do: int) -> Tensor:
    # [c, K, 2 d_out + 1], K ordered (d_in, c_i, J)
    m = 2 * do + 1
    parts = []
    for di, ci in spec.ins:
        p, off = spec.pair_piece[(di, do)]
        width = num_freq(di, do) * m
        parts.append(T[p][:, :, off : off + width].reshape(T[p].shape[0], ci * num_freq(di, do), m))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


class _FusedTFN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, weight, basis, src, spec, chunk, *xs):
        E = z.shape[0]
        out = z.new_empty(E, spec.num_msg)
        for s in range(0, E, chunk):
            e = slice(s, s + chunk)
            src_e = src[e]
            xs_e = {di: gather(x, src_e) for (di, _), x in zip(spec.ins, xs)}
            T = _t_pieces(spec, xs_e, basis[e])
            R = z[e] @ weight.t()  # [c, num_radial]
            c = R.shape[0]
            for do, co in spec.outs:
                Rd = R[:, spec.w_off[do] : spec.w_off[do] + co * spec.K[do]].view(c, co, spec.K[do])
                msg = torch.bmm(Rd, _t_out(spec, T, do))  # [c, C_o, 2 d_out + 1]
                out[e, spec.m_off[do] : spec.m_off[do] + msg[0].numel()] = msg.view(c, -1)
        ctx.spec, ctx.chunk = spec, chunk
        ctx.save_for_backward(z, weight, basis, src, *xs)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        z, weight, basis, src, *xs = ctx.saved_tensors
        spec, chunk = ctx.spec, ctx.chunk
        need_z, need_w, need_b = ctx.needs_input_grad[:3]
        need_x = ctx.needs_input_grad[6:]
        grad_out = grad_out.contiguous()
        acc = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
        gz = torch.empty_like(z) if need_z else None
        gw = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        gb = torch.zeros_like(basis) if need_b else None
        gxs = [torch.zeros_like(x) if n else None for x, n in zip(xs, need_x)]
        for s in range(0, z.shape[0], chunk):
            e = slice(s, s + chunk)
            src_e = src[e]
            xs_e = {di: gather(x, src_e) for (di, _), x in zip(spec.ins, xs)}
            T = _t_pieces(spec, xs_e, basis[e])
            R = z[e] @ weight.t()  # recomputed, [c, num_radial]
            c = R.shape[0]
            gR = torch.empty_like(R)
            gT = [torch.zeros_like(t) for t in T]
            for do, co in spec.outs:
                K, m = spec.K[do], 2 * do + 1
                w = slice(spec.w_off[do], spec.w_off[do] + co * K)
                g = grad_out[e, spec.m_off[do] : spec.m_off[do] + co * m].view(c, co, m)
                Rd = R[:, w].view(c, co, K)
                gR[:, w] = torch.bmm(g, _t_out(spec, T, do).transpose(1, 2)).view(c, -1)
                gTd = torch.bmm(Rd.transpose(1, 2), g)  # [c, K, m]
                for di, ci in spec.ins:
                    p, off = spec.pair_piece[(di, do)]
                    k0, width = spec.k_off[(di, do)], ci * num_freq(di, do)
                    gT[p][:, :, off : off + num_freq(di, do) * m] += gTd[:, k0 : k0 + width].reshape(
                        c, ci, -1
                    )
            if need_w:
                gw += (gR.t() @ z[e]).to(acc)
            if need_z:
                gz[e] = gR @ weight
            for i, (di, *_rest) in enumerate(spec.pieces):
                Bp = spec.basis_piece(basis[e], i)
                j = next(k for k, (d, _) in enumerate(spec.ins) if d == di)
                if gxs[j] is not None:
                    g = torch.bmm(gT[i], Bp.transpose(1, 2))  # [c, C_i, 2 d_in + 1]
                    gxs[j].view(gxs[j].shape[0], -1).index_add_(0, src_e, g.view(g.shape[0], -1))
                if need_b:
                    spec.basis_piece(gb[e], i).add_(torch.bmm(xs_e[di].transpose(1, 2), gT[i]))
        if gw is not None:
            gw = gw.to(weight.dtype)
        return (gz, gw, gb, None, None, None, *gxs)


def fused_tfn(
    spec: KernelSpec,
    z: Tensor,
    weight: Tensor,
    basis: Tensor,
    src: Tensor,
    xs: list[Tensor],
    chunk: int | None = None,
) -> Tensor:
    """Messages ``[E, spec.num_msg]`` of one fusion group (see the module docstring).

    ``z [E, H]`` radial hidden features, ``weight [num_radial, H]`` the radial last layer,
    ``basis [E, basis_size(spec.basis_degree)]`` flat, ``src [E]`` long, ``xs`` node features
    ``[N, C_i, 2 d_in + 1]`` in ``spec.ins`` order. All floating inputs share one dtype (under
    autocast they are cast to the autocast dtype first).
    """
    device_type = z.device.type
    if torch.is_autocast_enabled(device_type):
        dt = torch.get_autocast_dtype(device_type)
        z, weight, basis = z.to(dt), weight.to(dt), basis.to(dt)
        xs = [x.to(dt) for x in xs]
    else:
        dt = z.dtype
        weight, basis, xs = weight.to(dt), basis.to(dt), [x.to(dt) for x in xs]
    with torch.autocast(device_type, enabled=False):
        return _FusedTFN.apply(z, weight, basis, src, spec, chunk or spec.chunk_size(), *xs)
