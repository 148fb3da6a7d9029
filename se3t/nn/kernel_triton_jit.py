"""The Triton kernels of the ``triton`` evaluation (:mod:`se3t.nn.kernel_triton`) and their
launchers. Importing this module imports Triton and decorates the kernels (Triton reads
``TRITON_INTERPRET`` then).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["backward", "forward"]


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
