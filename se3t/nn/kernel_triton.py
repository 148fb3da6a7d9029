"""The ``triton`` evaluation of the fused TFN contraction: the CPU kernel's tiling in Triton.

One program owns a block of ``BE`` edges (forward) or of ``BK`` concatenated input indices
``k`` (backward) and loops over the other dimension; per step it computes the radial weights'
tile ``R[BE, BK, C] = z[BE, H] @ W[H, BK C]`` with ``tl.dot`` into registers and contracts it
with ``T`` at once, so ``R`` never reaches global memory (HBM). Backward recomputes the tile,
forms ``dR = g x T`` and ``dT = g x R`` on chip, accumulates ``dW`` (owned by the program: no
atomics) and adds ``dz`` with atomics. ``T = Bb x`` and the node-feature and basis gradients are
the same batched torch matmuls as in the other evaluations. Inputs of any float dtype are
loaded as they are and accumulated in float32 (TF32 dots for float32 on GPUs that have it).

Opt-in (``model.kernel=triton``) until measured faster than the torch evaluation on a GPU.
The tests run it on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``, set by the
tests before this module is imported: Triton reads it when the kernels are decorated).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from se3t.nn.graph_ops import gather
from se3t.nn.kernel import KernelSpec, KernelState, _permuted_weights

__all__ = ["ConcatTFNTriton", "check_available", "trial_problem"]


def check_available(z: torch.Tensor) -> None:
    """Raise a ValueError saying why the Triton kernel cannot run on ``z``'s device."""
    if z.device.type == "cuda":
        return
    if z.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return  # Triton's interpreter (the tests)
    raise ValueError(
        f"kernel: backend triton needs a CUDA device, got {z.device} (use model.kernel=auto)"
    )


def _p2(n: int) -> int:
    return max(16, triton.next_power_of_2(max(1, n)))


@triton.jit
def _forward_kernel(
    z_ptr,
    w_ptr,
    t_ptr,
    out_ptr,
    E,
    H,
    K,
    C,
    M,
    t_stride,
    HP: tl.constexpr,
    BE: tl.constexpr,
    BK: tl.constexpr,
    CP: tl.constexpr,
    MP: tl.constexpr,
):
    e = tl.program_id(0) * BE + tl.arange(0, BE)
    h = tl.arange(0, HP)
    c = tl.arange(0, CP)
    m = tl.arange(0, MP)
    kk = tl.arange(0, BK)
    e_ok = e < E
    zt = tl.load(
        z_ptr + e[:, None] * H + h[None, :], mask=e_ok[:, None] & (h < H)[None, :], other=0.0
    ).to(tl.float32)  # [BE, HP]
    acc = tl.zeros((BE, MP, CP), dtype=tl.float32)
    for k0 in range(0, K, BK):
        k = k0 + kk
        w = tl.load(
            w_ptr + h[:, None, None] * (K * C) + k[None, :, None] * C + c[None, None, :],
            mask=(h < H)[:, None, None] & (k < K)[None, :, None] & (c < C)[None, None, :],
            other=0.0,
        ).to(tl.float32)  # [HP, BK, CP]
        r = tl.reshape(tl.dot(zt, tl.reshape(w, (HP, BK * CP))), (BE, BK, CP))  # on chip
        t = tl.load(
            t_ptr + e[:, None, None] * t_stride + m[None, :, None] * K + k[None, None, :],
            mask=e_ok[:, None, None] & (m < M)[None, :, None] & (k < K)[None, None, :],
            other=0.0,
        ).to(tl.float32)  # [BE, MP, BK]
        acc += tl.sum(t[:, :, :, None] * r[:, None, :, :], axis=2)
    tl.store(
        out_ptr + e[:, None, None] * (M * C) + m[None, :, None] * C + c[None, None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=e_ok[:, None, None] & (m < M)[None, :, None] & (c < C)[None, None, :],
    )


@triton.jit
def _backward_kernel(
    z_ptr,
    w_ptr,
    t_ptr,
    g_ptr,
    dt_ptr,
    dw_ptr,
    dz_ptr,
    E,
    H,
    K,
    C,
    M,
    t_stride,
    dt_stride,
    HP: tl.constexpr,
    BE: tl.constexpr,
    BK: tl.constexpr,
    CP: tl.constexpr,
    MP: tl.constexpr,
    NEED_T: tl.constexpr,
    NEED_W: tl.constexpr,
    NEED_Z: tl.constexpr,
):
    k = tl.program_id(0) * BK + tl.arange(0, BK)
    h = tl.arange(0, HP)
    c = tl.arange(0, CP)
    m = tl.arange(0, MP)
    wmask = (h < H)[:, None, None] & (k < K)[None, :, None] & (c < C)[None, None, :]
    w = tl.load(
        w_ptr + h[:, None, None] * (K * C) + k[None, :, None] * C + c[None, None, :],
        mask=wmask,
        other=0.0,
    ).to(tl.float32)  # [HP, BK, CP]: this program's columns of W, kept for every edge block
    w2 = tl.reshape(w, (HP, BK * CP))
    dw = tl.zeros((HP, BK * CP), dtype=tl.float32)
    for e0 in range(0, E, BE):
        e = e0 + tl.arange(0, BE)
        e_ok = e < E
        zt = tl.load(
            z_ptr + e[:, None] * H + h[None, :], mask=e_ok[:, None] & (h < H)[None, :], other=0.0
        ).to(tl.float32)  # [BE, HP]
        g = tl.load(
            g_ptr + e[:, None, None] * (M * C) + m[None, :, None] * C + c[None, None, :],
            mask=e_ok[:, None, None] & (m < M)[None, :, None] & (c < C)[None, None, :],
            other=0.0,
        ).to(tl.float32)  # [BE, MP, CP]
        tmask = e_ok[:, None, None] & (m < M)[None, :, None] & (k < K)[None, None, :]
        t = tl.load(
            t_ptr + e[:, None, None] * t_stride + m[None, :, None] * K + k[None, None, :],
            mask=tmask,
            other=0.0,
        ).to(tl.float32)  # [BE, MP, BK]
        dr = tl.sum(g[:, :, None, :] * t[:, :, :, None], axis=1)  # [BE, BK, CP]
        if NEED_T:
            r = tl.reshape(tl.dot(zt, w2), (BE, BK, CP))  # recomputed on chip
            dt = tl.sum(g[:, :, None, :] * r[:, None, :, :], axis=3)  # [BE, MP, BK]
            tl.store(
                dt_ptr + e[:, None, None] * dt_stride + m[None, :, None] * K + k[None, None, :],
                dt.to(dt_ptr.dtype.element_ty),
                mask=tmask,
            )
        dr2 = tl.reshape(dr, (BE, BK * CP))
        if NEED_W:
            dw += tl.dot(tl.trans(zt), dr2)
        if NEED_Z:
            dz = tl.dot(dr2, tl.trans(w2))  # [BE, HP]: this program's share of the k sum
            tl.atomic_add(
                dz_ptr + e[:, None] * H + h[None, :], dz, mask=e_ok[:, None] & (h < H)[None, :]
            )
    if NEED_W:
        dw3 = tl.reshape(dw, (HP, BK, CP))
        tl.store(
            dw_ptr + h[:, None, None] * (K * C) + k[None, :, None] * C + c[None, None, :],
            dw3,
            mask=wmask,
        )


def _sizes(tiles: dict, H: int, C: int, M: int) -> dict:
    return dict(
        HP=_p2(H),
        BE=_p2(tiles["block_e"]),
        BK=triton.next_power_of_2(max(1, tiles["block_k"])),
        CP=triton.next_power_of_2(max(1, C)),
        MP=triton.next_power_of_2(max(1, M)),
    )


def forward(z, wt, tm, out, tiles: dict) -> None:
    """``out [E, M, C]`` = messages of one output degree (``wt [H, K C]``, (k, c) order)."""
    E, H = z.shape
    _, M, K = tm.shape
    C = out.shape[2]
    if E == 0:
        return
    s = _sizes(tiles, H, C, M)
    grid = (triton.cdiv(E, s["BE"]),)
    _forward_kernel[grid](z, wt, tm, out, E, H, K, C, M, tm.stride(0), **s)


def backward(z, wt, tm, g, dt, dw, dz, tiles: dict) -> None:
    """``dw [H, K C]`` (float32, (k, c) order) and ``dz [E, H]`` (float32) accumulated, ``dt``
    written (each skipped when None)."""
    E, H = z.shape
    _, M, K = tm.shape
    C = g.shape[2]
    if E == 0:
        return
    s = _sizes(tiles, H, C, M)
    grid = (triton.cdiv(K, s["BK"]),)
    # the kernel stores dW (each program owns its columns): accumulate across chunks here
    dw_chunk = torch.empty_like(dw) if dw is not None else None
    dummy = z
    _backward_kernel[grid](
        z,
        wt,
        tm,
        g,
        dt if dt is not None else dummy,
        dw_chunk if dw is not None else dummy,
        dz if dz is not None else dummy,
        E,
        H,
        K,
        C,
        M,
        tm.stride(0),
        dt.stride(0) if dt is not None else 0,
        NEED_T=dt is not None,
        NEED_W=dw is not None,
        NEED_Z=dz is not None,
        **s,
    )
    if dw is not None:
        dw += dw_chunk


class ConcatTFNTriton(torch.autograd.Function):
    """The ``triton`` evaluation; inputs and outputs as :class:`se3t.nn.kernel._ConcatTFN`."""

    @staticmethod
    def forward(ctx, z, weight, x_all, src, spec: KernelSpec, state: KernelState, block):
        tiles = state.tile("triton", spec, z)
        chunk = tiles["chunk_edges"]
        E, C = z.shape[0], x_all.shape[2]
        z = z.contiguous()
        wts = _permuted_weights(spec, weight)  # {d_out: [H, K C_o]}, (k, c_o) order
        outs = [z.new_empty(E, 2 * do + 1, co) for do, co in spec.outs]
        for s in range(0, E, chunk):
            e = slice(s, s + chunk)
            c = min(chunk, E - s)
            T = torch.bmm(block[e], gather(x_all, src[e]))  # [c, sum rows, C]
            for k, (do, _) in enumerate(spec.outs):
                r0, r1 = spec.block_rows[do]
                m = 2 * do + 1
                forward(
                    z[e], wts[do], T[:, r0:r1].view(c, m, (r1 - r0) * C // m), outs[k][e], tiles
                )
        ctx.spec, ctx.state, ctx.wts = spec, state, wts
        ctx.save_for_backward(z, weight, x_all, src, block)
        return tuple(o.transpose(1, 2) for o in outs)

    @staticmethod
    def backward(ctx, *grads):
        z, weight, x_all, src, block = ctx.saved_tensors
        spec, state, wts = ctx.spec, ctx.state, ctx.wts
        tiles = state.tile("triton", spec, z)
        chunk = tiles["chunk_edges"]
        need_z, need_w, need_x, need_b = (ctx.needs_input_grad[i] for i in (0, 1, 2, 6))
        need_t = need_x or need_b
        C = x_all.shape[2]
        grads_t = [None if g is None else g.transpose(1, 2).contiguous() for g in grads]
        gz = torch.zeros(z.shape, dtype=torch.float32, device=z.device) if need_z else None
        gx = torch.zeros_like(x_all) if need_x else None
        gb = torch.zeros_like(block) if need_b else None
        gwt = (
            {
                do: torch.zeros(w.shape, dtype=torch.float32, device=w.device)
                for do, w in wts.items()
            }
            if need_w
            else None
        )
        for s in range(0, z.shape[0], chunk):
            e = slice(s, s + chunk)
            c = min(chunk, z.shape[0] - s)
            x_e = gather(x_all, src[e])
            T = torch.bmm(block[e], x_e)
            gT = torch.zeros_like(T) if need_t else None
            for k, (do, _) in enumerate(spec.outs):
                if grads_t[k] is None:
                    continue
                r0, r1 = spec.block_rows[do]
                m = 2 * do + 1
                kk = (r1 - r0) * C // m
                backward(
                    z[e],
                    wts[do],
                    T[:, r0:r1].view(c, m, kk),
                    grads_t[k][e],
                    gT[:, r0:r1].view(c, m, kk) if need_t else None,
                    gwt[do] if need_w else None,
                    gz[e] if need_z else None,
                    tiles,
                )
            if need_x:
                gx_e = torch.bmm(block[e].transpose(1, 2), gT)
                gx.view(gx.shape[0], -1).index_add_(0, src[e], gx_e.view(c, -1))
            if need_b:
                torch.bmm(gT, x_e.transpose(1, 2), out=gb[e])
        gw = None
        if need_w:
            gw = torch.empty(weight.shape, dtype=torch.float32, device=weight.device)
            for do, g in gwt.items():
                first, rows = spec.do_rows[do]
                inv = spec.concat_inverse(do, gw.device)
                torch.index_select(g.t(), 0, inv, out=gw[first : first + rows])
            gw = gw.to(weight.dtype)
        return (gz.to(z.dtype) if need_z else None, gw, gx, None, None, None, gb)


def trial_problem(spec: KernelSpec, E: int, H: int, dtype: torch.dtype, device):
    """``{"both": run(tiles)}``: forward and backward on random data of ``spec``'s shape (the
    tuner's trial; on a GPU the first run of each candidate also compiles it)."""
    g = torch.Generator(device=device).manual_seed(0)
    C = spec.ins[0][1]
    z = torch.randn(E, H, generator=g, dtype=dtype, device=device)
    nb = max(r1 for _, r1 in spec.block_rows.values())
    T = torch.randn(E, nb, C, generator=g, dtype=dtype, device=device)
    problems = []
    for do, co in spec.outs:
        r0, r1 = spec.block_rows[do]
        m = 2 * do + 1
        k = (r1 - r0) * C // m
        w = torch.randn(H, k * co, generator=g, dtype=dtype, device=device)
        grad = torch.randn(E, m, co, generator=g, dtype=dtype, device=device)
        problems.append((w, T[:, r0:r1].view(E, m, k), torch.empty_like(grad), grad))

    def run(tiles: dict) -> None:
        for w, t, out, grad in problems:
            forward(z, w, t, out, tiles)
            gw = torch.zeros(w.shape, dtype=torch.float32, device=device)
            gz = torch.zeros(z.shape, dtype=torch.float32, device=device)
            backward(z, w, t, grad, torch.empty_like(t), gw, gz, tiles)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return {"both": run}
