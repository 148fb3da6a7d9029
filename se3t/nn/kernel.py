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

Evaluations of the same sums (chosen per fusion group by :class:`KernelState`, recorded in
its ``repr``):

- ``cpp`` (:mod:`se3t.nn.kernel_cpu`, CPU, float32/float64): a C++/OpenMP kernel compiled at
  first use that computes ``R`` tile by tile in L1 and contracts it at once: ``R`` is never
  written to memory, not even per chunk (docs/kernel.md). It computes ``R`` once for an edge
  and its reverse when their radial inputs are equal (:mod:`se3t.nn.sharing`).
- ``triton`` (:mod:`se3t.nn.kernel_triton`, CUDA; opt-in): the same tiling in Triton.
- ``torch-concat`` (:class:`_ConcatTFN`): the readable torch reference of the two above, used
  when every input degree of the group has the same channel count (every group of the paper's
  model): node features of all input degrees are concatenated along ``m`` (``[N, sum (2 d_in +
  1), C]``) and the basis is laid out per output degree as a block matrix ``[E, sum (2 d_in +
  1), sum_{d_in} num_freq (2 d_out + 1)]`` (zero off the diagonal blocks,
  :func:`se3t.so3.blocks.block_basis`). Then ``T`` of ALL input degrees is one bmm and the
  message to ``d_out`` another, with the radial weights' rows permuted to ``(c_o, c_i, d_in,
  J)`` so that ``K`` runs over every input degree at once.
- ``torch-pairs`` (:class:`_FusedTFN`, any fibers): one bmm per ``(d_in, d_out)`` pair.
"""

from __future__ import annotations

import torch
from torch import Tensor

from se3t.choices import Kernel
from se3t.nn.graph_ops import gather
from se3t.nn.sharing import RadialShare, radial_share
from se3t.so3.basis import num_freq, pair_offsets
from se3t.so3.blocks import block_basis, block_shape

__all__ = ["Backend", "KernelSpec", "KernelState", "fused_tfn"]

# radial outputs held at once per chunk (elements), on CPU: 16 MB in float32, i.e. 256 edges
# of the paper model's widest output degree. Small enough that the chunk's radial weights stay
# close to the cores between the GEMM that writes them and the bmm calls that read them (at
# 1 << 25, 2048 edges, every chunk streamed 128 MB through DRAM and a conv's fwd+bwd was ~3x
# slower on the 2-core dev box); large enough that per-chunk op overhead stays small
# (1 << 21 to 1 << 24 measure within 5 %, 1 << 20 is 20 % slower).
DEFAULT_CHUNK_ELEMENTS = 1 << 22
# on a GPU every op of the chunk loop is a kernel launch, and memory is plentiful: 64 M radial
# values (128 MB in fp16, 4,096 edges of the widest output degree) keep a batch of 240 QM9
# molecules (~9,000 edges) to three chunks while the op still never holds the whole layer's
# radial output (0.3 GB in fp16 at that batch size, per output degree)
DEFAULT_CHUNK_ELEMENTS_GPU = 1 << 26


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

        # the degree-concatenated layout (every backend but torch-pairs) needs one channel
        # count across the input degrees
        self.uniform_channels = len({ci for _, ci in self.ins}) == 1
        self._perm: dict[tuple[int, bool], Tensor] = {}
        self._on_device: dict[tuple, Tensor] = {}  # index tensors per device (see _cached)
        # rows of each d_out's block in the stacked block basis (se3t.so3.blocks)
        self.block_rows: dict[int, tuple[int, int]] = {}
        r = 0
        for do in self.out_degrees:
            n = block_shape(self.in_degrees, do)[0]
            self.block_rows[do] = (r, r + n)
            r += n

    @property
    def in_degrees(self) -> tuple[int, ...]:
        return tuple(di for di, _ in self.ins)

    @property
    def out_degrees(self) -> tuple[int, ...]:
        return tuple(do for do, _ in self.outs)

    def concat_perm(self, do: int, channels_first: bool = False) -> Tensor:
        """Rows of the radial last layer of ``d_out``, relative to its first row, in the order
        the degree-concatenated op reads them in: ``(K, c_o)`` with ``K = (d_in, J, c_i)``, or
        ``(c_o, K)`` with ``channels_first``. A permutation of the stored ``(d_in, c_o, c_i,
        J)`` order, so the parameter layout is the same for every evaluation and for
        :func:`se3t.nn.conv.pairwise_reference`."""
        perm = self._perm.get((do, channels_first))
        if perm is None:
            co, ci = dict(self.outs)[do], self.ins[0][1]
            k = ci * sum(num_freq(di, do) for di in self.in_degrees)
            perm = torch.empty(co * k, dtype=torch.long)
            o, i = torch.arange(co).view(1, 1, co), torch.arange(ci).view(1, ci, 1)
            j0 = 0
            for di in self.in_degrees:
                nf = num_freq(di, do)
                j = torch.arange(nf).view(nf, 1, 1)
                base = self.w_off[(di, do)] - self.do_rows[do][0]
                kk = (j0 + j) * ci + i  # position in K
                pos = o * k + kk if channels_first else kk * co + o
                perm[pos.flatten()] = (base + (o * ci + i) * nf + j).flatten()
                j0 += nf
            self._perm[(do, channels_first)] = perm
        return perm

    def _cached(self, key: tuple, device: torch.device, make) -> Tensor:
        """``make()`` (a CPU index tensor) on ``device``, built once per device: a host-to-GPU
        copy per call would synchronize every step."""
        key = (*key, str(device))
        t = self._on_device.get(key)
        if t is None:
            t = self._on_device[key] = make().to(device)
        return t

    def concat_inverse(self, do: int, device: torch.device, channels_first: bool = False) -> Tensor:
        """The inverse of :meth:`concat_perm`, per device: stored row ``r`` of ``d_out``'s
        block is row ``inverse[r]`` of the concatenated order."""
        return self._cached(
            ("inverse", do, channels_first),
            device,
            lambda: torch.argsort(self.concat_perm(do, channels_first)),
        )

    def concat_rows(self, do: int, channels_first: bool, device: torch.device) -> Tensor:
        """:meth:`concat_perm` as absolute row indices, per device."""
        return self._cached(
            ("rows", do, channels_first),
            device,
            lambda: self.do_rows[do][0] + self.concat_perm(do, channels_first),
        )

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
                R = torch.mm(
                    z_e, W.t(), out=state.scratch("R", c * rows, z).view(c, rows)
                )  # recomputed
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
        if gw is not None:
            gw = gw.to(weight.dtype)
        return (gz, gw, gb, None, None, None, *(gx_of[di] for di, _ in spec.ins))


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
        wts = _permuted_weights(spec, weight)  # {d_out: [H, rows]}, rows (d_in, J, c_i, c_o)
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
        C, nb = x_all.shape[2], block.shape[1]
        wts = ctx.wts
        wts_cf = None
        if need_x or need_b:
            wts_cf = _permuted_weights(spec, weight, channels_first=True)
        acc = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
        # [E, m, C_o], contiguous (free when the incoming gradient is a transposed view)
        grads_t = [None if g is None else g.transpose(1, 2).contiguous() for g in grads]
        gz = torch.zeros_like(z) if need_z else None
        gx = torch.zeros_like(x_all) if need_x else None
        gwts = {do: torch.zeros(w.shape, dtype=acc, device=w.device) for do, w in wts.items()}
        gb = torch.zeros_like(block) if need_b else None
        for s in range(0, z.shape[0], chunk):
            e = slice(s, s + chunk)
            z_e = z[e]
            c = z_e.shape[0]
            x_e = gather(x_all, src[e])
            T = torch.bmm(block[e], x_e, out=state.scratch("T", c * nb * C, z).view(c, nb, C))
            gT = None
            if need_x or need_b:
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
                if need_w or need_z:
                    gR = state.scratch("gR", c * rows, z).view(c, rows // co, co)
                    torch.bmm(T_do.transpose(1, 2), g, out=gR)
                    gR = gR.view(c, rows)
                    if need_w:
                        if acc == z.dtype:
                            gwts[do].addmm_(z_e.t(), gR)
                        else:
                            gwts[do] += (z_e.t() @ gR).to(acc)
                    if need_z:
                        gz[e].addmm_(gR, wts[do].t())
                if gT is None:
                    continue  # e.g. the first layer: no gradient to its inputs, no recompute
                Rt = torch.mm(z_e, wts_cf[do], out=state.scratch("R", c * rows, z).view(c, rows))
                gT_do = state.scratch("gTd", c * m * (rows // co), z).view(c, m, rows // co)
                torch.bmm(g, Rt.view(c, co, rows // co), out=gT_do)
                gT[:, r0:r1] = gT_do.view(c, r1 - r0, C)
            if gT is None:
                continue
            if need_x:
                gx_e = torch.bmm(block[e].transpose(1, 2), gT)  # [c, sum (2 d_in + 1), C]
                gx.view(gx.shape[0], -1).index_add_(0, src[e], gx_e.view(c, -1))
            if need_b:
                torch.bmm(gT, x_e.transpose(1, 2), out=gb[e])
        gw = None
        if need_w:
            # back to the stored row order; the output degrees' blocks cover every row
            gw = torch.empty(weight.shape, dtype=acc, device=weight.device)
            for do, g in gwts.items():
                first, rows = spec.do_rows[do]
                inv = spec.concat_inverse(do, gw.device)
                torch.index_select(g.t().contiguous(), 0, inv, out=gw[first : first + rows])
            gw = gw.to(weight.dtype)
        return (gz, gw, gx, None, None, None, gb)


def _permuted_weights(
    spec: KernelSpec, weight: Tensor, channels_first: bool = False
) -> dict[int, Tensor]:
    """``{d_out: [H, rows]}``: the radial last layer's rows of ``d_out`` in the concatenated
    order, transposed and contiguous (``z @ W^T`` runs ~20 % faster with ``W^T`` stored than
    with a transposed view on this CPU's MKL)."""
    out = {}
    for do, _ in spec.outs:
        rows = weight.index_select(0, spec.concat_rows(do, channels_first, weight.device))
        out[do] = rows.t().contiguous()
    return out


# the backends are the config's choice (se3t.choices.Kernel); named Backend here
Backend = Kernel


class KernelState:
    """The fused kernel's state for ONE forward pass, passed down explicitly to every layer.

    Holds the flat ``basis`` of the pass, the block bases built from it (one per set of input
    and output degrees and dtype, shared by every layer that needs it), the requested
    :class:`Backend` and the tuning it runs with (``tuner``: a
    :class:`se3t.nn.tuning.KernelTuner`, or None for the defaults), the scratch buffers of the
    torch evaluations (reused across chunks and layers: a fresh multi-MB tensor is a fresh
    ``mmap`` whose page faults made the radial GEMMs ~3x slower), and a count of the evaluations
    that ran (``ran``), which its ``repr`` shows.

    Backward passes run with the state of their forward pass (kept by the autograd node), so
    they reuse its buffers and tuning. A state is not meant to outlive its step.
    """

    def __init__(
        self,
        basis: Tensor,
        backend: Backend | str = Backend.AUTO,
        tuner=None,
        chunk_elements: int | None = None,
    ):
        try:
            self.backend = Backend(backend)
        except ValueError:
            raise ValueError(
                f"kernel: backend must be one of {[b.value for b in Backend]}, got {backend!r}"
            ) from None
        self.basis, self.tuner, self.chunk_elements = basis, tuner, chunk_elements
        self.blocks: dict[tuple, Tensor] = {}
        self.share: RadialShare | None = None  # of the pass's edge inputs (radial_share)
        self._share_of: tuple[Tensor, Tensor] | None = None  # (edge inputs, src) it was built on
        self.ran: dict[str, int] = {}
        self.tiles: dict[str, dict] = {}  # evaluation -> the tile sizes it ran with
        self._scratch: dict[tuple, Tensor] = {}

    def __repr__(self) -> str:
        ran = ", ".join(f"{k}: {v}" for k, v in sorted(self.ran.items())) or "nothing yet"
        blocks = ", ".join(
            " ".join([f"{ins}->{outs} {str(dt).removeprefix('torch.')}", *order])
            for ins, outs, dt, *order in self.blocks
        )
        tiles = "; ".join(f"{k} {v}" for k, v in sorted(self.tiles.items()))
        share = f", {self.share}" if self.share is not None else ""
        return (
            f"KernelState(backend={self.backend.value}, ran {{{ran}}}, "
            f"block bases [{blocks}]" + (f", tiles {tiles}" if tiles else "") + share + ")"
        )

    def block_basis(
        self, spec: KernelSpec, dt: torch.dtype, share: RadialShare | None = None
    ) -> Tensor:
        """The stacked block basis of ``spec``'s degrees (:func:`se3t.so3.blocks.block_basis`),
        built once per pass and shared by the layers; with ``share``, its edges in run order
        (:attr:`RadialShare.order`). A basis that needs a gradient gets a fresh block per call:
        each is then its own node of the autograd graph (as under activation checkpointing,
        where a shared one would tie the recomputed layers together)."""
        basis = self.basis

        def build():
            return _block_in_order(basis, spec, dt, share)

        if basis.requires_grad and torch.is_grad_enabled():
            return build()
        key = (spec.in_degrees, spec.out_degrees, dt) + (("run order",) if _permutes(share) else ())
        if key not in self.blocks:
            self.blocks[key] = build()
        return self.blocks[key]

    def radial_share(self, spec: KernelSpec, edge_inputs: Tensor, graph) -> RadialShare | None:
        """The pass's :class:`se3t.nn.sharing.RadialShare` of ``edge_inputs [E, F]`` (the
        radial profiles' inputs) when ``spec`` runs in an evaluation that shares radial rows
        (``cpp``), else None. Built once per pass: every layer gets the same inputs."""
        dt = _compute_dtype(edge_inputs)
        if self._evaluation(spec, edge_inputs.device, dt) != "cpp":
            return None
        made = self._share_of
        if made is None or made[0] is not edge_inputs or made[1] is not graph.src:
            self.share = radial_share(edge_inputs, graph.src, graph.dst, graph.num_nodes)
            self._share_of = (edge_inputs, graph.src)
        return self.share

    def scratch(self, slot: str, numel: int, like: Tensor) -> Tensor:
        """A flat buffer of ``numel`` elements for the torch evaluations' temporaries (never
        returned or saved), grown on demand; callers must not hold a view of a slot across
        another call for the same slot."""
        key = (slot, like.dtype, like.device)
        buf = self._scratch.get(key)
        if buf is None or buf.numel() < numel:
            self._scratch.pop(key, None)  # free the old buffer before allocating the larger one
            buf = self._scratch[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
        return buf[:numel]

    def evaluation(self, spec: KernelSpec, z: Tensor) -> str:
        """The evaluation that runs ``spec`` on ``z``'s device and dtype (see the module
        docstring); a requested backend that cannot run here raises a ValueError that says
        why, except a missing compiler, which falls back to torch with a one-line notice."""
        return self._evaluation(spec, z.device, z.dtype)

    def _evaluation(self, spec: KernelSpec, device: torch.device, dt: torch.dtype) -> str:
        if not spec.uniform_channels:
            if self.backend in (Backend.CPP, Backend.TRITON):
                raise ValueError(
                    f"kernel: backend {self.backend.value} needs one channel count across the "
                    f"input degrees of a fused group, got {spec.ins}; use model.kernel=torch"
                )
            return "torch-pairs"
        if self.backend is Backend.TRITON:
            from se3t.nn import kernel_triton  # deferred: triton is an optional dependency

            kernel_triton.check_available(torch.empty(0, device=device, dtype=dt))
            return "triton"
        device = device.type
        if self.backend is Backend.TORCH:
            return "torch-concat"
        cpp_ok = device == "cpu" and dt in (torch.float32, torch.float64)
        if self.backend is Backend.CPP and not cpp_ok:
            raise ValueError(
                f"kernel: backend cpp runs on the CPU in float32/float64, got {device} {dt} "
                "(use model.kernel=auto)"
            )
        if cpp_ok:
            from se3t.nn import kernel_cpu  # deferred: importing it builds nothing

            if kernel_cpu.extension() is not None:
                return "cpp"
        return "torch-concat"

    def chunk_edges(self, spec: KernelSpec, z: Tensor) -> int:
        """Edges per chunk of the torch evaluations: from ``chunk_elements`` (radial outputs
        held at once) when given, else the device's default."""
        elements = self.chunk_elements
        if not elements:
            cpu = z.device.type == "cpu"
            elements = DEFAULT_CHUNK_ELEMENTS if cpu else DEFAULT_CHUNK_ELEMENTS_GPU
        return spec.chunk_size(elements)

    def tile(self, evaluation: str, spec: KernelSpec, z: Tensor) -> dict:
        """Tile sizes of ``evaluation`` for this shape: the tuner's (timed trial at first use,
        cached per machine) or the backend's defaults."""
        if self.tuner is not None:
            t = self.tuner.tiles(evaluation, spec, z)
        else:
            from se3t.nn import tuning  # deferred: only the compiled backends have tiles

            t = tuning.default_tiles(evaluation)
        self.tiles[evaluation] = t
        return t


def _compute_dtype(t: Tensor) -> torch.dtype:
    """The dtype the fused op computes in for inputs like ``t``: autocast's when enabled."""
    if torch.is_autocast_enabled(t.device.type):
        return torch.get_autocast_dtype(t.device.type)
    return t.dtype


def _permutes(share: RadialShare | None) -> bool:
    return share is not None and share.num_runs != share.num_edges  # runs of one: identity


def _block_in_order(
    basis: Tensor, spec: KernelSpec, dt: torch.dtype, share: RadialShare | None
) -> Tensor:
    if _permutes(share):
        basis = basis.index_select(0, share.order)
    return block_basis(basis.to(dt), spec.in_degrees, spec.out_degrees, spec.basis_degree)


def fused_tfn(
    spec: KernelSpec,
    z: Tensor,
    weight: Tensor,
    basis: Tensor,
    src: Tensor,
    xs: list[Tensor],
    state: KernelState,
    share: RadialShare | None = None,
) -> dict[int, Tensor]:
    """Messages ``{d_out: [E, C_o, 2 d_out + 1]}`` of one fusion group (see the module docstring).

    ``z [E, H]`` radial hidden features, ``weight [num_radial, H]`` the radial last layer,
    ``basis [E, basis_size(spec.basis_degree)]`` flat (the state's basis, or a per-layer one
    such as the first layer's), ``src [E]`` long, ``xs`` node features ``[N, C_i, 2 d_in + 1]``
    in ``spec.ins`` order, ``state`` the pass's :class:`KernelState`. All floating inputs share
    one dtype (under autocast they are cast to the autocast dtype first). With ``share``
    (:meth:`KernelState.radial_share`), ``z`` has one row per run of edges that share their
    radial weights, ``[U, H]`` (:mod:`se3t.nn.sharing`).
    """
    device_type = z.device.type
    dt = _compute_dtype(z)
    z, weight = z.to(dt), weight.to(dt)
    xs = [x.to(dt) for x in xs]
    how = state.evaluation(spec, z)
    state.ran[how] = state.ran.get(how, 0) + 1
    if share is not None and how != "cpp":
        z = share.expand(z)  # the other evaluations take one row per edge
    with torch.autocast(device_type, enabled=False):
        if how == "torch-pairs":
            out = _FusedTFN.apply(z, weight, basis.to(dt), src, spec, state, *xs)
        else:
            if how != "cpp":
                share = None
            elif share is None:
                share = RadialShare.single(z.shape[0], z.device)
            x_all = torch.cat([x.transpose(1, 2) for x in xs], dim=1)  # [N, sum (2d+1), C]
            if basis is state.basis:
                block = state.block_basis(spec, dt, share)
            else:
                block = _block_in_order(basis, spec, dt, share)
            if how == "cpp":
                from se3t.nn.kernel_cpu import ConcatTFNCpu  # deferred: see evaluation()

                if _permutes(share):
                    src = src.index_select(0, share.order)  # the block's edge order
                out = ConcatTFNCpu.apply(z, weight, x_all, src, spec, state, block, share)
            elif how == "triton":
                from se3t.nn.kernel_triton import ConcatTFNTriton  # deferred: optional

                out = ConcatTFNTriton.apply(z, weight, x_all, src, spec, state, block)
            else:
                out = _ConcatTFN.apply(z, weight, x_all, src, spec, state, block)
    return {do: o for (do, _), o in zip(spec.outs, out, strict=True)}
