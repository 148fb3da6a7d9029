"""The ``cpp`` evaluation of the fused TFN contraction: a C++/OpenMP kernel built at first use.

The kernel (``csrc/tfn_cpu.cpp``) computes the radial weights ``R = z @ W^T`` of a tile of
edges and ``K`` indices into a buffer of a few KB that stays in L1, and contracts it with ``T``
at once; backward recomputes the tile and forms ``dR``, ``dT``, ``dW`` and ``dz`` on it. ``R``
is never written to memory (docs/kernel.md). The forward pass is one call per fusion group that
also computes ``T = Bb x[src]`` (block basis times node features) per block of edges in a
thread-local buffer; the backward pass runs per chunk of edges on a ``T`` the library computes
for the chunk (``basis_x``), and forms the node-feature gradient (``basis_t``), both on the
block basis's nonzero entries only; the basis gradient stays a batched torch matmul. The layout
is that of :class:`se3t.nn.kernel_torch._ConcatTFN`.

The library, its build and its entry points are :mod:`se3t.nn.kernel_cpu_library`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from se3t.choices import Evaluation, Kernel
from se3t.nn.evaluations import Registered, register
from se3t.nn.graph_ops import gather
from se3t.nn.kernel_cpu_library import (
    CpuKernel,
    build_info,
    cpu_description,
    extension,
    openmp_runtimes,
)
from se3t.nn.kernel_spec import KernelSpec
from se3t.nn.kernel_state import KernelState, permutes
from se3t.nn.sharing import RadialShare
from se3t.so3.blocks import block_column_ranges

__all__ = [
    "ConcatTFNCpu",
    "CpuKernel",
    "build_info",
    "cpu_description",
    "degrees",
    "extension",
    "openmp_runtimes",
]


def _runs_per_chunk(tiles: dict, share) -> int:
    # chunk_edges bounds the edges (the backward pass's T and dT buffers) of a chunk, whatever
    # the runs' sizes
    return max(1, tiles["chunk_edges"] * share.num_runs // max(1, share.num_edges))


def degrees(spec: KernelSpec, C: int) -> Tensor:
    """``[n_out, 4]``: ``(r0, M, K, C_o)`` of every output degree of ``spec`` (rows ``r0 ..``
    of ``T`` viewed ``[M, K]``, ``C_o`` channels), as :meth:`CpuKernel.forward` takes them."""
    desc = []
    for do, co in spec.outs:
        r0, r1 = spec.block_rows[do]
        m = 2 * do + 1
        desc.append((r0, m, (r1 - r0) * C // m, co))
    return torch.tensor(desc, dtype=torch.long).view(-1, 4)


class ConcatTFNCpu(torch.autograd.Function):
    """The ``cpp`` evaluation; inputs and outputs as :class:`se3t.nn.kernel_torch._ConcatTFN`,
    except that ``z [U, H]`` has one row per run of ``share``
    (:class:`se3t.nn.sharing.RadialShare`) and ``src`` and ``block`` list the edges in run
    order; the messages come out in edge order. One call of the library per pass: no chunks,
    no ``T`` in memory."""

    @staticmethod
    def forward(ctx, z, weight, x_all, src, spec: KernelSpec, state: KernelState, block, share):
        ext = extension()
        tiles = state.tile("cpp", spec, z)
        z, x_all, block, weight = (t.contiguous() for t in (z, x_all, block, weight))
        lo, hi = block_column_ranges(spec.in_degrees, spec.out_degrees)
        desc = degrees(spec, x_all.shape[2])
        wts = [
            ext.pack(weight, spec.concat_rows(do, False, weight.device)) for do in spec.out_degrees
        ]
        outs = [z.new_empty(share.num_edges, 2 * do + 1, co) for do, co in spec.outs]
        ext.forward(
            z, block, lo, hi, x_all, src, share.offsets, share.order, desc, wts, outs,
            tiles["edge_block"], tiles["k_tile"],
        )  # fmt: skip
        ctx.spec, ctx.state, ctx.share = spec, state, share
        ctx.save_for_backward(z, weight, x_all, src, block)
        return tuple(o.transpose(1, 2) for o in outs)  # [E, C_o, 2 d_out + 1]

    @staticmethod
    def backward(ctx, *grads):
        z, weight, x_all, src, block = ctx.saved_tensors
        spec, state, share = ctx.spec, ctx.state, ctx.share
        ext = extension()
        tiles = state.tile("cpp", spec, z)
        chunk = _runs_per_chunk(tiles, share)
        need_z, need_w, need_x, need_b = (ctx.needs_input_grad[i] for i in (0, 1, 2, 6))
        need_t = need_x or need_b
        C, nb = x_all.shape[2], block.shape[1]
        lo, hi = block_column_ranges(spec.in_degrees, spec.out_degrees)
        off, order = share.offsets.tolist(), share.order
        # per output degree: K tiles on the weights in the (c, k) order, or, for K narrower
        # than a vector, runs on the (k, c) order (CpuKernel.by_runs)
        runs = {
            do: ext.by_runs(K, z.dtype)
            for (do, _), (_, _, K, _) in zip(spec.outs, degrees(spec, C).tolist(), strict=True)
        }
        rows_cf = {do: spec.concat_rows(do, not runs[do], weight.device) for do in spec.out_degrees}
        wcf = {do: ext.pack(weight, r) for do, r in rows_cf.items()}  # {d_out: [H, C_o K]}
        grads_t = [None if g is None else g.transpose(1, 2).contiguous() for g in grads]
        gz = torch.zeros_like(z) if need_z else None
        gx = torch.zeros_like(x_all) if need_x else None
        gb = torch.zeros_like(block) if need_b else None
        gw_cf = {do: torch.zeros_like(w) for do, w in wcf.items()} if need_w else None
        for u0 in range(0, share.num_runs, chunk):
            u1 = min(u0 + chunk, share.num_runs)
            e0, e1 = off[u0], off[u1]
            c = e1 - e0
            T = state.scratch("T", c * nb * C, z).view(c, nb, C)
            ext.basis_x(block[e0:e1], x_all, src[e0:e1], lo, hi, T)
            gT = state.scratch("gT", c * nb * C, z).view(c, nb, C) if need_t else None
            off_c = share.offsets[u0 : u1 + 1] - e0
            for k, (do, _) in enumerate(spec.outs):
                r0, r1 = spec.block_rows[do]
                m = 2 * do + 1
                kk = (r1 - r0) * C // m
                if grads_t[k] is None:
                    if gT is not None:
                        gT[:, r0:r1].zero_()
                    continue
                ext.backward(
                    z[u0:u1],
                    wcf[do],
                    T[:, r0:r1].view(c, m, kk),
                    off_c,
                    order[e0:e1],
                    grads_t[k],
                    gT[:, r0:r1].view(c, m, kk) if gT is not None else None,
                    gw_cf[do] if need_w else None,
                    gz[u0:u1] if need_z else None,
                    tiles["k_tile_backward"],
                    by_runs=runs[do],
                )
            if gT is None:
                continue
            if need_x:
                gx_e = ext.basis_t(block[e0:e1], gT, lo, hi)  # [c, sum (2 d_in + 1), C]
                gx.view(gx.shape[0], -1).index_add_(0, src[e0:e1], gx_e.view(c, -1))
            if need_b:  # dense: the zeros' gradient goes to the padding column, unused
                x_e = gather(x_all, src[e0:e1])
                torch.bmm(gT, x_e.transpose(1, 2), out=gb[e0:e1])
        gw = None
        if need_w:
            gw = torch.empty_like(weight)  # every row is one d_out's: all written
            for do, g in gw_cf.items():
                ext.unpack(g, rows_cf[do], gw)
        return (gz, gw, gx, None, None, None, gb, None)


def trial_problem(spec: KernelSpec, E: int, H: int, dtype: torch.dtype, device):
    """``{"forward": run(tiles), "backward": run(tiles)}``: one pass of the kernel on random
    data of ``spec``'s shape with ``E`` edges, in runs of two (an edge and its reverse, as in a
    molecule's bond graph): what :class:`se3t.nn.tuning.KernelTuner` times."""
    ext = extension()
    g = torch.Generator().manual_seed(0)
    C = spec.ins[0][1]
    U = (E + 1) // 2
    z = torch.randn(U, H, generator=g, dtype=dtype)
    off = torch.arange(0, 2 * U + 1, 2).clamp_(max=E)
    rows = torch.arange(E)
    ni = sum(2 * d + 1 for d in spec.in_degrees)
    nb = max(r1 for _, r1 in spec.block_rows.values())
    block = torch.randn(E, nb, ni, generator=g, dtype=dtype)
    x = torch.randn(max(1, E // 2), ni, C, generator=g, dtype=dtype)
    src = torch.randint(0, x.shape[0], (E,), generator=g)
    lo, hi = block_column_ranges(spec.in_degrees, spec.out_degrees)
    desc = degrees(spec, C)
    wts = [torch.randn(H, K * co, generator=g, dtype=dtype) for _, _, K, co in desc.tolist()]
    outs = [torch.empty(E, M, co, dtype=dtype) for _, M, _, co in desc.tolist()]
    grads = [torch.randn(o.shape, generator=g, dtype=dtype) for o in outs]
    dws = [torch.zeros_like(w) for w in wts]
    gz = torch.zeros_like(z)
    group = (z, block, lo, hi, x, src, off, rows, desc)

    def forward(tiles: dict) -> None:
        ext.forward(*group, wts, outs, tiles["edge_block"], tiles["k_tile"])

    T = ext.basis_x(block, x, src, lo, hi, torch.empty(E, nb, C, dtype=dtype))
    dT = torch.empty_like(T)

    def backward(tiles: dict) -> None:
        for (r0, M, K, _), w, grad, dw in zip(desc.tolist(), wts, grads, dws, strict=True):
            t, dt = (a[:, r0 : r0 + M * K // C].view(E, M, K) for a in (T, dT))
            ext.backward(z, w, t, off, rows, grad, dt, dw, gz, tiles["k_tile_backward"])

    return {"forward": forward, "backward": backward}


def _apply(spec: KernelSpec, state: KernelState, z, weight, basis, src, xs, share=None):
    if share is None:
        share = RadialShare.single(z.shape[0], z.device)
    x_all, block = state.concat_operands(spec, basis, xs, z.dtype, share)
    if permutes(share):
        src = src.index_select(0, share.order)  # the block's edge order
    return ConcatTFNCpu.apply(z, weight, x_all, src, spec, state, block, share)


def _unsupported(spec: KernelSpec, device: torch.device, dt: torch.dtype) -> str | None:
    if not spec.uniform_channels:
        return (
            "kernel: backend cpp needs one channel count across the input degrees of a fused "
            f"group, got {spec.ins}; use model.kernel=torch"
        )
    if device.type != "cpu" or dt not in (torch.float32, torch.float64):
        return (
            f"kernel: backend cpp runs on the CPU in float32/float64, got {device.type} {dt} "
            "(use model.kernel=auto)"
        )
    return None


def _build_id() -> str:
    # a rebuilt kernel (new source, compiler or flags) is a new library: re-tune it
    return Path(str(build_info().get("library", ""))).stem


# chunk_edges bounds the per-chunk T and dT buffers of the backward pass (2 x 27 KB per edge
# at the paper's sizes, 28 MB at 512 edges): memory, not speed, so it is not part of the
# trial. The forward pass keeps T in per-thread buffers of edge_block runs and takes a whole
# pass at once; its best K tile differs from the backward pass's (the forward pass vectorizes
# over channels, the backward pass over K), so the two are tuned apart.
register(
    Registered(
        Evaluation.CPP,
        _apply,
        serves=frozenset({Kernel.AUTO, Kernel.CPP}),
        rank=0,
        owner=Kernel.CPP,
        unsupported=_unsupported,
        ready=lambda: extension() is not None,
        shares_radial=True,
        tiles={"edge_block": 32, "k_tile": 32, "chunk_edges": 512, "k_tile_backward": 32},
        candidates={
            "forward": [
                {"edge_block": eb, "k_tile": kt} for eb in (8, 32, 128) for kt in (16, 32, 64)
            ],
            "backward": [{"k_tile_backward": kt} for kt in (16, 32, 64)],
        },
        trial_problem=trial_problem,
        build=_build_id,
    )
)
