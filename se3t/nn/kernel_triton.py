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
tests before the first run: Triton reads it when the kernels of :mod:`se3t.nn.kernel_triton_jit`
are decorated, which this module imports at first use, so that se3t imports without Triton).
"""

from __future__ import annotations

import os

import torch

from se3t.choices import Evaluation, Kernel
from se3t.nn.evaluations import Registered, register
from se3t.nn.graph_ops import gather
from se3t.nn.kernel_spec import KernelSpec, permuted_weights
from se3t.nn.kernel_state import KernelState

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


def _jit():
    from se3t.nn import kernel_triton_jit  # deferred: Triton is an optional dependency

    return kernel_triton_jit


class ConcatTFNTriton(torch.autograd.Function):
    """The ``triton`` evaluation; inputs and outputs as :class:`se3t.nn.kernel_torch._ConcatTFN`."""

    @staticmethod
    def forward(ctx, z, weight, x_all, src, spec: KernelSpec, state: KernelState, block):
        tiles = state.tile("triton", spec, z)
        chunk = tiles["chunk_edges"]
        E, C = z.shape[0], x_all.shape[2]
        z = z.contiguous()
        wts = permuted_weights(spec, weight)  # {d_out: [H, K C_o]}, (k, c_o) order
        outs = [z.new_empty(E, 2 * do + 1, co) for do, co in spec.outs]
        for s in range(0, E, chunk):
            e = slice(s, s + chunk)
            c = min(chunk, E - s)
            T = torch.bmm(block[e], gather(x_all, src[e]))  # [c, sum rows, C]
            for k, (do, _) in enumerate(spec.outs):
                r0, r1 = spec.block_rows[do]
                m = 2 * do + 1
                _jit().forward(
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
                _jit().backward(
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

    jit = _jit()

    def run(tiles: dict) -> None:
        for w, t, out, grad in problems:
            jit.forward(z, w, t, out, tiles)
            gw = torch.zeros(w.shape, dtype=torch.float32, device=device)
            gz = torch.zeros(z.shape, dtype=torch.float32, device=device)
            jit.backward(z, w, t, grad, torch.empty_like(t), gw, gz, tiles)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return {"both": run}


def _apply(spec: KernelSpec, state: KernelState, z, weight, basis, src, xs, share=None):
    x_all, block = state.concat_operands(spec, basis, xs, z.dtype)
    return ConcatTFNTriton.apply(z, weight, x_all, src, spec, state, block)


def _unsupported(spec: KernelSpec, device: torch.device, dt: torch.dtype) -> str | None:
    if not spec.uniform_channels:
        return (
            "kernel: backend triton needs one channel count across the input degrees of a "
            f"fused group, got {spec.ins}; use model.kernel=torch"
        )
    try:
        check_available(torch.empty(0, device=device, dtype=dt))
    except ValueError as err:
        return str(err)
    return None


register(
    Registered(
        Evaluation.TRITON,
        _apply,
        serves=frozenset({Kernel.TRITON}),
        rank=10,
        owner=Kernel.TRITON,
        unsupported=_unsupported,
        tiles={"chunk_edges": 4096, "block_e": 16, "block_k": 32},
        candidates={
            "both": [{"block_e": be, "block_k": bk} for be in (16, 32) for bk in (16, 32, 64)]
        },
        trial_problem=trial_problem,
    )
)
