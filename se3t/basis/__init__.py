"""The basis store: per-edge equivariant bases of a dataset, precomputed once into chunked Zarr.

The SE(3)-Transformer's basis for an edge depends only on the edge vector ``x = pos[dst] -
pos[src]``: for each pair of degrees ``(k, l)`` it is ``W_J^{lk}(x) = sum_m Q^{lk}_{Jm} Y_{Jm}(x /
|x|)`` for ``J = |k-l| .. k+l``. ``se3t.so3.basis.compute_basis_flat`` lays all pairs side by side
in one row of ``basis_size(max_degree)`` values (1,092 for degrees 0..3); this package stores those
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

The public interface is what this package exports (``from se3t.basis import ...``); its modules
import nothing private from each other:

- :mod:`.layout`: the on-disk format, its one owner: ``store_path``, ``plan_chunks``, the codec
  chain, the skeleton, shard files, ``checksums.json``, ``store_meta``.
- :mod:`.key`: the cache's key: ``BasisSettings``, ``BasisBackend``, ``default_backend``,
  ``basis_key``.
- :mod:`.cache`: the cache's listing and cleanup: ``list_stores``, ``gc``, ``resolve_store``.
- :mod:`.geometry`: the dataset's positions and edges the bases are computed from.
- :mod:`.codec`: ``ShardCodec``, shard files in Zarr's exact bytes, written and read fast.
- :mod:`.claims`: the ``O_EXCL`` shard claims of concurrent writers; ``who`` writes.
- :mod:`.compute`: ``ShardFiller``, chunks computed by worker threads, shards written.
- :mod:`.writer`: ``precompute``, a pipeline of named steps.
- :mod:`.manifest`: ``finalize`` (``checksums.json``), ``write_manifest``, ``read_manifest``.
- :mod:`.reader`: ``open_basis``, ``BasisStore`` (memory or chunk-cache reads).
- :mod:`.sampler`: ``ChunkShuffleBatchSampler``, batches drawn chunk by chunk.
- :mod:`.verification`: ``verify``, ``VerifyReport``.

Caches on S3-compatible object stores (``basis.cache: s3://bucket/prefix``; docs/basis.md,
"sharing across sites"):

- :mod:`.remote`: ``RemoteCache``, the connection, its errors and leases.
- :mod:`.publisher`: ``publish``, ``upload``, ``finalize_remote`` (checksums.json last,
  ``If-None-Match``), ``precompute_remote``.
- :mod:`.local_cache`: ``mirror``, ``read_through``, ``write_remote_manifest``: the verified
  local copy training reads (``basis.local_cache``).
- :mod:`.remote_cache`: ``list_remote``, ``verify_remote``, ``gc_remote`` (leases, age rule).

Where a cache or store lives is a :class:`se3t.location.Location`, parsed once where the path
enters; :mod:`.tools` (``cache_tools``) picks the folder or object-store tools for it once.
"""

from __future__ import annotations

from se3t.basis.cache import StoreInfo, gc, list_stores, remove_store, resolve_store
from se3t.basis.key import BasisBackend, BasisSettings, basis_key, default_backend
from se3t.basis.layout import CHECKSUMS_FILE, STORE_FORMAT, plan_chunks, store_meta, store_path
from se3t.basis.local_cache import mirror, read_through, write_remote_manifest
from se3t.basis.manifest import finalize, read_manifest, write_manifest
from se3t.basis.publisher import finalize_remote, precompute_remote, publish, upload
from se3t.basis.reader import BasisStore, open_basis
from se3t.basis.remote import RemoteCache
from se3t.basis.remote_cache import gc_remote, list_remote, verify_remote
from se3t.basis.sampler import ChunkShuffleBatchSampler
from se3t.basis.tools import cache_tools, store_tools
from se3t.basis.verification import VerifyReport, verify
from se3t.basis.writer import precompute

__all__ = [
    "CHECKSUMS_FILE",
    "STORE_FORMAT",
    "BasisBackend",
    "BasisSettings",
    "BasisStore",
    "ChunkShuffleBatchSampler",
    "RemoteCache",
    "StoreInfo",
    "VerifyReport",
    "basis_key",
    "cache_tools",
    "default_backend",
    "finalize",
    "finalize_remote",
    "gc",
    "gc_remote",
    "list_remote",
    "list_stores",
    "mirror",
    "open_basis",
    "plan_chunks",
    "precompute",
    "precompute_remote",
    "publish",
    "read_manifest",
    "read_through",
    "remove_store",
    "resolve_store",
    "store_meta",
    "store_path",
    "store_tools",
    "upload",
    "verify",
    "verify_remote",
    "write_manifest",
    "write_remote_manifest",
]
