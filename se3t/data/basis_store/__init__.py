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

Modules (everything public is re-exported here, so ``from se3t.data.basis_store import ...``
is all callers need):

- :mod:`.settings`: ``BasisSettings``, ``BasisBackend``, ``default_backend``, ``basis_key``,
  ``store_path`` (the store's content address).
- :mod:`.layout`: the layout on disk: ``plan_chunks``, the codec chain, the skeleton, shard
  files, ``store_meta``.
- :mod:`.geometry`: the dataset's positions and edges the bases are computed from.
- :mod:`.codec`: ``_ShardCodec``, shard files in Zarr's exact bytes, written and read fast.
- :mod:`.claims`: the ``O_EXCL`` shard claims of concurrent writers.
- :mod:`.writer`: ``precompute``.
- :mod:`.manifest`: ``finalize`` (``checksums.json``), ``write_manifest``, ``read_manifest``.
- :mod:`.reader`: ``open_basis``, ``BasisStore`` (memory or chunk-cache reads).
- :mod:`.verification`: ``verify``, ``VerifyReport``.
"""

from __future__ import annotations

from se3t.data.basis_store.codec import _ShardCodec as _ShardCodec
from se3t.data.basis_store.layout import plan_chunks, store_meta
from se3t.data.basis_store.manifest import finalize, read_manifest, write_manifest
from se3t.data.basis_store.reader import BasisStore, open_basis
from se3t.data.basis_store.settings import (
    STORE_FORMAT,
    BasisBackend,
    BasisSettings,
    basis_key,
    default_backend,
    store_path,
)
from se3t.data.basis_store.settings import _so3_code_version as _so3_code_version
from se3t.data.basis_store.verification import VerifyReport, verify
from se3t.data.basis_store.writer import precompute

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

# ``_ShardCodec`` and ``_so3_code_version`` are re-exported above (``X as X``) so that the private
# names of the former single module stay importable from this path: tests use them.
