"""The dataset store: ragged molecules as flat arrays plus offsets in a Zarr v3 group.

Arrays (M molecules, A atoms, E directed edges)::

    pos          [A, 3] float32  Å
    species      [A]    int8     atomic number Z
    atom_offsets [M+1]  int64    molecule r's atoms are rows atom_offsets[r]:atom_offsets[r+1]
    edge_offsets [M+1]  int64    molecule r's edges are rows edge_offsets[r]:edge_offsets[r+1]
    src, dst     [E]    int32    local atom indices within the molecule (both directions present)
    bond_type    [E]    int8     0 single, 1 double, 2 triple, 3 aromatic, -1 none (radius graph)
    targets      [M, T] float64  attrs["target_names"] order, units in attrs["units"] (NaN: missing)
    mol_id       [M]    int64    the molecule's integer id (QM9: the gdb index; else the input's
                                 id when all are integers, else the record's index)

Attributes: ``format``, ``format_version``, ``source`` (kind, files with sha256), ``graph``
(kind, cutoff), ``target_names``, ``units``, ``parse_report``, ``build_key`` (hash of the inputs
and settings: rebuilding with the same ones is a no-op) and ``fingerprint`` (sha256 of the
content: arrays and graph settings; what the basis store's key uses).

Stores built from users' own molecules (``se3t.data.sources``) also have ``encoding`` (the
elements of the one-hot node features, edge features, bond origin: se3t.data.elements),
``ids`` (each row's molecule id as text), ``scaffold`` (Bemis-Murcko scaffold SMILES per row,
when bonds are known), ``split_label`` (the input's split column per row, when given) and
``hashed_attrs`` (the names of these attributes, which the fingerprint covers too). QM9 stores
have ``encoding`` recorded but not hashed: QM9's encoding is fixed, and leaving it out keeps
the fingerprints (and so the basis stores) of QM9 builds what they were.

A store is written under a temporary name beside its destination and renamed when complete, so
a path that exists is a finished store.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from se3t.data.integrity import (
    CHUNK_SUMS_ATTR,
    check_chunks,
    chunk_checksums,
    unreadable_array,
    verify_dataset,
)
from se3t.errors import InputError
from se3t.io import atomic_dir

__all__ = [
    "ARRAYS",
    "FORMAT",
    "FORMAT_VERSION",
    "DatasetStore",
    "fingerprint",
    "open_dataset",
    "write_dataset",
]

# the store format's name since the first store (any source's store is one): renaming it would
# turn every existing store away
FORMAT = "se3t.qm9-dataset"
FORMAT_VERSION = 1
ARRAYS: dict[str, np.dtype] = {
    "pos": np.dtype(np.float32),
    "species": np.dtype(np.int8),
    "atom_offsets": np.dtype(np.int64),
    "edge_offsets": np.dtype(np.int64),
    "src": np.dtype(np.int32),
    "dst": np.dtype(np.int32),
    "bond_type": np.dtype(np.int8),
    "targets": np.dtype(np.float64),
    "mol_id": np.dtype(np.int64),
}
_CHUNK_ROWS = 1 << 18


def content_hash(
    arrays: dict[str, np.ndarray], graph: dict[str, Any], extra: dict[str, Any] | None = None
) -> str:
    """sha256 over the arrays (name, dtype, shape, bytes, in ARRAYS order), graph settings and,
    when given, the ``extra`` attributes (a store's ``hashed_attrs``)."""
    h = hashlib.sha256()
    h.update(f"{FORMAT}/{FORMAT_VERSION}".encode())
    h.update(json.dumps(graph, sort_keys=True).encode())
    if extra:
        h.update(json.dumps(extra, sort_keys=True).encode())
    for name, dtype in ARRAYS.items():
        a = np.ascontiguousarray(arrays[name], dtype=dtype)
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _check_arrays(arrays: dict[str, np.ndarray]) -> None:
    missing = [n for n in ARRAYS if n not in arrays]
    if missing:
        raise ValueError(f"write_dataset: missing arrays {missing}")
    m = len(arrays["mol_id"])
    a, e = len(arrays["species"]), len(arrays["src"])
    ao, eo = arrays["atom_offsets"], arrays["edge_offsets"]
    if len(ao) != m + 1 or len(eo) != m + 1 or ao[0] != 0 or eo[0] != 0:
        raise ValueError("write_dataset: offsets must have M+1 entries starting at 0")
    if ao[-1] != a or eo[-1] != e or np.any(np.diff(ao) <= 0) or np.any(np.diff(eo) < 0):
        raise ValueError("write_dataset: offsets must be non-decreasing and end at A and E")
    if arrays["pos"].shape != (a, 3) or arrays["targets"].shape[0] != m:
        raise ValueError("write_dataset: pos must be [A, 3] and targets [M, T]")
    if len(arrays["dst"]) != e or len(arrays["bond_type"]) != e:
        raise ValueError("write_dataset: src, dst and bond_type must have E entries")


def write_dataset(path: str | os.PathLike, arrays: dict[str, np.ndarray], attrs: dict) -> Path:
    """Write a complete store atomically (temporary sibling, then rename); returns its path.

    ``attrs`` gets ``format``, ``format_version`` and ``fingerprint`` added; it must hold
    ``graph`` ({"kind", "cutoff"}). An existing store at ``path`` is replaced only once the new
    one is complete.
    """
    # deferred: zarr is slow to import; only opening a store needs it
    import zarr

    _check_arrays(arrays)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    attrs = dict(attrs)
    attrs.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        num_molecules=int(len(arrays["mol_id"])),
        num_atoms=int(len(arrays["species"])),
        num_edges=int(len(arrays["src"])),
        fingerprint=content_hash(arrays, attrs["graph"], hashed_extra(attrs)),
    )

    rows = {name: min(_CHUNK_ROWS, max(1, len(arrays[name]))) for name in ARRAYS}
    data = {name: np.ascontiguousarray(arrays[name], dtype=dtype) for name, dtype in ARRAYS.items()}
    attrs[CHUNK_SUMS_ATTR] = chunk_checksums(data, rows)  # names a damaged chunk on read

    def build(tmp: Path) -> None:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        # every chunk written, zeros too: a chunk file that is absent is then always damage
        with zarr.config.set({"array.write_empty_chunks": True}):
            for name, dtype in ARRAYS.items():
                chunks = (rows[name], *data[name].shape[1:])
                arr = group.create_array(name, shape=data[name].shape, dtype=dtype, chunks=chunks)
                arr[...] = data[name]
        group.attrs.update(json.loads(json.dumps(attrs)))  # plain JSON types only

    return atomic_dir(path, build)  # an existing store is replaced only once this one is whole


def hashed_extra(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """The attributes beyond the arrays that a store's fingerprint covers (None for QM9's)."""
    names = attrs.get("hashed_attrs")
    if not names:
        return None
    return {name: attrs.get(name) for name in names}


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The store's attributes; InputError naming the path when it is not a complete store."""
    # deferred: zarr is slow to import; only opening a store needs it
    import zarr

    p = str(path)
    try:
        group = zarr.open_group(p, mode="r")
        attrs = dict(group.attrs)
    except Exception as err:
        raise InputError(
            f"{p}: not a se3t dataset store (cannot open as a Zarr group: {err})"
        ) from None
    if attrs.get("format") != FORMAT:
        raise InputError(f"{p}: not a se3t dataset store (attribute 'format' is not {FORMAT!r})")
    if attrs.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{p}: dataset store format version {attrs.get('format_version')} is not "
            f"{FORMAT_VERSION}; rebuild it with `se3t data build`"
        )
    return attrs


def fingerprint(path: str | os.PathLike) -> str:
    """Content hash of the dataset (arrays and graph settings), as recorded at write time and
    verified now: the store is opened and checked (:func:`open_dataset`), so a fingerprint,
    and the basis cache key made of it, always describes the content (a damaged store raises
    InputError naming the array and chunk instead)."""
    return open_dataset(path).fingerprint


class DatasetStore:
    """A dataset store opened read-only, its arrays held in memory as numpy arrays.

    Full QM9 takes about 60 MB. ``molecule(r)`` gives row r's arrays as views.
    """

    def __init__(self, path: str | os.PathLike):
        # deferred: zarr is slow to import; only opening a store needs it
        import zarr

        self.path = str(path)
        self.attrs = read_attrs(path)
        group = zarr.open_group(self.path, mode="r")
        arrays = {}
        for name, dtype in ARRAYS.items():
            try:
                a = group[name][...]
            except Exception as err:
                raise unreadable_array(self.path, group, name, err) from None
            if a.dtype != dtype:
                raise InputError(f"{self.path}: array {name!r} has dtype {a.dtype}, not {dtype}")
            a.setflags(write=False)
            arrays[name] = a
        check_chunks(self.path, self.attrs, arrays, group)  # before anything reads the values
        try:
            _check_arrays(arrays)
        except ValueError as err:
            raise InputError(f"{self.path}: inconsistent store: {err}") from None
        self.pos: np.ndarray = arrays["pos"]
        self.species: np.ndarray = arrays["species"]
        self.atom_offsets: np.ndarray = arrays["atom_offsets"]
        self.edge_offsets: np.ndarray = arrays["edge_offsets"]
        self.src: np.ndarray = arrays["src"]
        self.dst: np.ndarray = arrays["dst"]
        self.bond_type: np.ndarray = arrays["bond_type"]
        self.targets: np.ndarray = arrays["targets"]
        self.mol_id: np.ndarray = arrays["mol_id"]

    @property
    def fingerprint(self) -> str:
        return str(self.attrs["fingerprint"])

    @property
    def target_names(self) -> list[str]:
        return list(self.attrs["target_names"])

    @property
    def units(self) -> dict[str, str]:
        return dict(self.attrs["units"])

    @property
    def graph(self) -> dict[str, Any]:
        return dict(self.attrs["graph"])

    @property
    def encoding(self):
        """The node/edge :class:`~se3t.data.elements.Encoding` (QM9's when none is recorded)."""
        from se3t.data.elements import Encoding

        return Encoding.from_dict(self.attrs.get("encoding"))

    @property
    def ids(self) -> list[str]:
        """Each row's molecule id as text (QM9: the gdb index)."""
        ids = self.attrs.get("ids")
        return list(ids) if ids is not None else [str(i) for i in self.mol_id.tolist()]

    @property
    def parse_report(self) -> dict[str, Any]:
        return dict(self.attrs.get("parse_report", {}))

    def __len__(self) -> int:
        return len(self.mol_id)

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in ARRAYS}

    def verify(self) -> None:
        """Recompute the content hash; InputError when it disagrees with the recorded one."""
        actual = content_hash(self.arrays(), self.graph, hashed_extra(self.attrs))
        if actual != self.fingerprint:
            raise InputError(
                f"{self.path}: content hash {actual[:16]}... disagrees with the recorded "
                f"fingerprint {self.fingerprint[:16]}...: the store was modified or is corrupt"
            )

    def molecule(self, row: int) -> dict[str, np.ndarray]:
        a0, a1 = self.atom_offsets[row], self.atom_offsets[row + 1]
        e0, e1 = self.edge_offsets[row], self.edge_offsets[row + 1]
        return {
            "pos": self.pos[a0:a1],
            "species": self.species[a0:a1],
            "src": self.src[e0:e1],
            "dst": self.dst[e0:e1],
            "bond_type": self.bond_type[e0:e1],
            "targets": self.targets[row],
            "mol_id": self.mol_id[row],
        }

    def __repr__(self) -> str:
        return (
            f"DatasetStore({self.path!r}, molecules={len(self)}, atoms={len(self.species)}, "
            f"edges={len(self.src)}, graph={self.graph})"
        )


def open_dataset(path: str | os.PathLike) -> DatasetStore:
    """Open a dataset store read-only and verify it (:func:`se3t.data.integrity.verify_dataset`:
    every chunk present, content equal to the recorded fingerprint); InputError naming the path,
    array and chunk when it is not a valid, intact store."""
    store = DatasetStore(path)
    verify_dataset(store)
    return store
