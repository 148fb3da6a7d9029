"""The basis store reader: :func:`open_basis` checks a store against a run's settings and
returns a :class:`BasisStore`, whose ``gather`` serves a batch's bases from memory or from an
LRU cache of decoded chunks."""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from torch import Tensor

from se3t.basis.codec import ShardCodec
from se3t.basis.key import DTYPES, BasisBackend, default_backend, dtype_name, key_fields
from se3t.basis.layout import (
    open_group,
    read_checksums_bytes,
    store_meta,
    unit_exists,
    unit_file,
)
from se3t.basis.manifest import read_manifest
from se3t.basis.sampler import ChunkShuffleBatchSampler
from se3t.basis.verification import index_problems
from se3t.errors import InputError
from se3t.location import Location

# the package's logger, as before the split, so that settings made for it still apply
log = logging.getLogger(__package__)


class BasisStore:
    """A complete basis store opened read-only (see :func:`open_basis`).

    ``gather(index)`` returns the bases of a batch's edges. Two read modes:

    - ``memory``: all rows are read once into one tensor; a batch is one ``index_select``
      (any sampling order is fast). Chosen by ``auto`` when the store fits in a third of the
      available RAM.
    - ``chunks``: decoded chunks are kept in an LRU cache of ``cache_chunks`` entries; random
      molecules cost a chunk decode each, so pair it with :meth:`batch_sampler`, which draws
      batches chunk by chunk (see its docstring for the effect on sampling).
    """

    def __init__(
        self,
        where: str,
        group: zarr.Group,
        meta: dict[str, Any],
        *,
        read: str = "auto",
        cache_chunks: int = 32,
    ) -> None:
        self.where = where
        self.meta = meta
        self.key: str = meta["key"]
        self.max_degree: int = meta["max_degree"]
        self.dtype: torch.dtype = DTYPES[meta["dtype"]]
        self.basis_size: int = meta["basis_size"]
        self.chunk_edges: int = meta["chunk_edges"]
        self.num_molecules: int = meta["num_molecules"]
        self.num_edges: int = meta["num_edges"]
        self._array = group["basis"]
        self.row_start = _index_array(where, group, "row_start")
        self.edge_count = _index_array(where, group, "edge_count")
        self.chunk_mols = _index_array(where, group, "chunk_mols")
        self.molecule_chunk = self.row_start // self.chunk_edges  # [M] chunk of each molecule
        self.cache_chunks = max(1, int(cache_chunks))
        self._lru: OrderedDict[int, int] = OrderedDict()  # chunk -> slab slot, LRU first
        self._slab: Tensor | None = None
        self._free: list[int] = []
        self._full: Tensor | None = None
        self._out: Tensor | None = None  # gather's output buffer, reused when released
        self._warned = False
        nbytes = meta["num_rows"] * self.basis_size * torch.empty((), dtype=self.dtype).itemsize
        self.nbytes = nbytes
        if read == "auto":
            import psutil

            read = "memory" if nbytes <= psutil.virtual_memory().available / 3 else "chunks"
        if read not in ("memory", "chunks"):
            raise InputError(f"basis read mode {read!r} is not one of ['auto', 'memory', 'chunks']")
        self.read = read
        local = not Location.parse(where).remote
        codec = ShardCodec(self._array, Path(where), meta) if local else None
        self._codec = codec if codec is not None and codec.supported else None
        if read == "memory":
            self._full = self._read_all()

    def _read_all(self) -> Tensor:
        """[num_rows, S] the whole store: chunks decoded straight into one tensor by
        ``torch.get_num_threads()`` threads (the decompressors release the GIL)."""
        if self._codec is None:
            return self._read_rows(0, self.meta["num_rows"], what="the store")
        full = torch.empty((self.meta["num_rows"], self.basis_size), dtype=self.dtype)
        ce = self.chunk_edges
        with cf.ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
            for _ in pool.map(
                lambda c: self._read_chunk_into(c, full[c * ce : (c + 1) * ce]),
                range(self.meta["num_chunks"]),
            ):
                pass
        return full

    def _read_chunk_into(self, c: int, out: Tensor) -> None:
        """Decode chunk ``c`` into ``out`` ([chunk_edges, S]); a damaged chunk raises
        InputError naming it."""
        ce = self.chunk_edges
        if self._codec is None:
            out.copy_(self._read_rows(c * ce, (c + 1) * ce, what=self.chunk_name(c)))
            return
        try:
            self._codec.read_into(c, out.numpy())
        except Exception as err:  # CRC32C mismatch, truncated file, failed decompression
            raise InputError(
                f"basis store {self.where!r}: {self.chunk_name(c)} cannot be read "
                f"({type(err).__name__}: {err}); the store is corrupt, run se3t basis verify on "
                "it and rebuild"
            ) from err

    def __repr__(self) -> str:
        return (
            f"BasisStore({self.where!r}, key={self.key}, degree={self.max_degree}, "
            f"dtype={self.meta['dtype']}, molecules={self.num_molecules}, read={self.read})"
        )

    def _read_rows(self, r0: int, r1: int, *, what: str) -> Tensor:
        try:
            data = self._array[r0:r1]
        except Exception as err:  # a damaged chunk fails its CRC32C or its decompression
            bad = self._bad_chunks(r0, r1)
            raise InputError(
                f"basis store {self.where!r}: {bad or what} cannot be read ({type(err).__name__}: "
                f"{err}); the store is corrupt, run se3t basis verify on it and rebuild"
            ) from err
        return torch.from_numpy(np.ascontiguousarray(data))

    def _bad_chunks(self, r0: int, r1: int) -> str:
        bad = []
        for c in range(r0 // self.chunk_edges, -(-r1 // self.chunk_edges)):
            try:
                self._array[c * self.chunk_edges : (c + 1) * self.chunk_edges]
            except Exception:
                bad.append(c)
        return ", ".join(self.chunk_name(c) for c in bad[:5])

    def chunk_name(self, c: int) -> str:
        """``chunk C (shard file basis/c/U/0, molecules a..b)``: how errors name a chunk."""
        u = c // self.meta["chunks_per_shard"]
        return (
            f"chunk {c} (file {unit_file(u)}, molecule rows {int(self.chunk_mols[c])}.."
            f"{int(self.chunk_mols[c + 1]) - 1})"
        )

    def _slots(self, needed: list[int]) -> dict[int, int] | None:
        """Slab slots of the chunks ``needed``, decoding missing ones into the slots of the
        least recently used chunks not needed now; None when they cannot all be held at once.

        The chunk cache is one ``[cache_chunks * chunk_edges, S]`` slab, so a batch is a single
        ``index_select`` from it (one copy, as in ``read=memory``)."""
        ce = self.chunk_edges
        if len(needed) > self.cache_chunks:
            return None
        if self._slab is None or self._slab.shape[0] != self.cache_chunks * ce:
            self._slab = torch.empty((self.cache_chunks * ce, self.basis_size), dtype=self.dtype)
            self._lru.clear()
            self._free = list(range(self.cache_chunks))
        want = set(needed)
        for c in needed:
            if c in self._lru:
                self._lru.move_to_end(c)
        for c in needed:
            if c in self._lru:
                continue
            if self._free:
                slot = self._free.pop()
            else:
                victim = next(k for k in self._lru if k not in want)
                slot = self._lru.pop(victim)
            self._read_chunk_into(c, self._slab[slot * ce : (slot + 1) * ce])
            self._lru[c] = slot
        return {c: self._lru[c] for c in needed}

    def chunk(self, c: int) -> Tensor:
        """[chunk_edges, S] decoded chunk ``c`` (a view of the cache, or of the whole store)."""
        ce = self.chunk_edges
        if self._full is not None:
            return self._full[c * ce : (c + 1) * ce]
        slot = self._slots([c])[c]  # type: ignore[index]
        return self._slab[slot * ce : (slot + 1) * ce]  # type: ignore[index]

    def rows(self, index: np.ndarray) -> np.ndarray:
        """[E_batch] store rows of the molecules' edges, in collate's order."""
        counts = self.edge_count[index]
        starts = self.row_start[index]
        total = int(counts.sum())
        # row of edge j of the batch = its molecule's start + j - (edges before that molecule)
        before = np.cumsum(counts) - counts
        return np.repeat(starts - before, counts) + np.arange(total, dtype=np.int64)

    def gather(self, index: Tensor | np.ndarray | Sequence[int]) -> Tensor:
        """[E_batch, basis_size] bases of the molecules ``index`` (dataset store rows), edges
        in ``collate``'s order: molecule by molecule, each in store order."""
        idx = np.asarray(index.cpu() if isinstance(index, Tensor) else index, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_molecules):
            raise InputError(
                f"basis store {self.where!r}: molecule row out of range 0..{self.num_molecules - 1}"
                f" (got {int(idx.min())}..{int(idx.max())}); is it built for this dataset?"
            )
        rows = self.rows(idx)
        if self._full is not None:
            return torch.index_select(
                self._full, 0, torch.from_numpy(rows), out=self._output(len(rows))
            )
        ce = self.chunk_edges
        counts = self.edge_count[idx]
        mol_chunk = self.molecule_chunk[idx]
        needed = np.unique(mol_chunk).tolist()
        slots = self._slots(needed)
        if slots is not None:
            slot = np.empty(len(idx), dtype=np.int64)
            for c, sl in slots.items():
                slot[mol_chunk == c] = sl
            # row r of chunk c sits at slot(c) * ce + (r - c * ce) in the slab
            src = rows + np.repeat((slot - mol_chunk) * ce, counts)
            return torch.index_select(
                self._slab,
                0,
                torch.from_numpy(src),  # type: ignore[arg-type]
                out=self._output(len(rows)),
            )
        # more chunks than the cache holds: decode each for this batch only
        if not self._warned:
            self._warned = True
            log.warning(
                "basis store %s: one batch needed %d chunks, more than the cache holds "
                "(read=chunks, cache_chunks=%d): random batches over a chunked store decode a "
                "chunk per molecule; use BasisStore.batch_sampler or read=memory "
                "(docs/basis.md)",
                self.where,
                len(needed),
                self.cache_chunks,
            )
        out = self._output(len(rows))
        ends = np.cumsum(counts)
        for c in needed:
            sel = np.nonzero(mol_chunk == c)[0]
            pos = np.concatenate([np.arange(ends[k] - counts[k], ends[k]) for k in sel])
            block = torch.empty((ce, self.basis_size), dtype=self.dtype)
            self._read_chunk_into(c, block)
            out[torch.from_numpy(pos)] = block.index_select(0, torch.from_numpy(rows[pos] - c * ce))
        return out

    def _output(self, n: int) -> Tensor:
        """[n, S] rows for a batch's bases: the buffer of an earlier batch when nothing holds it
        any more (no tensor, view, NumPy array or autograd graph: its storage's use count is
        back to this object's alone), else a new one.

        A fresh ~35 MB tensor per batch of 240 costs ~8,500 page faults, two thirds of gather's
        time (BENCHMARKS.md); reusing the buffer avoids them without ever overwriting bases a
        caller still has."""
        buf = self._out
        if buf is not None and buf.shape[0] >= n and _sole_owner(buf):
            return buf[:n]
        self._out = buf = torch.empty((n + n // 4, self.basis_size), dtype=self.dtype)
        return buf[:n]

    def batch_sampler(self, indices: np.ndarray | Sequence[int], batch_size: int, **kw: Any):
        """A chunk-aware batch sampler over dataset positions (see
        :class:`se3t.basis.sampler.ChunkShuffleBatchSampler`)."""
        idx = np.asarray(indices, dtype=np.int64)
        sampler = ChunkShuffleBatchSampler(self.molecule_chunk[idx], batch_size, **kw)
        # a batch at the seam of two windows touches both: keep two windows decoded
        self.cache_chunks = max(self.cache_chunks, 2 * sampler.buffer_chunks)
        return sampler


def _index_array(where: str, group: zarr.Group, name: str) -> np.ndarray:
    """One of the store's index arrays, or InputError naming its file."""
    try:
        return np.asarray(group[name][:], dtype=np.int64)
    except Exception as err:  # a damaged chunk fails its decompression
        raise InputError(
            f"basis store {where!r}: {name}/c/0 cannot be read ({type(err).__name__}: {err}); "
            "the store is corrupt, run se3t basis verify on it and rebuild"
        ) from None


def _sole_owner(t: Tensor) -> bool:
    """True when only ``t`` itself refers to its storage (no view of it lives anywhere)."""
    try:  # ``t``'s own reference + the temporary storage object of this call
        return torch._C._storage_Use_Count(t.untyped_storage()._cdata) <= 2
    except (AttributeError, RuntimeError):  # not in this torch: never reuse
        return False


def open_basis(
    manifest_or_store: str | os.PathLike | Location,
    *,
    dataset_fingerprint: str,
    max_degree: int,
    dtype: str | torch.dtype,
    read: str = "auto",
    cache_chunks: int = 32,
    backend: BasisBackend | None = None,
    local_cache: str | os.PathLike | None = None,
    storage_options: dict[str, Any] | None = None,
) -> BasisStore:
    """Open a complete basis store read-only, for a run manifest file or a store path/URL.

    Refuses (InputError naming the store and the field) a store that is missing, incomplete
    (never finalized), changed since the manifest was written, or built for another dataset
    fingerprint, degree, dtype, layout or basis code version. Readers never write.

    An ``s3://`` store is read through its verified copy in ``local_cache`` (filled on first
    use; see :mod:`.local_cache`), with ``storage_options`` for the object store; both may come
    with the Location instead.
    """
    given = Location.parse(
        manifest_or_store,
        "basis.manifest",
        storage_options=storage_options,
        local_cache=local_cache,
    )
    where, manifest = _resolve(given)
    group = open_group(where)
    meta = store_meta(group, where)
    backend = backend or default_backend()
    _check_settings(
        where, meta, key_fields(dataset_fingerprint, max_degree, dtype_name(dtype), backend)
    )
    checks = read_checksums_bytes(where)
    if checks is None:
        raise _incomplete(where, meta)
    if manifest is not None and hashlib.sha256(checks).hexdigest() != manifest["checksums_sha256"]:
        raise InputError(
            f"basis store {where!r} changed since manifest {str(manifest_or_store)!r} was "
            "written (checksums differ); rerun se3t basis finalize --manifest"
        )
    # the index arrays decide which rows a batch gets: a missing chunk of one reads as zeros
    bad = index_problems(where, group, meta)
    if bad:
        raise InputError(
            f"basis store {where!r} is damaged: {'; '.join(bad)}; run se3t basis verify on it "
            "and rebuild"
        )
    return BasisStore(where, group, meta, read=read, cache_chunks=cache_chunks)


def _resolve(given: Location) -> tuple[str, dict[str, Any] | None]:
    """The store to read (a local path or a URL) and the manifest that named it, if any. A
    store on an object store is read through its verified local copy."""
    manifest = None
    where = given
    if given.text.endswith(".json") or (not given.remote and given.path.is_file()):
        manifest = read_manifest(str(given))
        where = Location.parse(
            manifest["store"],
            f"manifest {str(given)!r} field 'store'",
            storage_options=given.storage_options,
            local_cache=given.local_cache,
        )
    if where.object_store:
        from se3t.basis.local_cache import read_through

        return str(read_through(where)), manifest
    return str(where if where.remote else where.path), manifest


def _check_settings(where: str, meta: dict[str, Any], want: dict[str, Any]) -> None:
    """Refuse a store built for another dataset, degree, dtype, layout or code version."""
    labels = {"dataset_fingerprint": "dataset", "max_degree": "max degree", "dtype": "dtype"}
    for k, v in want.items():
        if meta.get(k) != v:
            raise InputError(
                f"basis store {where!r} was built for {labels.get(k, k)} {meta.get(k)!r}, "
                f"this run needs {v!r}; it cannot be used (run se3t basis precompute for "
                "this dataset and settings)"
            )


def _incomplete(where: str, meta: dict[str, Any]) -> InputError:
    remote = Location.parse(where).remote
    present = None if remote else sum(unit_exists(Path(where), u) for u in range(meta["num_units"]))
    return InputError(
        f"basis store {where!r} is incomplete ({present} of {meta['num_units']} shards, not "
        "finalized); finish it with se3t basis precompute and se3t basis finalize"
    )
