"""The node and edge encoding of a dataset: which elements the one-hot covers, which edge features.

Node features are ``one-hot(elements) + [Z]`` over the dataset's element list (QM9: H, C, N, O,
F, so ``[N, 6]`` as in NVIDIA's recipe); edge features are the one-hot bond type (single,
double, triple, aromatic) for graphs with bond types and none (``[E, 0]``) for the radius graph
of a dataset without bonds. The encoding is recorded in the dataset store (attribute
``encoding``), enters the basis key through the store's fingerprint and is saved in every
checkpoint, so training, evaluation and prediction build the same features; an element the
model never saw is an error naming the molecule and the element (:meth:`Encoding.check`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from se3t.data.bonds import BOND_TYPES
from se3t.errors import InputError

__all__ = [
    "BOND_FEATURES",
    "QM9_ENCODING",
    "Encoding",
    "atomic_number",
    "symbol",
]

BOND_FEATURES = BOND_TYPES  # one edge-feature column per bond type
_MAX_Z = 118


def _table():
    # deferred: RDKit is heavy to import and only needed when symbols are looked up
    from rdkit import Chem

    return Chem.GetPeriodicTable()


def symbol(z: int) -> str:
    """The element symbol of atomic number ``z`` (RDKit's periodic table)."""
    return str(_table().GetElementSymbol(int(z)))


def atomic_number(sym: str) -> int:
    """Atomic number of an element symbol (case as written: ``Cl``, ``Br``); 0 when RDKit does
    not know the symbol (the caller names the file and record)."""
    s = str(sym).strip()
    if not s or not s.isalpha() or len(s) > 3:
        return 0
    try:
        z = int(_table().GetAtomicNumber(s[0].upper() + s[1:].lower()))
    except RuntimeError:  # RDKit's "Element 'Xx' not found"
        return 0
    return z if 0 < z <= _MAX_Z else 0


@dataclass(frozen=True)
class Encoding:
    """``elements``: atomic numbers in one-hot order; ``edges``: ``"bond_type"`` (four one-hot
    columns, all zero for a non-bonded pair of a radius graph) or ``"none"``; ``bonds``: where
    bond graphs come from, ``"perceived"`` (from 3D, as for QM9) or ``"file"`` (the input's bond
    block or SMILES graph, perceived for inputs without one)."""

    elements: tuple[int, ...]
    edges: str = "bond_type"
    bonds: str = "perceived"
    node_table: np.ndarray = field(init=False, repr=False, compare=False)
    edge_table: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        els = tuple(int(z) for z in self.elements)
        if not els or len(set(els)) != len(els) or any(not 0 < z <= _MAX_Z for z in els):
            raise ValueError(f"Encoding: elements must be distinct atomic numbers, got {els}")
        if self.edges not in ("bond_type", "none"):
            raise ValueError(f"Encoding: edges must be 'bond_type' or 'none', got {self.edges!r}")
        if self.bonds not in ("perceived", "file"):
            raise ValueError(f"Encoding: bonds must be 'perceived' or 'file', got {self.bonds!r}")
        object.__setattr__(self, "elements", els)
        # row Z of node_table is atom Z's feature vector; row t+1 of edge_table is bond type t's
        nodes = np.zeros((_MAX_Z + 1, len(els) + 1), dtype=np.float32)
        for col, z in enumerate(els):
            nodes[z, col] = 1.0
            nodes[z, -1] = z
        width = len(BOND_FEATURES) if self.edges == "bond_type" else 0
        edges = np.zeros((len(BOND_FEATURES) + 1, width), dtype=np.float32)
        if width:
            edges[1:, :] = np.eye(width, dtype=np.float32)
        nodes.setflags(write=False)
        edges.setflags(write=False)
        object.__setattr__(self, "node_table", nodes)
        object.__setattr__(self, "edge_table", edges)

    @classmethod
    def from_species(cls, species: Iterable[int], extra: Iterable[int] = (), **kw: Any) -> Encoding:
        """Elements present in ``species`` (and ``extra``), sorted by atomic number."""
        present = set(np.unique(np.asarray(list(species), dtype=np.int64)).tolist())
        return cls(tuple(sorted(present | {int(z) for z in extra})), **kw)

    @property
    def node_features(self) -> int:
        return len(self.elements) + 1

    @property
    def edge_features(self) -> int:
        return int(self.edge_table.shape[1])

    @property
    def node_feature_names(self) -> list[str]:
        return [symbol(z) for z in self.elements] + ["Z"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "elements": list(self.elements),
            "symbols": [symbol(z) for z in self.elements],
            "edges": self.edges,
            "bonds": self.bonds,
            "node_features": self.node_features,
            "edge_features": self.edge_features,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Encoding:
        """From :meth:`to_dict`'s output; None (stores and checkpoints written before encodings
        were recorded) is QM9's encoding."""
        if not d:
            return QM9_ENCODING
        return cls(tuple(d["elements"]), d.get("edges", "bond_type"), d.get("bonds", "perceived"))

    def check(self, species: np.ndarray, where: str) -> None:
        """InputError naming ``where`` and the element when an atom's element is not encoded."""
        known = np.zeros(_MAX_Z + 1, dtype=bool)
        known[list(self.elements)] = True
        z = np.asarray(species, dtype=np.int64)
        bad = (z <= 0) | (z > _MAX_Z)
        bad[~bad] = ~known[z[~bad]]
        if bad.any():
            k = int(np.nonzero(bad)[0][0])
            raise InputError(
                f"{where}: field 'atom {k + 1} element': {symbol(int(z[k]))} (Z={int(z[k])}) "
                "was not in the training data; the model knows "
                + ", ".join(symbol(e) for e in self.elements)
            )

    def node_features_of(self, species: np.ndarray) -> np.ndarray:
        """[n, node_features] float32 (a gather from ``node_table``)."""
        return self.node_table[np.asarray(species, dtype=np.int64)]

    def edge_features_of(self, bond_type: np.ndarray) -> np.ndarray:
        """[e, edge_features] float32; bond_type -1 (no bond) gives zeros."""
        return self.edge_table[np.asarray(bond_type, dtype=np.int64) + 1]


# QM9's fixed encoding (NVIDIA's recipe): five elements, perceived bonds, bond-type edges. Stores
# and checkpoints without a recorded encoding use it.
QM9_ENCODING = Encoding((1, 6, 7, 8, 9))
