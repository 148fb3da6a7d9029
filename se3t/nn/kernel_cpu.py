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

The kernel is a plain shared library (C ABI, called through ``ctypes``; no torch headers, so
the build takes a few seconds) compiled with the host's ``-march=native`` into the user's cache
folder (``$XDG_CACHE_HOME/se3t/kernels``, else ``~/.cache/se3t/kernels``), under a name keyed by
the CPU model and ISA flags, the compiler, the flags and the source, so a home folder shared by
different machines never loads a binary built for another CPU. Without a compiler (or when the
build fails) :func:`extension` returns None after one log line, and the torch evaluation runs
instead.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor

from se3t import io
from se3t.choices import Evaluation, Kernel
from se3t.nn.evaluations import Registered, register
from se3t.nn.graph_ops import gather
from se3t.nn.kernel_spec import KernelSpec
from se3t.nn.kernel_state import KernelState, permutes
from se3t.nn.sharing import RadialShare
from se3t.so3.blocks import block_column_ranges

__all__ = [
    "ConcatTFNCpu",
    "CpuKernel",
    "build_info",
    "cpu_description",
    "extension",
    "openmp_runtimes",
]

log = logging.getLogger("se3t.kernel")
SOURCE = Path(__file__).resolve().parent / "csrc" / "tfn_cpu.cpp"
FLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-pthread", "-std=c++17"]
# how the kernel's threads are made: "openmp" joins torch's own libgomp team (the library's
# libgomp.so.1 binds to the copy torch loaded, by its soname); "threads" starts std::threads
THREADING = {"openmp": ["-fopenmp"], "threads": ["-DSE3T_STD_THREADS"]}


def cpu_description() -> tuple[str, str]:
    """``(model name, ISA flags)`` of this CPU from /proc/cpuinfo (``platform`` elsewhere)."""
    model, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not model:
                model = value.strip()
            elif key == "flags" and not flags:
                flags = value.strip()
            if flags and model:
                break
    except OSError:
        pass
    return model or platform.processor() or platform.machine(), flags


def _compiler() -> str | None:
    return shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


def kernel_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "se3t" / "kernels"


def openmp_runtimes() -> list[str]:
    """The OpenMP runtimes mapped into this process (from /proc/self/maps), by file path."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    paths = {line.split()[-1] for line in maps.splitlines() if " /" in line}
    return sorted(p for p in paths if Path(p).name.startswith(("libgomp", "libiomp", "libomp")))


def _threadings() -> list[str]:
    # torch's idle OpenMP workers spin for a while after each op; the kernel's threads must be
    # those workers, or they share the cores with them (a third of the kernel's time on 2 cores)
    runtimes = openmp_runtimes()
    if runtimes and all(Path(p).name.startswith("libgomp") for p in runtimes):
        return ["openmp", "threads"]
    return ["threads"]  # another runtime (or none): -fopenmp would load a second one


def _library(compiler: str, threading: str) -> Path:
    model, flags = cpu_description()
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[:1]
    build = " ".join(FLAGS + THREADING[threading])
    key = "\n".join([model, flags, compiler, *version, build, SOURCE.read_text()])
    return kernel_folder() / f"tfn_cpu_{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"


_BUILD: dict[str, object] = {}  # what extension() did in this process, for build_info()


class CpuKernel:
    """The compiled library's entry points, with the shape checks the C code relies on."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        self.vector_bytes = lib.se3t_tfn_vector_bytes()
        self.threading = "openmp" if lib.se3t_tfn_openmp() else "threads"
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        group = [ptr, i64, i64, ptr, i64, i64, ptr, ptr, ptr, i64, ptr, ptr, ptr, i64, ptr]
        for sfx in ("f32", "f64"):
            f = getattr(lib, f"se3t_tfn_forward_{sfx}")
            f.restype = None
            f.argtypes = group + [ptr, ptr, i64, i64, i64]
            b = getattr(lib, f"se3t_tfn_backward_{sfx}")
            b.restype = None
            b.argtypes = [ptr, i64, i64, ptr, i64, i64, ptr, i64, i64, ptr, ptr, ptr, ptr, i64]
            b.argtypes += [ptr, ptr, i64, i64]
            f = getattr(lib, f"se3t_tfn_basis_x_{sfx}")
            f.restype = None
            f.argtypes = [ptr, i64, i64, i64, ptr, i64, ptr, ptr, ptr, ptr, i64]
            f = getattr(lib, f"se3t_tfn_basis_t_{sfx}")
            f.restype = None
            f.argtypes = [ptr, i64, i64, i64, ptr, i64, ptr, ptr, ptr, i64]
            for name in ("pack", "unpack"):
                f = getattr(lib, f"se3t_tfn_{name}_{sfx}")
                f.restype = None
                f.argtypes = [ptr, i64, ptr, i64, ptr, i64]

    @staticmethod
    def _sfx(z: Tensor) -> str:
        if z.dtype not in (torch.float32, torch.float64) or z.device.type != "cpu":
            raise ValueError(f"cpp kernel: CPU float32/float64 only, got {z.device} {z.dtype}")
        return "f32" if z.dtype == torch.float32 else "f64"

    @staticmethod
    def _dense(t: Tensor, shape: tuple, dtype: torch.dtype, name: str) -> None:
        if tuple(t.shape) != tuple(shape) or not t.is_contiguous() or t.dtype != dtype:
            raise ValueError(
                f"cpp kernel: {name} must be a contiguous {dtype} {list(shape)}, "
                f"got {t.dtype} {list(t.shape)}"
            )

    # The C code trusts the index tensors: a bad index would read or write out of bounds.
    @classmethod
    def _index(cls, t: Tensor, name: str, size: int, bound: int, what: str) -> None:
        """``t``: a contiguous int64 ``[size]`` of indices into ``bound`` ``what``."""
        cls._dense(t, (size,), torch.int64, name)
        if size and (int(t.min()) < 0 or int(t.max()) >= bound):
            raise ValueError(f"cpp kernel: {name} must index the {bound} {what}")

    @classmethod
    def _offsets(cls, off: Tensor, U: int, n: int) -> None:
        """``off [U + 1]``: the first edge of every run, rising from 0 to ``n``."""
        cls._dense(off, (U + 1,), torch.int64, "off")
        if int(off[0]) != 0 or int(off[-1]) != n or (U and bool((off.diff() < 0).any())):
            raise ValueError(f"cpp kernel: off must rise from 0 to the {n} edges")

    @classmethod
    def _ranges(cls, lo: Tensor, hi: Tensor, nb: int, ni: int) -> None:
        """``lo, hi [nb]``: each block row's nonzero columns, within ``[0, ni]``."""
        cls._dense(lo, (nb,), torch.int64, "lo")
        cls._dense(hi, (nb,), torch.int64, "hi")
        if nb and (int(lo.min()) < 0 or bool((hi < lo).any()) or int(hi.max()) > ni):
            raise ValueError(f"cpp kernel: column ranges must lie in [0, {ni}]")

    def _group(self, z, block, lo, hi, x, src, off, rows, desc) -> tuple[int, ...]:
        (U, H), (E, nb, ni), (N, C) = z.shape, block.shape, (x.shape[0], x.shape[-1])
        self._dense(z, (U, H), z.dtype, "z")
        self._dense(block, (E, nb, ni), z.dtype, "the block basis")
        self._dense(x, (N, ni, C), z.dtype, "x")
        self._ranges(lo, hi, nb, ni)
        self._offsets(off, U, E)
        self._index(src, "src", E, N, "nodes")
        self._index(rows, "rows", E, E, "output rows")
        self._dense(desc, (desc.shape[0], 4), torch.int64, "desc")
        for r0, M, K, Co in desc.tolist():
            if min(r0, M, K, Co) < 0 or M * K % C or r0 + M * K // C > nb:
                raise ValueError(f"cpp kernel: degree {(r0, M, K, Co)} outside the {nb} rows of T")
        return U, H, E, nb, ni, C

    @staticmethod
    def _pointers(ts) -> ctypes.Array:
        return (ctypes.c_void_p * len(ts))(*[None if t is None else t.data_ptr() for t in ts])

    @staticmethod
    def _edge_stride(t: Tensor, name: str) -> int:
        # T is a view [E, M, K] of the stacked T of every output degree: rows contiguous
        if t.stride(2) != 1 or t.stride(1) != t.shape[2]:
            raise ValueError(f"cpp kernel: {name} must be contiguous within an edge")
        return t.stride(0)

    def basis_x(self, block: Tensor, x: Tensor, src: Tensor, lo: Tensor, hi: Tensor, out: Tensor):
        """``out[e] = block[e] @ x[src[e]]`` (``[E, nb, C]``) over each row's nonzero columns
        ``[lo, hi)`` of ``block [E, nb, ni]``; ``x [N, ni, C]``. Returns ``out``."""
        (E, nb, ni), (N, C) = block.shape, (x.shape[0], x.shape[2])
        for t, shape, name in ((block, (E, nb, ni), "the block basis"), (x, (N, ni, C), "x")):
            self._dense(t, shape, block.dtype, name)
        self._dense(out, (E, nb, C), block.dtype, "T")
        self._ranges(lo, hi, nb, ni)
        self._index(src, "src", E, N, "nodes")
        getattr(self.lib, f"se3t_tfn_basis_x_{self._sfx(block)}")(
            block.data_ptr(), E, nb, ni, x.data_ptr(), C, src.data_ptr(), lo.data_ptr(),
            hi.data_ptr(), out.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        return out

    def basis_t(self, block: Tensor, gt: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        """``block[e].t() @ gt[e]`` (``[E, ni, C]``) over each row's nonzero columns: the
        gradient of :meth:`basis_x` for ``x[src[e]]``."""
        (E, nb, ni), C = block.shape, gt.shape[2]
        self._dense(block, (E, nb, ni), block.dtype, "the block basis")
        self._dense(gt, (E, nb, C), block.dtype, "dT")
        self._ranges(lo, hi, nb, ni)
        out = block.new_empty(E, ni, C)
        getattr(self.lib, f"se3t_tfn_basis_t_{self._sfx(block)}")(
            block.data_ptr(), E, nb, ni, gt.data_ptr(), C, lo.data_ptr(), hi.data_ptr(),
            out.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        return out

    def forward(self, z, block, lo, hi, x, src, off, rows, desc, wts, outs, edge_block, k_tile):
        """The messages of one fusion group: ``outs[d][rows[i]] [M, C_o]`` of edge ``i`` for
        every output degree ``d`` (``desc[d] = (r0, M, K, C_o)``: rows ``r0 .. r0 + M K / C``
        of ``T = Bb x[src]`` viewed ``[M, K]``), with radial weights ``z[u] @ wts[d]`` for
        the run ``u`` of the edge (``off[u] <= i < off[u + 1]``; ``z [U, H]``, ``wts[d] [H,
        K C_o]`` in (k, c) order). ``block [E, nb, ni]`` the block basis, zero outside each
        row's columns ``[lo, hi)``; ``x [N, ni, C]``."""
        U, H, E, nb, ni, C = self._group(z, block, lo, hi, x, src, off, rows, desc)
        for (_, M, K, Co), w, o in zip(desc.tolist(), wts, outs, strict=True):
            self._dense(w, (H, K * Co), z.dtype, "the radial weights")
            self._dense(o, (E, M, Co), z.dtype, "a message tensor")
        getattr(self.lib, f"se3t_tfn_forward_{self._sfx(z)}")(
            z.data_ptr(), U, H, block.data_ptr(), nb, ni, lo.data_ptr(), hi.data_ptr(),
            x.data_ptr(), C, src.data_ptr(), off.data_ptr(), rows.data_ptr(), len(outs),
            desc.data_ptr(), self._pointers(wts), self._pointers(outs), edge_block, k_tile,
            torch.get_num_threads(),
        )  # fmt: skip

    def backward(self, z, wcf, tm, off, rows, g, dt, dwcf, dz, k_tile: int) -> None:
        """Accumulates ``dwcf [H, C K]`` and ``dz [U, H]``, writes ``dt [n, M, K]`` (each
        skipped when None), from the messages' gradient ``g[rows[i]]`` of edge ``i``."""
        (U, H), (n, M, K), C = z.shape, tm.shape, g.shape[2]
        self._dense(z, (U, H), z.dtype, "z")
        self._dense(wcf, (H, K * C), z.dtype, "the radial weights")
        self._dense(g, (g.shape[0], M, C), z.dtype, "the message gradient")
        for t, shape, name in ((dwcf, (H, K * C), "dW"), (dz, (U, H), "dz")):
            if t is not None:
                self._dense(t, shape, z.dtype, name)
        if tm.dtype != z.dtype:
            raise ValueError("cpp kernel: T must have z's dtype")
        if dt is not None and (tuple(dt.shape) != tuple(tm.shape) or dt.dtype != z.dtype):
            raise ValueError("cpp kernel: dT must be shaped like T")
        self._offsets(off, U, n)
        self._index(rows, "rows", n, g.shape[0], "output rows")
        getattr(self.lib, f"se3t_tfn_backward_{self._sfx(z)}")(
            z.data_ptr(),
            U,
            H,
            wcf.data_ptr(),
            K,
            C,
            tm.data_ptr(),
            self._edge_stride(tm, "T"),
            M,
            off.data_ptr(),
            rows.data_ptr(),
            g.data_ptr(),
            None if dt is None else dt.data_ptr(),
            0 if dt is None else self._edge_stride(dt, "dT"),
            None if dwcf is None else dwcf.data_ptr(),
            None if dz is None else dz.data_ptr(),
            k_tile,
            torch.get_num_threads(),
        )

    @classmethod
    def _perm(cls, weight: Tensor, perm: Tensor) -> None:
        if weight.dim() != 2 or not weight.is_contiguous():
            raise ValueError(
                f"cpp kernel: weights must be a contiguous [rows, H], got {weight.shape}"
            )
        if perm.dim() != 1:
            raise ValueError("cpp kernel: perm must be a contiguous int64 vector")
        cls._index(perm, "perm", perm.numel(), weight.shape[0], "weight rows")

    def pack(self, weight: Tensor, perm: Tensor) -> Tensor:
        """``weight[perm].t()`` as a new contiguous ``[H, n]``: the rows of the radial last
        layer ``[rows, H]`` in the order the kernel reads them."""
        self._perm(weight, perm)
        out = weight.new_empty(weight.shape[1], perm.numel())
        getattr(self.lib, f"se3t_tfn_pack_{self._sfx(weight)}")(
            weight.data_ptr(), weight.shape[1], perm.data_ptr(), perm.numel(), out.data_ptr(),
            torch.get_num_threads(),
        )  # fmt: skip
        return out

    def unpack(self, packed: Tensor, perm: Tensor, out: Tensor) -> None:
        """``out[perm] = packed.t()``: a gradient in the kernel's order ``[H, n]`` back into
        rows ``perm`` of the parameter's layout ``out [rows, H]``."""
        self._perm(out, perm)
        H, n = out.shape[1], perm.numel()
        if tuple(packed.shape) != (H, n) or not packed.is_contiguous() or packed.dtype != out.dtype:
            raise ValueError(f"cpp kernel: expected a contiguous {(H, n)}, got {packed.shape}")
        getattr(self.lib, f"se3t_tfn_unpack_{self._sfx(out)}")(
            packed.data_ptr(), H, perm.data_ptr(), n, out.data_ptr(), torch.get_num_threads()
        )


def _build(compiler: str, threading: str, lib: Path, march: str = "native") -> None:
    """Compiles the library into ``lib``; ``march`` other than the host's only for the tests of
    the narrower vector paths (AVX2, SSE) on a wider machine."""
    lib.parent.mkdir(parents=True, exist_ok=True)
    # compile next to the target, then rename: a concurrent process never loads half a file
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib.parent)
    os.close(fd)
    try:
        proc = subprocess.run(
            [compiler, *(f.replace("native", march) for f in FLAGS), *THREADING[threading]]
            + ["-o", tmp, str(SOURCE)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip() or f"{compiler} exited {proc.returncode}")
        io.replace(tmp, lib)
    finally:
        Path(tmp).unlink(missing_ok=True)


@functools.cache  # like an import: the compiled library is loaded once per process
def extension() -> CpuKernel | None:
    """The compiled kernel, built at first use; None (after one log line) when there is no
    C++ compiler or the build fails."""
    compiler = _compiler()
    if compiler is None:
        log.warning("se3t kernel: no C++ compiler found; the fused TFN runs in torch (slower)")
        _BUILD.update(status="no compiler")
        return None
    t0 = time.perf_counter()
    for threading in _threadings():
        lib = _library(compiler, threading)
        cached = lib.exists()
        try:
            if not cached:
                _build(compiler, threading, lib)
            kernel = CpuKernel(ctypes.CDLL(str(lib)))
            break
        except (OSError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[:1]
            error = first[0] if first else type(exc).__name__
            if threading == "openmp":  # e.g. a compiler without OpenMP: std::threads next
                log.info("se3t kernel: the OpenMP build failed (%s); trying std::thread", error)
                continue
            log.warning(
                "se3t kernel: building the C++ kernel failed (%s); the fused TFN runs in torch",
                error,
            )
            _BUILD.update(status="build failed", error=str(exc))
            return None
    seconds = time.perf_counter() - t0
    _BUILD.update(
        status="loaded" if cached else "built",
        seconds=seconds,
        library=str(lib),
        vector_bytes=kernel.vector_bytes,
        threading=kernel.threading,
    )
    if not cached:
        log.info("se3t kernel: compiled the C++ kernel in %.1f s into %s", seconds, lib)
    return kernel


def build_info() -> dict:
    """What :func:`extension` did in this process: status (built, loaded, no compiler, build
    failed), seconds, library, SIMD vector bytes, threading (``openmp``: torch's own OpenMP
    team, ``threads``: std::threads); empty before the first use."""
    return dict(_BUILD)


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
        rows_cf = {do: spec.concat_rows(do, True, weight.device) for do in spec.out_degrees}
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
