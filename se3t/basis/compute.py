"""Computing a store's shards: each chunk's rows from the dataset geometry, encoded by worker
threads, and whole shards written while the workers fill the next one (:class:`ShardFiller`)."""

from __future__ import annotations

import concurrent.futures as cf
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from torch import Tensor
from tqdm.auto import tqdm

from se3t.basis.claims import Claims
from se3t.basis.codec import ShardCodec
from se3t.basis.geometry import Geometry
from se3t.basis.key import DTYPES, BasisBackend
from se3t.basis.layout import unit_range
from se3t.errors import Se3tError


def keep_freed_memory() -> None:
    """Let glibc's malloc keep freed blocks of up to 32 MB instead of returning them to the
    kernel at once (process-wide; no effect elsewhere than glibc).

    Every chunk's compressed output (up to ``chunk_edges * S`` bytes, 17.9 MB for float32) is a
    fresh allocation; by default glibc serves it with a new ``mmap`` and unmaps it on free, so
    each chunk pays ~4,000 page faults: 1.6 GB of zeroed pages and ~1 s of system time for the
    20,000-molecule subset (BENCHMARKS.md). Raising the mmap and trim thresholds lets the same
    memory be reused; at most a few such blocks per thread stay mapped."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes  # deferred: only glibc systems get here

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD (32 MB: glibc's upper bound)
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc (musl): keep the defaults
        pass


def compute_chunk(
    geom: Geometry,
    meta: dict[str, Any],
    chunk_mols: np.ndarray,
    c: int,
    backend: BasisBackend,
    block: Tensor,
) -> int:
    """Fill ``block`` ([chunk_edges, S], a view of a unit buffer) with the padded rows of chunk
    ``c``; return its number of real edges.

    Within a chunk the molecules' rows are consecutive from the chunk's first row (padding only
    at its end), so the backend fills the chunk's rows in place (no copy, no new allocation) and
    only the padding is zeroed."""
    S = meta["basis_size"]
    out_dtype = DTYPES[meta["dtype"]]
    compute_dtype = torch.float64 if meta["dtype"] == "float64" else torch.float32
    m0, m1 = int(chunk_mols[c]), int(chunk_mols[c + 1])
    n = int(geom.edge_offsets[m1] - geom.edge_offsets[m0])
    block[n:].zero_()  # padding rows
    if n == 0:
        return 0
    vec = geom.edge_vec(m0, m1, compute_dtype)  # [n, 3]
    rows = block[:n]  # [n, S] view, filled in place
    with torch.no_grad():
        values = backend.compute(vec, meta["max_degree"], dtype=out_dtype, out=rows)
    if values.shape != (n, S):
        raise Se3tError(f"basis backend returned shape {tuple(values.shape)}, expected {(n, S)}")
    if values.data_ptr() != rows.data_ptr():
        rows.copy_(values)
    return n


class ShardFiller:
    """Computes and writes whole shards (units), one after the other, two in flight.

    Chunk-level parallelism: each worker computes a chunk with one torch thread and encodes it
    (torch, blosc, zstd and crc32c release the GIL). Independent chunks never wait on each
    other, unlike torch's intra-op threads, whose barriers crawl when a shared machine
    deschedules one of them. Up to two units are in flight: the workers fill one unit's buffer
    while the main thread writes the previous unit (one writev + rename). Use as a context
    manager: torch's thread count is set to 1 inside and restored on exit.
    """

    def __init__(
        self,
        path: Path,
        meta: dict[str, Any],
        geom: Geometry,
        chunk_mols: np.ndarray,
        backend: BasisBackend,
        claims: Claims,
        receipt: dict[str, Any],
        *,
        total_edges: int,
        num_workers: int | None,
        progress: bool,
    ) -> None:
        self.meta, self.geom, self.chunk_mols = meta, geom, chunk_mols
        self.backend, self.claims, self.receipt = backend, claims, receipt
        self.arr = zarr.open_array(str(path / "basis"), mode="r+")
        self.codec = ShardCodec(self.arr, path, meta)
        self.workers = max(1, int(num_workers or torch.get_num_threads()))
        self.ce = meta["chunk_edges"]
        self.buffers = [
            torch.empty(
                (meta["chunks_per_shard"] * self.ce, meta["basis_size"]),
                dtype=DTYPES[meta["dtype"]],
            )
            for _ in range(2)
        ]
        self.turn = 0
        self.inflight: list[tuple[int, list[cf.Future], np.ndarray]] = []  # at most one waits
        self.bar = tqdm(
            total=total_edges,
            unit="edge",
            unit_scale=True,
            disable=not progress,
            desc=f"basis {meta['key'][:8]} shard {receipt['shard']}",
            mininterval=1.0,
        )

    def __enter__(self) -> ShardFiller:
        keep_freed_memory()
        self.torch_threads = torch.get_num_threads()
        self.pool = cf.ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="basis")
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.claims.release_all()  # after a failure: the shards in flight are free again
        torch.set_num_threads(self.torch_threads)
        self.bar.close()

    def _chunk_job(self, c: int, block: Tensor) -> tuple[int, list[Any] | None]:
        ne = compute_chunk(self.geom, self.meta, self.chunk_mols, c, self.backend, block)
        return ne, self.codec.encode(block.numpy()) if self.codec.supported else None

    def submit(self, u: int) -> None:
        """Start computing unit ``u`` (its claim is held), writing the previous one meanwhile."""
        c0, c1 = unit_range(self.meta, u)
        buf = self.buffers[self.turn]  # free: the unit that last used it was written by flush()
        self.turn = 1 - self.turn
        ce = self.ce
        futures = [
            self.pool.submit(self._chunk_job, c, buf[(c - c0) * ce : (c - c0 + 1) * ce])
            for c in range(c0, c1)
        ]
        self.flush()  # the previous unit, while the workers compute this one
        self.inflight.append((u, futures, buf[: (c1 - c0) * ce].numpy()))

    def flush(self) -> None:
        """Wait for the unit in flight, write it and release its claim."""
        if not self.inflight:
            return
        u, futures, data = self.inflight.pop()
        results = [f.result() for f in futures]
        if self.codec.supported:
            self.codec.write(u, [enc for _, enc in results])  # type: ignore[misc]
        else:  # a codec chain the fast writer does not know: Zarr's own (slower) path
            c0, c1 = unit_range(self.meta, u)
            with zarr.config.set({"array.write_empty_chunks": True}):
                self.arr[c0 * self.ce : c1 * self.ce] = data
        self.claims.release(u)
        ne = sum(e for e, _ in results)
        self.receipt["chunks_computed"] += len(futures)
        self.receipt["edges_computed"] += ne
        self.bar.update(ne)
