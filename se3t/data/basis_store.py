"""The basis store: per-edge equivariant bases of a dataset, precomputed once into chunked Zarr.

The SE(3)-Transformer's basis for an edge depends only on the edge vector ``x = pos[dst] -
pos[src]``: for each pair of degrees ``(k, l)`` it is ``W_J^{lk}(x) = sum_m Q^{lk}_{Jm} Y_{Jm}(x /
|x|)`` for ``J = |k-l| .. k+l``. ``se3t.so3.basis.compute_basis_flat`` lays all pairs side by side
in one row of ``basis_size(max_degree)`` values (1,092 for degrees 0..3); this module stores those
rows for every edge of a dataset store.

Store layout (``CACHE/basis/KEY.zarr``, a Zarr v3 group):

- ``basis [R, S]``: the rows, chunked along edges ON MOLECULE BOUNDARIES: molecules are packed
  greedily into chunks of ``chunk_edges`` rows and each chunk is zero-padded to full length, so no
  molecule straddles two chunks (a batch touches whole chunks; padding costs ~1 % for QM9).
  ``chunks_per_shard`` chunks form one shard file (the sharding codec keeps the file count near
  one hundred for full QM9); a shard is the unit computed, written (atomic rename) and resumed.
  Every chunk carries a CRC32C, so a flipped byte fails loudly on read.
- ``row_start [M] int64``, ``edge_count [M] int32``: where molecule ``m``'s rows are.
- ``chunk_mols [C+1] int64``: the first molecule of each chunk.
- group attribute ``se3t_basis``: key, dataset fingerprint and path, settings, plan, creator.
- ``checksums.json`` (written by :func:`finalize`): sha256 of every shard file. Its presence
  marks the store complete; readers refuse a store without it.

Edges are in the dataset's store order (molecule by molecule, each molecule's edges in the order
of ``src/dst[edge_offsets[m]:edge_offsets[m+1]]``), the order ``se3t.data.collate`` emits, so
``BasisStore.gather(batch.index)`` lines up with a batch's edges.

Faults: shards are written by atomic rename, so a killed precompute leaves only whole shards and
a rerun computes the missing ones; concurrent precomputes of one key create the skeleton by an
atomic folder rename (one wins, the other adopts it) and claim shards with ``O_EXCL`` files, so
they split the work and both finish with one valid store.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import os
import random
import shutil
import socket
import stat
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from torch import Tensor
from zarr.codecs import BloscCodec, Crc32cCodec, GzipCodec, ZstdCodec

from se3t.data.basis_cache import (
    CHECKSUMS_FILE,
    STORE_SUFFIX,
    atomic_write_bytes,
    cache_basis_dir,
    ensure_writable_cache,
    is_url,
    local_path,
    who,
)
from se3t.errors import InputError, Se3tError

__all__ = [
    "BasisBackend",
    "BasisSettings",
    "BasisStore",
    "STORE_FORMAT",
    "VerifyReport",
    "basis_key",
    "default_backend",
    "finalize",
    "open_basis",
    "plan_chunks",
    "precompute",
    "read_manifest",
    "store_meta",
    "store_path",
    "verify",
    "write_manifest",
]

log = logging.getLogger(__name__)

STORE_FORMAT = 1  # bump when this module's on-disk layout changes
MANIFEST_KIND = "se3t-basis-manifest"
COMPRESSORS = ("none", "zstd", "blosc-lz4", "blosc-zstd", "gzip")
_DTYPES = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64}
# per stored dtype: the tolerance of verify's recomputation (storage rounding plus the
# difference of batched float arithmetic between runs)
_VERIFY_ATOL = {"float16": 4e-3, "float32": 1e-4, "float64": 1e-9}


# --------------------------------------------------------------------------------------------
# settings, backend, key


@dataclass(frozen=True)
class BasisSettings:
    """How a store is built. ``max_degree`` and ``dtype`` change the values (and the key); the
    rest changes only the storage and is recorded in the store."""

    max_degree: int = 3
    dtype: str = "float32"
    compressor: str = "blosc-lz4"  # fastest to write and read; zstd is 10 % smaller
    compression_level: int | None = None
    chunk_edges: int = 4096
    chunks_per_shard: int = 8

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise InputError(f"basis dtype {self.dtype!r} is not one of {list(_DTYPES)}")
        if self.compressor not in COMPRESSORS:
            raise InputError(f"basis compressor {self.compressor!r} is not one of {COMPRESSORS}")
        if self.max_degree < 0 or self.chunk_edges <= 0 or self.chunks_per_shard <= 0:
            raise InputError(
                "basis settings: max_degree >= 0, chunk_edges > 0 and chunks_per_shard > 0 "
                f"required, got {self.max_degree}, {self.chunk_edges}, {self.chunks_per_shard}"
            )

    @classmethod
    def from_config(cls, basis_cfg: Any) -> BasisSettings:
        return cls(
            max_degree=int(basis_cfg.max_degree),
            dtype=str(basis_cfg.dtype),
            compressor=str(basis_cfg.compressor),
            compression_level=basis_cfg.compression_level,
            chunk_edges=int(basis_cfg.chunk_edges),
            chunks_per_shard=int(basis_cfg.chunks_per_shard),
        )


@dataclass(frozen=True)
class BasisBackend:
    """The basis maths the store precomputes with (``se3t.so3.basis`` unless injected)."""

    # (edge_vec [E,3], max_degree, dtype=None, out=None) -> [E, S]; fills ``out`` when given
    compute: Callable[..., Tensor]
    basis_size: Callable[[int], int]
    layout_version: int
    code_version: str  # hash of the code the values come from


def _so3_code_version() -> str:
    """sha256 over the source of ``se3t/so3/basis.py`` (the module every stored value comes
    from) and e3nn's version: any change to the basis maths (or the package it takes spherical
    harmonics and Clebsch-Gordan tensors from) gives new keys. Conservative on purpose: a stale
    basis silently reused is worse than a recompute. Layouts derived from the flat basis at run
    time (``se3t.so3.blocks``) and ``Fiber`` are not hashed: they do not change stored values."""
    import e3nn

    from se3t.so3 import basis as so3_basis

    h = hashlib.sha256()
    h.update(b"basis.py")
    h.update(Path(so3_basis.__file__).read_bytes())
    h.update(f"e3nn={e3nn.__version__}".encode())
    return h.hexdigest()[:16]


def default_backend() -> BasisBackend:
    try:
        from se3t.so3 import basis as so3_basis
    except ImportError as err:
        raise Se3tError(f"the basis maths (se3t.so3.basis) cannot be imported: {err}") from err
    return BasisBackend(
        compute=so3_basis.compute_basis_flat,
        basis_size=so3_basis.basis_size,
        layout_version=int(so3_basis.BASIS_LAYOUT_VERSION),
        code_version=_so3_code_version(),
    )


def _key_fields(
    dataset_fingerprint: str, max_degree: int, dtype: str, backend: BasisBackend
) -> dict[str, Any]:
    return {
        "dataset_fingerprint": str(dataset_fingerprint),
        "max_degree": int(max_degree),
        "dtype": str(dtype),
        "basis_size": int(backend.basis_size(max_degree)),
        "layout_version": int(backend.layout_version),
        "code_version": backend.code_version,
        "store_format": STORE_FORMAT,
    }


def basis_key(
    dataset_fingerprint: str,
    max_degree: int,
    dtype: str,
    *,
    backend: BasisBackend | None = None,
) -> str:
    """The store's content address: sha256 (24 hex digits) of everything the stored values
    depend on: the dataset fingerprint, max degree, dtype, the basis layout version, the basis
    code's version and this store's format. Compressor and chunking are not in it: they change
    the bytes, never the values."""
    fields_ = _key_fields(dataset_fingerprint, max_degree, dtype, backend or default_backend())
    blob = json.dumps(fields_, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def store_path(cache: str | os.PathLike, key: str) -> str:
    return f"{cache_basis_dir(cache)}/{key}{STORE_SUFFIX}"


# --------------------------------------------------------------------------------------------
# dataset geometry


@dataclass
class _Geometry:
    """The arrays of a dataset store that the bases depend on, read once into memory."""

    path: str
    fingerprint: str
    pos: np.ndarray  # [A, 3] float32
    atom_offsets: np.ndarray  # [M+1] int64
    edge_offsets: np.ndarray  # [M+1] int64
    src: np.ndarray  # [E] int32 (local)
    dst: np.ndarray  # [E] int32 (local)

    @property
    def num_molecules(self) -> int:
        return len(self.edge_offsets) - 1

    @property
    def num_edges(self) -> int:
        return int(self.edge_offsets[-1])

    def edge_vec(self, m0: int, m1: int, dtype: torch.dtype) -> Tensor:
        """[E', 3] ``pos[dst] - pos[src]`` of molecules ``m0 .. m1-1``, in store order, computed
        as ``collate`` does (positions cast to ``dtype``, then subtracted)."""
        e0, e1 = int(self.edge_offsets[m0]), int(self.edge_offsets[m1])
        counts = np.diff(self.edge_offsets[m0 : m1 + 1])
        base = np.repeat(self.atom_offsets[m0:m1], counts)
        s = torch.from_numpy(base + self.src[e0:e1].astype(np.int64))
        d = torch.from_numpy(base + self.dst[e0:e1].astype(np.int64))
        pos = torch.from_numpy(self.pos)
        return pos[d].to(dtype) - pos[s].to(dtype)

    def edge_vec_of(self, edges: np.ndarray, dtype: torch.dtype) -> Tensor:
        """[K, 3] edge vectors of the given global edge indices."""
        mol = np.searchsorted(self.edge_offsets, edges, side="right") - 1
        base = self.atom_offsets[mol]
        pos = torch.from_numpy(self.pos)
        s = torch.from_numpy(base + self.src[edges].astype(np.int64))
        d = torch.from_numpy(base + self.dst[edges].astype(np.int64))
        return pos[d].to(dtype) - pos[s].to(dtype)


def _load_geometry(path: str | os.PathLike) -> _Geometry:
    """The dataset store's geometry (``se3t.data.store.open_dataset``, read-only)."""
    from se3t.data.store import open_dataset

    ds = open_dataset(path)
    return _Geometry(
        path=str(path),
        fingerprint=ds.fingerprint,
        pos=np.array(ds.pos, dtype=np.float32, copy=True),  # writable: torch.from_numpy
        atom_offsets=np.asarray(ds.atom_offsets, dtype=np.int64),
        edge_offsets=np.asarray(ds.edge_offsets, dtype=np.int64),
        src=np.asarray(ds.src),
        dst=np.asarray(ds.dst),
    )


# --------------------------------------------------------------------------------------------
# chunk plan


def plan_chunks(edge_counts: np.ndarray, chunk_edges: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack molecules in order into chunks of at most ``chunk_edges`` rows, never splitting one.

    Returns ``chunk_mols [C+1]`` (first molecule of each chunk, then M) and ``row_start [M]``
    (the first row of each molecule in the padded ``[C * chunk_edges, S]`` array). Raises
    InputError when a molecule alone has more edges than a chunk holds.
    """
    counts = np.asarray(edge_counts, dtype=np.int64)
    if counts.size and counts.max() > chunk_edges:
        m = int(counts.argmax())
        raise InputError(
            f"molecule row {m} has {int(counts[m])} edges, more than basis.chunk_edges="
            f"{chunk_edges}; raise basis.chunk_edges"
        )
    starts = [0]
    row_start = np.empty(len(counts), dtype=np.int64)
    fill = 0
    chunk = 0
    for m, n in enumerate(counts.tolist()):
        if fill + n > chunk_edges:
            chunk += 1
            fill = 0
            starts.append(m)
        row_start[m] = chunk * chunk_edges + fill
        fill += n
    starts.append(len(counts))
    if len(counts) == 0:
        starts = [0, 0]
    return np.asarray(starts, dtype=np.int64), row_start


# --------------------------------------------------------------------------------------------
# the store on disk


def _codecs(settings: BasisSettings, itemsize: int) -> list[Any]:
    level = settings.compression_level
    if settings.compressor == "none":
        comp: list[Any] = []
    elif settings.compressor == "zstd":
        # level 1: 3.4x faster to write than level 3 for 1.7 % more bytes (BENCHMARKS.md)
        comp = [ZstdCodec(level=1 if level is None else level)]
    elif settings.compressor == "blosc-lz4":
        comp = [
            BloscCodec(
                cname="lz4", clevel=5 if level is None else level, shuffle="shuffle",
                typesize=itemsize,
            )
        ]
    elif settings.compressor == "blosc-zstd":
        comp = [
            BloscCodec(
                cname="zstd", clevel=3 if level is None else level, shuffle="shuffle",
                typesize=itemsize,
            )
        ]
    else:
        comp = [GzipCodec(level=5 if level is None else level)]
    return comp + [Crc32cCodec()]  # every chunk checksummed: a flipped byte fails on read


def _open_group(path_or_url: str, *, read_only: bool = True) -> zarr.Group:
    try:
        if is_url(path_or_url):
            from zarr.storage import FsspecStore

            store = FsspecStore.from_url(path_or_url, read_only=read_only)
        else:
            from zarr.storage import LocalStore

            p = local_path(path_or_url)
            if not (p / "zarr.json").is_file():
                raise FileNotFoundError(str(p / "zarr.json"))
            store = LocalStore(p, read_only=read_only)
        return zarr.open_group(store=store, mode="r" if read_only else "r+")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, NotADirectoryError) as err:
        raise InputError(
            f"basis store {path_or_url!r} does not exist (or is not a Zarr group)"
        ) from err


def store_meta(group: zarr.Group, where: str) -> dict[str, Any]:
    meta = group.attrs.get("se3t_basis")
    if not isinstance(meta, dict) or meta.get("store_format") != STORE_FORMAT:
        raise InputError(f"basis store {where!r} is not a se3t basis store (format {STORE_FORMAT})")
    return dict(meta)


def _unit_file(u: int) -> str:
    return f"basis/c/{u}/0"  # the shard (or chunk) key of row block u in the 2-D chunk grid


def _unit_range(meta: dict[str, Any], u: int) -> tuple[int, int]:
    """Chunks ``c0 .. c1-1`` of unit (shard) ``u``."""
    c0 = u * meta["chunks_per_shard"]
    return c0, min(meta["num_chunks"], c0 + meta["chunks_per_shard"])


def _create_skeleton(
    path: Path, meta: dict[str, Any], chunk_mols: np.ndarray, row_start: np.ndarray,
    edge_count: np.ndarray, settings: BasisSettings,
) -> bool:
    """Create the empty store by building it in a temporary folder and renaming it into place.
    Returns False when another process created it first (the rename finds a full folder)."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
    dtype = np.dtype(meta["dtype"])
    ce, cps = meta["chunk_edges"], meta["chunks_per_shard"]
    try:
        group = zarr.open_group(str(tmp), mode="w", attributes={"se3t_basis": meta})
        group.create_array(
            "basis",
            shape=(meta["num_rows"], meta["basis_size"]),
            chunks=(ce, meta["basis_size"]),
            shards=None if cps == 1 else (ce * cps, meta["basis_size"]),
            dtype=dtype,
            compressors=_codecs(settings, dtype.itemsize),
            fill_value=0,
            dimension_names=("row", "basis"),
        )
        group.create_array("chunk_mols", data=chunk_mols, chunks=(max(1, len(chunk_mols)),))
        group.create_array("row_start", data=row_start, chunks=(max(1, len(row_start)),))
        group.create_array("edge_count", data=edge_count, chunks=(max(1, len(edge_count)),))
        os.makedirs(tmp / "basis" / "c", exist_ok=True)
        try:
            os.rename(tmp, path)
            return True
        except OSError as err:
            if path.is_dir():  # ENOTEMPTY/EEXIST: someone else created it first
                return False
            raise InputError(f"basis store {str(path)!r} cannot be created: {err}") from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class _Claims:
    """Per-shard claim files (``O_EXCL``) so that processes sharing a store split the work.

    A claim is stale when its process is gone (same host) or it is older than ``timeout_s`` (a
    shard takes seconds; another host's process cannot be probed); stale claims are taken over.
    """

    def __init__(self, store: Path, timeout_s: float) -> None:
        self.dir = store / ".claims"
        self.timeout_s = timeout_s
        self.host = socket.gethostname()
        self.dir.mkdir(exist_ok=True)

    def _file(self, u: int) -> Path:
        return self.dir / f"{u}.claim"

    def take(self, u: int) -> bool:
        path = self._file(u)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._stale(path):
                    path.unlink(missing_ok=True)
                    continue
                return False
            with os.fdopen(fd, "w") as fh:
                json.dump({"host": self.host, "pid": os.getpid(), "time": time.time()}, fh)
            return True
        return False

    def _stale(self, path: Path) -> bool:
        try:
            info = json.loads(path.read_text())
            age = time.time() - path.stat().st_mtime
        except (OSError, ValueError):
            return True  # unreadable or half-written by a killed process
        if info.get("host") == self.host:
            try:
                os.kill(int(info["pid"]), 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                pass
            return False  # alive: it is computing the shard
        return age > self.timeout_s

    def release(self, u: int) -> None:
        self._file(u).unlink(missing_ok=True)


def _unit_exists(path: Path, u: int) -> bool:
    return (path / _unit_file(u)).is_file()


def _keep_freed_memory() -> None:
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
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD (32 MB: glibc's upper bound)
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc (musl): keep the defaults
        pass


def _compute_chunk(
    geom: _Geometry, meta: dict[str, Any], chunk_mols: np.ndarray, c: int, backend: BasisBackend,
    block: Tensor,
) -> int:
    """Fill ``block`` ([chunk_edges, S], a view of a unit buffer) with the padded rows of chunk
    ``c``; return its number of real edges.

    Within a chunk the molecules' rows are consecutive from the chunk's first row (padding only
    at its end), so the backend fills the chunk's rows in place (no copy, no new allocation) and
    only the padding is zeroed."""
    S = meta["basis_size"]
    out_dtype = _DTYPES[meta["dtype"]]
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


class _ShardCodec:
    """Writes and reads unit (shard) files in the exact bytes of Zarr's sharding codec, faster.

    Zarr's own path (``arr[r0:r1] = data``) copies every chunk several times through its async
    codec pipeline (0.78 s for a 143 MB shard here, of which half is page-fault system time).
    This encodes each inner chunk straight from the caller's buffer with the array's own
    compressor object (``bytes`` little-endian -> compressor -> ``crc32c``, as the array metadata
    says), builds the shard index (``uint64`` (offset, length) pairs in chunk order, then its
    CRC32C, at the end) and writes the file with one ``writev`` to a temporary name and an
    atomic rename, as Zarr's ``LocalStore`` does. Chunks past the array's end in a partial last
    shard are left empty in the index, as Zarr leaves them.
    ``tests/data/test_basis_store.py`` checks the files are byte-identical to Zarr's.

    Reading (:meth:`read_into`) is the reverse for one chunk: the shard index (read once per
    shard, its CRC32C checked), one ``pread`` of the chunk's bytes, its CRC32C checked, then
    decompressed straight into the caller's buffer (a slot of the chunk cache, or the rows of
    the whole store), with no intermediate array.

    ``supported`` is False for codec chains it does not know; callers then go through Zarr.
    """

    def __init__(self, arr: zarr.Array, path: Path, meta: dict[str, Any]) -> None:
        from zarr.codecs import BytesCodec, ShardingCodec

        self.path = path
        self.ce, self.cps = meta["chunk_edges"], meta["chunks_per_shard"]
        self.S = meta["basis_size"]
        codecs = tuple(arr.metadata.codecs)
        self.sharded = len(codecs) == 1 and isinstance(codecs[0], ShardingCodec)
        inner = codecs[0].codecs if self.sharded else codecs
        little = lambda c: isinstance(c, BytesCodec) and str(  # noqa: E731
            getattr(c.endian, "value", c.endian)) == "little"
        ok = (len(inner) in (2, 3) and little(inner[0]) and isinstance(inner[-1], Crc32cCodec)
              and np.dtype(meta["dtype"]).byteorder in ("=", "<", "|")
              and sys.byteorder == "little")
        self._compress: Callable[[np.ndarray], bytes] | None = None
        self._decompress: Callable[..., Any] | None = None
        self._index: dict[int, np.ndarray] = {}  # unit -> [cps, 2] (offset, length), read once
        if ok and len(inner) == 3:
            comp = inner[1]
            if isinstance(comp, BloscCodec):
                num = comp._blosc_codec
            elif isinstance(comp, ZstdCodec):
                num = comp._zstd_codec
            elif isinstance(comp, GzipCodec):
                num = comp._gzip_codec
            else:
                ok = False
            if ok:
                self._compress, self._decompress = num.encode, num.decode
        if ok and self.sharded:
            sc = codecs[0]
            idx = tuple(sc.index_codecs)
            ok = (tuple(sc.chunk_shape) == (self.ce, self.S)
                  and tuple(arr.metadata.chunk_grid.chunk_shape) == (self.ce * self.cps, self.S)
                  and str(getattr(sc.index_location, "value", sc.index_location)) == "end"
                  and len(idx) == 2 and little(idx[0]) and isinstance(idx[1], Crc32cCodec))
        self.supported = ok

    def encode(self, block: np.ndarray) -> list[Any]:
        """[ce, S] chunk -> its stored bytes: compressed (or raw) data, then 4 bytes CRC32C.
        Thread-safe; the compressors and the CRC release the GIL, so chunks encode in
        parallel."""
        import google_crc32c

        raw = block.reshape(-1).view(np.uint8)  # zero-copy: the chunk is a contiguous row block
        data = self._compress(raw) if self._compress is not None else raw
        crc = np.array([google_crc32c.value(data)], dtype=np.uint32).tobytes()
        return [data, crc]

    def _shard_index(self, u: int) -> np.ndarray:
        import google_crc32c

        index = self._index.get(u)
        if index is None:
            nbytes = self.cps * 16 + 4
            with open(self.path / _unit_file(u), "rb") as fh:
                fh.seek(-nbytes, os.SEEK_END)
                raw = fh.read(nbytes)
            if len(raw) != nbytes or np.frombuffer(raw[-4:], dtype="<u4")[0] != (
                    google_crc32c.value(raw[:-4])):
                raise ValueError("the shard index fails its CRC32C")
            index = np.frombuffer(raw[:-4], dtype="<u8").reshape(self.cps, 2)
            self._index[u] = index
        return index

    def read_into(self, c: int, out: np.ndarray) -> None:
        """Decode chunk ``c`` into ``out`` ([ce, S], C-contiguous, the array's dtype). Raises
        (OSError, ValueError, RuntimeError) on a missing file or a damaged chunk."""
        import google_crc32c

        u, k = divmod(c, self.cps) if self.sharded else (c, 0)
        if self.sharded:
            offset, length = (int(x) for x in self._shard_index(u)[k])
            if offset == 2**64 - 1:  # never written: the fill value
                out[...] = 0
                return
        else:
            offset, length = 0, (self.path / _unit_file(u)).stat().st_size
        fd = os.open(self.path / _unit_file(u), os.O_RDONLY)
        try:
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        if len(data) != length or length < 4:
            raise ValueError(f"chunk is {len(data)} bytes, the index says {length}")
        body = np.frombuffer(data, dtype=np.uint8)[:-4]  # a view (CRC32C takes no memoryview)
        if np.frombuffer(data[-4:], dtype="<u4")[0] != google_crc32c.value(body):
            raise ValueError("Stored and computed CRC32C checksums do not match")
        dest = out.reshape(-1).view(np.uint8)
        if self._decompress is None:
            if len(body) != dest.nbytes:
                raise ValueError(f"chunk holds {len(body)} bytes, expected {dest.nbytes}")
            dest[:] = np.frombuffer(body, dtype=np.uint8)
        else:
            self._decompress(body, out=dest)

    def write(self, u: int, chunks: list[list[Any]]) -> int:
        """Write unit ``u`` from its encoded chunks (``encode`` of each, in order, at most
        ``chunks_per_shard``); returns the file's size."""
        import google_crc32c

        bufs: list[Any] = []
        if not self.sharded:
            bufs = list(chunks[0])
        else:
            # chunks past the array's end (partial last shard) stay empty (2^64-1), as in Zarr
            index = np.full((self.cps, 1, 2), 2**64 - 1, dtype="<u8")
            offset = 0
            for k, parts in enumerate(chunks):
                size = sum(len(memoryview(p).cast("B")) for p in parts)
                index[k, 0] = (offset, size)
                offset += size
                bufs += parts
            ib = index.tobytes()
            bufs += [ib, np.array([google_crc32c.value(ib)], dtype=np.uint32).tobytes()]
        target = self.path / _unit_file(u)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{uuid.uuid4().hex}.partial")
        views = [memoryview(b).cast("B") for b in bufs]
        total = sum(len(v) for v in views)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                while views:  # one writev; loop only if the kernel wrote part of it
                    done_now = os.writev(fd, views[:1024])
                    while views and done_now >= len(views[0]):
                        done_now -= len(views[0])
                        views.pop(0)
                    if views and done_now:
                        views[0] = views[0][done_now:]
            finally:
                os.close(fd)
            os.replace(tmp, target)  # atomic: readers see no shard or the whole shard
        finally:
            tmp.unlink(missing_ok=True)
        return total


_KEY_CHECK = ("key", "dataset_fingerprint", "max_degree", "dtype", "basis_size",
              "layout_version", "code_version")


def _check_same_store(
    meta: dict[str, Any], existing: dict[str, Any], where: str,
    fields: Sequence[str] = (*_KEY_CHECK, "num_molecules", "num_edges"),
) -> None:
    for k in fields:
        if existing.get(k) != meta.get(k):
            raise InputError(
                f"basis store {where!r} exists but was built with {k}={existing.get(k)!r}, "
                f"not {meta.get(k)!r}; remove it (se3t basis gc) or use another cache"
            )


def _parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int]:
    if shard is None:
        return 0, 1
    if isinstance(shard, str):
        try:
            i, n = (int(x) for x in shard.split("/"))
        except ValueError as err:
            raise InputError(f"--shard {shard!r} is not of the form I/N (e.g. 0/4)") from err
    else:
        i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise InputError(f"--shard {i}/{n}: need 0 <= I < N")
    return i, n


def _iso(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def precompute(
    dataset: str | os.PathLike,
    cache: str | os.PathLike,
    settings: BasisSettings | None = None,
    *,
    shard: str | tuple[int, int] | None = None,
    backend: BasisBackend | None = None,
    progress: bool = True,
    claim_timeout_s: float = 600.0,
    poll_s: float = 0.5,
    num_workers: int | None = None,
) -> dict[str, Any]:
    """Compute the bases of ``dataset``'s edges into ``CACHE/basis/KEY.zarr``; return a receipt.

    With ``shard="I/N"`` only the I-th of N contiguous slices of shards is computed (N cluster
    jobs fill one store; ``finalize`` then seals it). Shards already present are reused, so a
    rerun after a crash computes only what is missing, and a complete store costs nothing.
    Concurrent processes on one key split the shards through claim files and all succeed.

    ``num_workers`` threads (default: ``torch.get_num_threads()``, i.e. the cores torch would
    use) each compute and compress whole chunks with one torch thread; torch's thread count is
    restored on return.

    Receipt: ``key``, ``store``, ``shard``, ``chunks_computed``, ``chunks_reused``,
    ``chunks_by_others`` (computed meanwhile by a concurrent process), ``edges_computed``,
    ``seconds``, ``edges_per_s``, ``complete`` (the store was already finalized).
    """
    settings = settings or BasisSettings()
    backend = backend or default_backend()
    i, n = _parse_shard(shard)
    t_start = time.perf_counter()
    from se3t.data.store import fingerprint

    try:
        fp = fingerprint(dataset)  # the attributes only: a complete store needs nothing more
    except InputError:
        ensure_writable_cache(cache)  # an unusable cache is reported first
        raise
    key = basis_key(fp, settings.max_degree, settings.dtype, backend=backend)
    path = local_path(store_path(cache, key))
    receipt: dict[str, Any] = {
        "key": key, "store": str(path), "shard": f"{i}/{n}", "chunks_computed": 0,
        "chunks_reused": 0, "chunks_by_others": 0, "edges_computed": 0, "complete": False,
    }
    if (path / CHECKSUMS_FILE).is_file():
        meta = store_meta(_open_group(str(path)), str(path))
        _check_same_store({**_key_fields(fp, settings.max_degree, settings.dtype, backend),
                           "key": key}, meta, str(path), fields=_KEY_CHECK)
        units = range(meta["num_units"] * i // n, meta["num_units"] * (i + 1) // n)
        total = sum(_unit_range(meta, u)[1] - _unit_range(meta, u)[0] for u in units)
        receipt.update(chunks_total=total, chunks_reused=total, complete=True,
                       seconds=time.perf_counter() - t_start, edges_per_s=0.0)
        return receipt  # nothing to write: a complete store in a read-only cache is fine

    ensure_writable_cache(cache)  # before any work: a cache we cannot write fails now
    geom = _load_geometry(dataset)
    if not path.is_dir():
        edge_count = np.diff(geom.edge_offsets).astype(np.int32)
        chunk_mols, row_start = plan_chunks(edge_count, settings.chunk_edges)
        num_chunks = len(chunk_mols) - 1
        meta = {
            "store_format": STORE_FORMAT,
            **_key_fields(geom.fingerprint, settings.max_degree, settings.dtype, backend),
            "key": key,
            "dataset_path": os.path.abspath(str(dataset)),
            "num_molecules": geom.num_molecules,
            "num_edges": geom.num_edges,
            "compressor": settings.compressor,
            "compression_level": settings.compression_level,
            "chunk_edges": settings.chunk_edges,
            "chunks_per_shard": settings.chunks_per_shard,
            "num_chunks": num_chunks,
            "num_units": -(-num_chunks // settings.chunks_per_shard),
            "num_rows": num_chunks * settings.chunk_edges,
            "created": _iso(),
            "created_by": who(),
        }
        _create_skeleton(path, meta, chunk_mols, row_start, edge_count, settings)
    group = _open_group(str(path))
    meta = store_meta(group, str(path))
    _check_same_store(
        {**_key_fields(geom.fingerprint, settings.max_degree, settings.dtype, backend),
         "key": key, "num_molecules": geom.num_molecules, "num_edges": geom.num_edges},
        meta, str(path),
    )
    num_units = meta["num_units"]
    u_lo, u_hi = num_units * i // n, num_units * (i + 1) // n
    receipt["chunks_total"] = sum(_unit_range(meta, u)[1] - _unit_range(meta, u)[0]
                                  for u in range(u_lo, u_hi))
    nchunks = lambda u: _unit_range(meta, u)[1] - _unit_range(meta, u)[0]  # noqa: E731

    if (path / CHECKSUMS_FILE).is_file():  # finalized meanwhile by another process
        receipt.update(chunks_reused=receipt["chunks_total"], complete=True,
                       seconds=time.perf_counter() - t_start, edges_per_s=0.0)
        return receipt

    chunk_mols = np.asarray(group["chunk_mols"][:])
    arr = zarr.open_array(str(path / "basis"), mode="r+")
    claims = _Claims(path, claim_timeout_s)
    todo = [u for u in range(u_lo, u_hi) if not _unit_exists(path, u)]
    todo_set = set(todo)
    receipt["chunks_reused"] = sum(nchunks(u) for u in range(u_lo, u_hi) if u not in todo_set)
    total_edges = sum(
        int(geom.edge_offsets[chunk_mols[_unit_range(meta, u)[1]]]
            - geom.edge_offsets[chunk_mols[_unit_range(meta, u)[0]]])
        for u in todo
    )

    from tqdm.auto import tqdm

    bar = tqdm(total=total_edges, unit="edge", unit_scale=True, disable=not progress,
               desc=f"basis {key[:8]} shard {i}/{n}", mininterval=1.0)
    unit_writer = _ShardCodec(arr, path, meta)
    # Chunk-level parallelism: each worker computes a chunk with one torch thread and encodes
    # it (torch, blosc, zstd and crc32c release the GIL). Independent chunks never wait on each
    # other, unlike torch's intra-op threads, whose barriers crawl when a shared machine
    # deschedules one of them. Up to two units are in flight: the workers fill one unit's
    # buffer while the main thread writes the previous unit (one writev + rename).
    workers = max(1, int(num_workers or torch.get_num_threads()))
    torch_threads = torch.get_num_threads()
    pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="basis")
    ce, S = meta["chunk_edges"], meta["basis_size"]
    buffers = [torch.empty((meta["chunks_per_shard"] * ce, S), dtype=_DTYPES[meta["dtype"]])
               for _ in range(2)]
    turn = 0
    inflight: list[tuple[int, list[cf.Future], np.ndarray]] = []  # at most one unit waits

    def chunk_job(c: int, block: Tensor) -> tuple[int, list[Any] | None]:
        ne = _compute_chunk(geom, meta, chunk_mols, c, backend, block)
        return ne, unit_writer.encode(block.numpy()) if unit_writer.supported else None

    def flush() -> None:
        """Wait for the unit in flight, write it and release its claim."""
        if not inflight:
            return
        u, futures, data = inflight.pop()
        results = [f.result() for f in futures]
        if unit_writer.supported:
            unit_writer.write(u, [enc for _, enc in results])  # type: ignore[misc]
        else:  # a codec chain the fast writer does not know: Zarr's own (slower) path
            c0, c1 = _unit_range(meta, u)
            with zarr.config.set({"array.write_empty_chunks": True}):
                arr[c0 * ce : c1 * ce] = data
        claims.release(u)
        ne = sum(e for e, _ in results)
        receipt["chunks_computed"] += len(futures)
        receipt["edges_computed"] += ne
        bar.update(ne)

    def run_unit(u: int) -> None:
        nonlocal turn
        c0, c1 = _unit_range(meta, u)
        buf = buffers[turn]  # free: the unit that last used it was written by flush()
        turn = 1 - turn
        futures = [pool.submit(chunk_job, c, buf[(c - c0) * ce : (c - c0 + 1) * ce])
                   for c in range(c0, c1)]
        flush()  # the previous unit, while the workers compute this one
        inflight.append((u, futures, buf[: (c1 - c0) * ce].numpy()))

    _keep_freed_memory()
    torch.set_num_threads(1)
    try:
        deferred = []
        for u in todo:
            if _unit_exists(path, u):
                receipt["chunks_by_others"] += nchunks(u)
            elif claims.take(u):
                run_unit(u)
            else:
                deferred.append(u)
        # shards another live process holds: wait for them, or take them over when it dies
        while deferred:
            still = []
            for u in deferred:
                if _unit_exists(path, u):
                    receipt["chunks_by_others"] += nchunks(u)
                elif claims.take(u):
                    if _unit_exists(path, u):  # finished between the check and the claim
                        claims.release(u)
                        receipt["chunks_by_others"] += nchunks(u)
                    else:
                        run_unit(u)
                else:
                    still.append(u)
            deferred = still
            if deferred:
                flush()  # ours first: others may be waiting for it
                time.sleep(poll_s)
        flush()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(torch_threads)
        bar.close()
    seconds = time.perf_counter() - t_start
    receipt["seconds"] = seconds
    receipt["edges_per_s"] = receipt["edges_computed"] / seconds if seconds > 0 else 0.0
    return receipt


# --------------------------------------------------------------------------------------------
# finalize, manifest


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _make_read_only(path: Path) -> None:
    for dirpath, dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(dirpath, name)
            os.chmod(full, os.stat(full).st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        del dirs
    for dirpath, _dirs, _files in os.walk(path, topdown=False):
        os.chmod(dirpath, os.stat(dirpath).st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def finalize(store: str | os.PathLike, *, progress: bool = False) -> dict[str, Any]:
    """Seal a store: check every shard is present, write ``checksums.json`` (sha256 per shard
    file), remove claims and temporary files, and make the store read-only. Idempotent: a
    complete store is left as it is. Returns the checksums record."""
    path = local_path(store)
    group = _open_group(str(path))
    meta = store_meta(group, str(path))
    done = path / CHECKSUMS_FILE
    if done.is_file():
        return json.loads(done.read_text())
    missing = [u for u in range(meta["num_units"]) if not _unit_exists(path, u)]
    if missing:
        names = ", ".join(_unit_file(u) for u in missing[:5])
        raise InputError(
            f"basis store {str(path)!r} is incomplete: {len(missing)} of {meta['num_units']} "
            f"shards missing ({names}{', ...' if len(missing) > 5 else ''}); run "
            "se3t basis precompute (all --shard slices) before finalize"
        )
    shutil.rmtree(path / ".claims", ignore_errors=True)
    for leftover in path.rglob("*.partial"):
        leftover.unlink(missing_ok=True)
    from tqdm.auto import tqdm

    files = {}
    for u in tqdm(range(meta["num_units"]), desc="checksums", disable=not progress):
        f = path / _unit_file(u)
        files[_unit_file(u)] = {"bytes": f.stat().st_size, "sha256": _sha256_file(f)}
    record = {
        "key": meta["key"],
        "algorithm": "sha256",
        "files": files,
        "total_bytes": sum(v["bytes"] for v in files.values()),
        "finalized": _iso(),
        "finalized_by": who(),
    }
    # exclusive: when two finalizers race, the first record stays (manifests point at its hash)
    atomic_write_bytes(done, json.dumps(record, indent=1, sort_keys=True).encode(), exclusive=True)
    _make_read_only(path)
    return json.loads(done.read_text())


def _canonical_sha(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _read_checksums_bytes(where: str) -> bytes | None:
    try:
        if is_url(where):
            import fsspec

            with fsspec.open(f"{where.rstrip('/')}/{CHECKSUMS_FILE}", "rb") as fh:
                return fh.read()
        return (local_path(where) / CHECKSUMS_FILE).read_bytes()
    except (FileNotFoundError, OSError):
        return None


def write_manifest(store: str | os.PathLike, manifest: str | os.PathLike) -> dict[str, Any]:
    """Write the run-folder manifest that points at a complete store (what the workflow's basis
    rule outputs): key, store path or URL, dataset fingerprint, settings, sizes, created, and
    ``checksums_sha256`` (hash of the store's checksums file) plus ``manifest_sha256`` (hash of
    this record), so readers notice a store or manifest changed since. Atomic write."""
    where = str(store) if is_url(store) else os.path.abspath(local_path(store))
    group = _open_group(where)
    meta = store_meta(group, where)
    checks = _read_checksums_bytes(where)
    if checks is None:
        raise InputError(
            f"basis store {where!r} is not finalized (no {CHECKSUMS_FILE}); run se3t basis "
            "finalize on it first"
        )
    sizes = json.loads(checks)
    record = {
        "kind": MANIFEST_KIND,
        "store_format": STORE_FORMAT,
        "key": meta["key"],
        "store": where,
        "dataset_fingerprint": meta["dataset_fingerprint"],
        "dataset_path": meta.get("dataset_path"),
        "settings": {k: meta[k] for k in (
            "max_degree", "dtype", "basis_size", "layout_version", "code_version", "compressor",
            "compression_level", "chunk_edges", "chunks_per_shard")},
        "num_molecules": meta["num_molecules"],
        "num_edges": meta["num_edges"],
        "store_bytes": sizes.get("total_bytes"),
        "store_created": meta.get("created"),
        "created": _iso(),
        "created_by": who(),
        "checksums_sha256": hashlib.sha256(checks).hexdigest(),
    }
    record["manifest_sha256"] = _canonical_sha(record)
    out = Path(manifest)
    atomic_write_bytes(out, (json.dumps(record, indent=2) + "\n").encode())
    return record


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """A run-folder manifest, checked for its kind and its own checksum."""
    p = Path(path)
    try:
        record = json.loads(p.read_text())
    except FileNotFoundError as err:
        raise InputError(f"basis manifest {str(p)!r} does not exist") from err
    except (OSError, ValueError) as err:
        raise InputError(f"basis manifest {str(p)!r} is not valid JSON: {err}") from err
    if not isinstance(record, dict) or record.get("kind") != MANIFEST_KIND:
        raise InputError(f"basis manifest {str(p)!r} is not a se3t basis manifest")
    if record.get("manifest_sha256") != _canonical_sha(record):
        raise InputError(f"basis manifest {str(p)!r}: field 'manifest_sha256' does not match its "
                         "contents (edited or damaged); rerun se3t basis finalize --manifest")
    return record


# --------------------------------------------------------------------------------------------
# reading


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

    def __init__(self, where: str, group: zarr.Group, meta: dict[str, Any], *,
                 read: str = "auto", cache_chunks: int = 32) -> None:
        self.where = where
        self.meta = meta
        self.key: str = meta["key"]
        self.max_degree: int = meta["max_degree"]
        self.dtype: torch.dtype = _DTYPES[meta["dtype"]]
        self.basis_size: int = meta["basis_size"]
        self.chunk_edges: int = meta["chunk_edges"]
        self.num_molecules: int = meta["num_molecules"]
        self.num_edges: int = meta["num_edges"]
        self._array = group["basis"]
        self.row_start = np.asarray(group["row_start"][:], dtype=np.int64)
        self.edge_count = np.asarray(group["edge_count"][:], dtype=np.int64)
        self.chunk_mols = np.asarray(group["chunk_mols"][:], dtype=np.int64)
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
        codec = None if is_url(where) else _ShardCodec(self._array, Path(where), meta)
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
            for _ in pool.map(lambda c: self._read_chunk_into(c, full[c * ce : (c + 1) * ce]),
                              range(self.meta["num_chunks"])):
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
        return (f"BasisStore({self.where!r}, key={self.key}, degree={self.max_degree}, "
                f"dtype={self.meta['dtype']}, molecules={self.num_molecules}, read={self.read})")

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
        return (f"chunk {c} (file {_unit_file(u)}, molecule rows {int(self.chunk_mols[c])}.."
                f"{int(self.chunk_mols[c + 1]) - 1})")

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
            return torch.index_select(self._full, 0, torch.from_numpy(rows),
                                      out=self._output(len(rows)))
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
            return torch.index_select(self._slab, 0, torch.from_numpy(src),  # type: ignore[arg-type]
                                      out=self._output(len(rows)))
        # more chunks than the cache holds: decode each for this batch only
        if not self._warned:
            self._warned = True
            log.warning(
                "basis store %s: one batch needed %d chunks, more than the cache holds "
                "(read=chunks, cache_chunks=%d): random batches over a chunked store decode a "
                "chunk per molecule; use BasisStore.batch_sampler or read=memory "
                "(docs/basis.md)", self.where, len(needed), self.cache_chunks,
            )
        out = self._output(len(rows))
        ends = np.cumsum(counts)
        for c in needed:
            sel = np.nonzero(mol_chunk == c)[0]
            pos = np.concatenate([np.arange(ends[k] - counts[k], ends[k]) for k in sel])
            block = torch.empty((ce, self.basis_size), dtype=self.dtype)
            self._read_chunk_into(c, block)
            out[torch.from_numpy(pos)] = block.index_select(
                0, torch.from_numpy(rows[pos] - c * ce))
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
        :class:`se3t.data.basis_sampler.ChunkShuffleBatchSampler`)."""
        from se3t.data.basis_sampler import ChunkShuffleBatchSampler

        idx = np.asarray(indices, dtype=np.int64)
        sampler = ChunkShuffleBatchSampler(self.molecule_chunk[idx], batch_size, **kw)
        # a batch at the seam of two windows touches both: keep two windows decoded
        self.cache_chunks = max(self.cache_chunks, 2 * sampler.buffer_chunks)
        return sampler


def _sole_owner(t: Tensor) -> bool:
    """True when only ``t`` itself refers to its storage (no view of it lives anywhere)."""
    try:  # ``t``'s own reference + the temporary storage object of this call
        return torch._C._storage_Use_Count(t.untyped_storage()._cdata) <= 2
    except (AttributeError, RuntimeError):  # not in this torch: never reuse
        return False


def _dtype_name(dtype: str | torch.dtype) -> str:
    if isinstance(dtype, torch.dtype):
        for name, dt in _DTYPES.items():
            if dt == dtype:
                return name
        raise InputError(f"basis dtype {dtype} is not one of {list(_DTYPES)}")
    return str(dtype)


def open_basis(
    manifest_or_store: str | os.PathLike,
    *,
    dataset_fingerprint: str,
    max_degree: int,
    dtype: str | torch.dtype,
    read: str = "auto",
    cache_chunks: int = 32,
    backend: BasisBackend | None = None,
) -> BasisStore:
    """Open a complete basis store read-only, for a run manifest file or a store path/URL.

    Refuses (InputError naming the store and the field) a store that is missing, incomplete
    (never finalized), changed since the manifest was written, or built for another dataset
    fingerprint, degree, dtype, layout or basis code version. Readers never write.
    """
    where = str(manifest_or_store)
    manifest = None
    if where.endswith(".json") or (not is_url(where) and Path(where).is_file()):
        manifest = read_manifest(where)
        where = manifest["store"]
    elif not is_url(where):
        where = str(local_path(where))
    group = _open_group(where)
    meta = store_meta(group, where)
    backend = backend or default_backend()
    want = _key_fields(dataset_fingerprint, max_degree, _dtype_name(dtype), backend)
    labels = {"dataset_fingerprint": "dataset", "max_degree": "max degree", "dtype": "dtype"}
    for k, v in want.items():
        if meta.get(k) != v:
            raise InputError(
                f"basis store {where!r} was built for {labels.get(k, k)} {meta.get(k)!r}, "
                f"this run needs {v!r}; it cannot be used (run se3t basis precompute for "
                "this dataset and settings)"
            )
    checks = _read_checksums_bytes(where)
    if checks is None:
        present = (None if is_url(where) else
                   sum(_unit_exists(Path(where), u) for u in range(meta["num_units"])))
        raise InputError(
            f"basis store {where!r} is incomplete ({present} of {meta['num_units']} shards, not "
            "finalized); finish it with se3t basis precompute and se3t basis finalize"
        )
    if manifest is not None and hashlib.sha256(checks).hexdigest() != manifest["checksums_sha256"]:
        raise InputError(
            f"basis store {where!r} changed since manifest {str(manifest_or_store)!r} was "
            "written (checksums differ); rerun se3t basis finalize --manifest"
        )
    return BasisStore(where, group, meta, read=read, cache_chunks=cache_chunks)


# --------------------------------------------------------------------------------------------
# verify


@dataclass
class VerifyReport:
    store: str
    key: str
    files_checked: int = 0
    bad_files: list[str] = field(default_factory=list)  # "file: reason"
    edges_sampled: int = 0
    max_abs_error: float = 0.0
    bad_chunks: list[str] = field(default_factory=list)
    complete: bool = True

    @property
    def ok(self) -> bool:
        return self.complete and not self.bad_files and not self.bad_chunks

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **{k: getattr(self, k) for k in (
            "store", "key", "complete", "files_checked", "bad_files", "edges_sampled",
            "max_abs_error", "bad_chunks")}}


def verify(
    store: str | os.PathLike,
    *,
    sample: int = 1000,
    dataset: str | os.PathLike | None = None,
    backend: BasisBackend | None = None,
    seed: int | None = None,
    progress: bool = False,
) -> VerifyReport:
    """Check a store: every shard file against ``checksums.json`` (size, sha256), then ``sample``
    random edges recomputed from the dataset (the one recorded in the store unless given) and
    compared with the stored rows. Every problem names its file or chunk."""
    where = str(store) if is_url(store) else str(local_path(store))
    group = _open_group(where)
    meta = store_meta(group, where)
    report = VerifyReport(store=where, key=meta["key"])
    checks = _read_checksums_bytes(where)
    if checks is None:
        report.complete = False
        return report
    record = json.loads(checks)
    import fsspec
    from tqdm.auto import tqdm

    fs, root = (fsspec.core.url_to_fs(where) if is_url(where)
                else (fsspec.filesystem("file"), where))
    bad_units = set()
    for name, info in tqdm(sorted(record["files"].items()), desc="checksums",
                           disable=not progress):
        report.files_checked += 1
        full = f"{root.rstrip('/')}/{name}"
        try:
            h = hashlib.sha256()
            size = 0
            with fs.open(full, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    h.update(chunk)
                    size += len(chunk)
        except FileNotFoundError:
            report.bad_files.append(f"{name}: missing")
            bad_units.add(name)
            continue
        if size != info["bytes"]:
            report.bad_files.append(f"{name}: {size} bytes, expected {info['bytes']}")
            bad_units.add(name)
        elif h.hexdigest() != info["sha256"]:
            report.bad_files.append(f"{name}: sha256 differs from checksums.json")
            bad_units.add(name)
    if sample > 0 and meta["num_edges"] > 0:
        geom = _load_geometry(dataset or meta["dataset_path"])
        if geom.fingerprint != meta["dataset_fingerprint"]:
            raise InputError(
                f"dataset {geom.path!r} has fingerprint {geom.fingerprint}, the store was built "
                f"from {meta['dataset_fingerprint']}; give --dataset with the right one"
            )
        backend = backend or default_backend()
        if backend.code_version != meta["code_version"]:
            raise InputError(
                f"basis store {where!r} was built by basis code {meta['code_version']}, this "
                f"se3t has {backend.code_version}: recomputation cannot verify it"
            )
        rng = random.Random(seed)
        edges = np.asarray(sorted(rng.sample(range(meta["num_edges"]),
                                             min(sample, meta["num_edges"]))), dtype=np.int64)
        row_start = np.asarray(group["row_start"][:])
        mol = np.searchsorted(geom.edge_offsets, edges, side="right") - 1
        rows = row_start[mol] + edges - geom.edge_offsets[mol]
        compute_dtype = torch.float64 if meta["dtype"] == "float64" else torch.float32
        with torch.no_grad():
            expect = backend.compute(geom.edge_vec_of(edges, compute_dtype), meta["max_degree"],
                                     dtype=compute_dtype).to(torch.float64)
        arr = group["basis"]
        ce, cps = meta["chunk_edges"], meta["chunks_per_shard"]
        chunk_of = rows // ce
        for c in np.unique(chunk_of).tolist():
            sel = np.nonzero(chunk_of == c)[0]
            name = (f"chunk {c} (file {_unit_file(c // cps)}, molecule rows "
                    f"{int(group['chunk_mols'][c])}..)")
            try:
                block = torch.from_numpy(np.asarray(arr[c * ce : (c + 1) * ce]))
            except Exception as err:
                report.bad_chunks.append(f"{name}: unreadable ({type(err).__name__}: {err})")
                continue
            got = block[torch.from_numpy(rows[sel] - c * ce)].to(torch.float64)
            err_ = (got - expect[torch.from_numpy(sel)]).abs().max().item()
            report.edges_sampled += len(sel)
            report.max_abs_error = max(report.max_abs_error, err_)
            if not err_ <= _VERIFY_ATOL[meta["dtype"]]:
                report.bad_chunks.append(f"{name}: max |stored - recomputed| = {err_:.3g}")
    return report
