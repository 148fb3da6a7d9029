"""``QM9Dataset``: one split of the dataset store as a map-style torch dataset.

Each item is a :class:`MoleculeSample` (numpy views into the store, no copy) with its targets
standardized by the *training* split's mean and standard deviation:
``y = (t - mean) / std``; predictions go back with ``t = y * std + mean``
(:meth:`QM9Dataset.destandardize`). Works with any sampler, ``DistributedSampler`` included.

``read_molecule(path)`` turns a new molecule (XYZ in QM9's or the plain format, or SDF/MOL) into
the same kind of sample, its bonds perceived from the geometry exactly as in the build.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from se3t.config import QM9_TARGETS
from se3t.data.bonds import molecule_graph
from se3t.data.elements import Encoding
from se3t.data.parse import FAR_FROM_ORIGIN, MoleculeError, centered, check_geometry, parse_xyz
from se3t.data.qm9 import ELEMENTS
from se3t.data.splits import store_splits
from se3t.data.store import DatasetStore, open_dataset
from se3t.errors import InputError

__all__ = ["MoleculeSample", "QM9Dataset", "read_molecule"]


@dataclass(slots=True)
class MoleculeSample:
    """One molecule as ``collate`` takes it (arrays may be read-only views into the store)."""

    pos: np.ndarray  # [n, 3] float32 Å
    species: np.ndarray  # [n] int8 atomic numbers
    src: np.ndarray  # [e] int32 local atom index
    dst: np.ndarray  # [e] int32 local atom index
    bond_type: np.ndarray  # [e] int8 (0 single, 1 double, 2 triple, 3 aromatic, -1 none)
    y: np.ndarray | None = None  # [T] float32 standardized targets
    mol_id: int | None = None  # QM9 gdb id
    index: int | None = None  # row in the dataset store
    name: str | None = None  # the file a read_molecule sample came from
    # the dataset's node/edge encoding (None: QM9's); a shared reference, collate reads it
    encoding: Encoding | None = None

    @property
    def num_atoms(self) -> int:
        return len(self.species)


class QM9Dataset(torch.utils.data.Dataset):
    """Split ``split`` (train | val | test | all) of the dataset store at ``path``.

    Attributes: ``store`` (:class:`~se3t.data.store.DatasetStore`), ``indices`` (store rows of
    this split, np.int64), ``targets`` (names), ``mean``/``std`` (Tensor[T] float32 of the
    training split, in target units), ``units`` (per target).
    """

    def __init__(
        self,
        path: str | os.PathLike | DatasetStore,
        split: str = "train",
        targets: tuple[str, ...] | list[str] = ("homo",),
        split_seed: int = 0,
        n_train: int = 100_000,
        test_fraction: float = 0.1,
        train_fraction: float = 0.8,
        split_method: str = "random",
    ):
        self.store = path if isinstance(path, DatasetStore) else open_dataset(path)
        if isinstance(targets, str):
            targets = (targets,)
        self.targets = tuple(targets)
        if not self.targets:
            raise ValueError("QM9Dataset: give at least one target")
        names = self.store.target_names
        for t in self.targets:
            if t not in names:
                raise InputError(
                    f"{self.store.path}: target {t!r} is not in the store (it has {names})"
                )
        cols = [names.index(t) for t in self.targets]
        self.split = split
        splits = store_splits(
            self.store,
            split_method,
            seed=split_seed,
            n_train=n_train,
            test_fraction=test_fraction,
            train_fraction=train_fraction,
        )
        if split == "all":
            self.indices = np.arange(len(self.store), dtype=np.int64)
        elif split in splits:
            self.indices = splits[split]
        else:
            raise ValueError(f"QM9Dataset: split must be train, val, test or all, got {split!r}")
        raw = self.store.targets[:, cols]  # [M, T] float64, target units
        train = raw[splits["train"]]
        if np.isnan(train).any():
            # missing values (NaN) are left out of the statistics, as of the loss and metrics
            present = (~np.isnan(train)).sum(axis=0)
            if (present == 0).any():
                t = self.targets[int(np.argmin(present))]
                raise InputError(
                    f"{self.store.path}: target {t!r} has no value in the training split"
                )
            mean = np.nanmean(train, axis=0)
            std = np.nanstd(train, axis=0)
        else:
            mean = train.mean(axis=0)
            std = train.std(axis=0)
        std[std == 0] = 1.0
        self.mean: Tensor = torch.from_numpy(mean.astype(np.float32))
        self.std: Tensor = torch.from_numpy(std.astype(np.float32))
        self.units = {t: self.store.units.get(t, "") for t in self.targets}
        self._y = ((raw - mean) / std).astype(np.float32)  # [M, T] standardized, every row
        # python lists index faster than numpy scalars in __getitem__
        self._ao = self.store.atom_offsets.tolist()
        self._eo = self.store.edge_offsets.tolist()
        self._ids = self.store.mol_id.tolist()
        self._rows = self.indices.tolist()
        self.encoding: Encoding = self.store.encoding

    @classmethod
    def from_config(cls, data_cfg, split: str = "train") -> QM9Dataset:
        """The split of the store at ``data_cfg.path`` with the config's targets and split.

        The store must have been built with the config's graph (``data.graph``, and
        ``data.cutoff`` for a radius graph): prediction builds new molecules' graphs from the
        config, so a mismatch would feed the model graphs unlike its training data.
        """
        ds = cls(
            data_cfg.path,
            split=split,
            targets=tuple(data_cfg.targets),
            split_seed=data_cfg.split_seed,
            n_train=data_cfg.n_train,
            test_fraction=data_cfg.test_fraction,
            train_fraction=data_cfg.train_fraction,
            split_method=data_cfg.split,
        )
        built = ds.store.graph
        want_cutoff = float(data_cfg.cutoff) if data_cfg.graph == "radius" else None
        if built.get("kind") != data_cfg.graph or built.get("cutoff") != want_cutoff:
            raise InputError(
                f"{ds.store.path}: the store was built with graph={built.get('kind')}"
                + (f", cutoff={built.get('cutoff')}" if built.get("kind") == "radius" else "")
                + f" but config key 'data.graph' is {data_cfg.graph!r}"
                + (f" (data.cutoff={data_cfg.cutoff})" if data_cfg.graph == "radius" else "")
                + "; rebuild the store or change the config"
            )
        return ds

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> MoleculeSample:
        r = self._rows[i]
        a0, a1 = self._ao[r], self._ao[r + 1]
        e0, e1 = self._eo[r], self._eo[r + 1]
        s = self.store
        return MoleculeSample(
            s.pos[a0:a1],
            s.species[a0:a1],
            s.src[e0:e1],
            s.dst[e0:e1],
            s.bond_type[e0:e1],
            self._y[r],
            self._ids[r],
            r,
            None,
            self.encoding,
        )

    def destandardize(self, y: Tensor) -> Tensor:
        """[B, T] standardized values -> target units: ``y * std + mean``."""
        return y * self.std.to(y.device, y.dtype) + self.mean.to(y.device, y.dtype)

    def target_values(self) -> np.ndarray:
        """[len, T] float64 targets of this split in target units (for metrics)."""
        names = self.store.target_names
        return self.store.targets[self.indices][:, [names.index(t) for t in self.targets]]

    def __repr__(self) -> str:
        return (
            f"QM9Dataset({self.store.path!r}, split={self.split!r}, molecules={len(self)}, "
            f"targets={list(self.targets)})"
        )


def read_molecule(
    path: str | os.PathLike, *, graph: str = "bond", cutoff: float = 5.0
) -> MoleculeSample:
    """A new molecule from an XYZ (QM9 or plain) or SDF/MOL file, ready for ``collate``.

    Bonds are perceived from the 3D geometry as in ``se3t data build`` (the SDF's own bond
    block is ignored so that training and prediction see the same graphs). Raises InputError
    naming the file and field for anything unusable (QM9 elements H, C, N, O, F only).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".xyz":
            rec = parse_xyz(path.read_text(errors="replace"), str(path))
            species, pos, mol_id = rec.species, rec.pos, rec.mol_id
        elif suffix in (".sdf", ".mol", ".sd"):
            species, pos = _read_sdf(path)
            check_geometry(species, pos, str(path))
            mol_id = None
        else:
            raise InputError(f"{path}: unknown molecule format {suffix!r} (use .xyz, .sdf, .mol)")
    except MoleculeError as err:
        raise InputError(str(err)) from None
    (src, dst, bt), _ = molecule_graph(species, pos, graph, cutoff)
    return MoleculeSample(
        centered(pos, FAR_FROM_ORIGIN), species, src, dst, bt, None, mol_id, None, str(path)
    )


def _read_sdf(path: Path) -> tuple[np.ndarray, np.ndarray]:
    # deferred: RDKit is slow to import; only reading new molecules needs it
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    supplier = Chem.SDMolSupplier(str(path), removeHs=False, sanitize=False)
    mols = list(supplier)
    if not mols:
        raise InputError(f"{path}: no molecule record in the file")
    if len(mols) > 1:
        raise InputError(f"{path}: {len(mols)} molecule records; give one molecule per file")
    mol = mols[0]
    if mol is None:
        raise InputError(f"{path}: record 1: RDKit cannot read the molecule block")
    if mol.GetNumConformers() == 0:
        raise InputError(f"{path}: record 1: field 'coordinates': no 3D coordinates")
    symbols = [a.GetSymbol() for a in mol.GetAtoms()]
    for k, s in enumerate(symbols):
        if s not in ELEMENTS:
            raise InputError(
                f"{path}: record 1: field 'atom {k + 1} element': {s!r} is not a QM9 element "
                f"(one of {', '.join(ELEMENTS)})"
            )
    species = np.array([ELEMENTS[s] for s in symbols], dtype=np.int8)
    pos = np.asarray(mol.GetConformer().GetPositions(), dtype=np.float64)
    return species, pos


# all 12 QM9 properties, for callers that want every target
ALL_TARGETS = QM9_TARGETS
