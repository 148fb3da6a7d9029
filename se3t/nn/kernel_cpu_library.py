"""The ``cpp`` evaluation's library: built from ``csrc/tfn_cpu.cpp`` at first use, loaded through
``ctypes``.

The kernel is a plain shared library (C ABI; no torch headers, so the build takes a few
seconds) compiled with the host's ``-march=native`` into the user's cache folder
(``$XDG_CACHE_HOME/se3t/kernels``, else ``~/.cache/se3t/kernels``), under a name keyed by the
CPU model and ISA flags, the compiler, the flags and the source, so a home folder shared by
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

__all__ = [
    "CpuKernel",
    "build",
    "build_info",
    "find_compiler",
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


def find_compiler() -> str | None:
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
    build_flags = " ".join(FLAGS + THREADING[threading])
    key = "\n".join([model, flags, compiler, *version, build_flags, SOURCE.read_text()])
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
            b = getattr(lib, f"se3t_tfn_backward_runs_{sfx}")
            b.restype = None
            b.argtypes = [ptr, i64, i64, ptr, i64, i64, ptr, i64, i64, ptr, ptr, ptr, ptr, i64]
            b.argtypes += [ptr, ptr, i64]
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

    def by_runs(self, K: int, dtype: torch.dtype) -> bool:
        """Whether the backward pass of ``K`` concatenated input columns runs by runs (weights
        in the (k, c) order, vectorized over channels): K is narrower than one vector of this
        build, so K tiles would run scalar code on one thread."""
        return K * dtype.itemsize < self.vector_bytes

    def backward(self, z, wcf, tm, off, rows, g, dt, dwcf, dz, k_tile: int, by_runs=False):
        """Accumulates ``dwcf [H, C K]`` and ``dz [U, H]``, writes ``dt [n, M, K]`` (each
        skipped when None), from the messages' gradient ``g[rows[i]]`` of edge ``i``. With
        ``by_runs`` (:meth:`by_runs`) the weights and their gradient are in the (k, c) order,
        ``[H, K C]`` (:meth:`pack` of ``concat_rows(d_out, False)``), and ``k_tile`` unused."""
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
        entry = "backward_runs" if by_runs else "backward"
        getattr(self.lib, f"se3t_tfn_{entry}_{self._sfx(z)}")(
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
            *(() if by_runs else (k_tile,)),
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


def build(compiler: str, threading: str, lib: Path, march: str = "native") -> None:
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
    compiler = find_compiler()
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
                build(compiler, threading, lib)
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
