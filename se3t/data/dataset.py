"""``MoleculeDataset``: one split of a dataset store (QM9's or one built from your own molecules)
as a map-style torch dataset.

Each item is a :class:`MoleculeSample` (numpy views into the store, no copy) with its targets
standardized by the *training* split's mean and standard deviation:
``y = (t - mean) / std``; predictions go back with ``t = y * std + mean``
(:meth:`MoleculeDataset.destandardize`). Works with any sampler, ``DistributedSampler``
included.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from se3t.data.elements import Encoding
from se3t.data.splits import store_splits
from se3t.data.store import DatasetStore, open_dataset
from se3t.errors import InputError

__all__ = ["MoleculeDataset", "MoleculeSample"]


@dataclass(slots=True)
class MoleculeSample:
    """One molecule as ``collate`` takes it (arrays may be read-only views into the store)."""

    pos: np.ndarray  # [n, 3] float32 Å
    species: np.ndarray  # [n] int8 atomic numbers
    src: np.ndarray  # [e] int32 local atom index
    dst: np.ndarray  # [e] int32 local atom index
    bond_type: np.ndarray  # [e] int8 (0 single, 1 double, 2 triple, 3 aromatic, -1 none)
    y: np.ndarray | None = None  # [T] float32 standardized targets
    mol_id: int | None = None  # the store's integer id (QM9: the gdb id)
    index: int | None = None  # row in the dataset store
    name: str | None = None  # the file a read_molecule sample came from
    # the dataset's node/edge encoding (None: QM9's); a shared reference, collate reads it
    encoding: Encoding | None = None

    @property
    def num_atoms(self) -> int:
        return len(self.species)


def _columns(store: DatasetStore, targets: tuple[str, ...]) -> list[int]:
    """The store's columns of ``targets``; an error naming the store for an unknown one."""
    if not targets:
        raise ValueError("MoleculeDataset: give at least one target")
    names = store.target_names
    for t in targets:
        if t not in names:
            raise InputError(f"{store.path}: target {t!r} is not in the store (it has {names})")
    return [names.index(t) for t in targets]


def _statistics(path: str, targets: tuple[str, ...], train: np.ndarray):
    """(mean, std) [T] of the training split's targets ``train`` [M, T]; missing values (NaN)
    are left out of the statistics, as of the loss and metrics; a zero std becomes 1."""
    if np.isnan(train).any():
        present = (~np.isnan(train)).sum(axis=0)
        if (present == 0).any():
            t = targets[int(np.argmin(present))]
            raise InputError(f"{path}: target {t!r} has no value in the training split")
        mean, std = np.nanmean(train, axis=0), np.nanstd(train, axis=0)
    else:
        mean, std = train.mean(axis=0), train.std(axis=0)
    std[std == 0] = 1.0
    return mean, std


class MoleculeDataset(torch.utils.data.Dataset):
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
        self.targets = (targets,) if isinstance(targets, str) else tuple(targets)
        cols = _columns(self.store, self.targets)
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
            raise ValueError(
                f"MoleculeDataset: split must be train, val, test or all, got {split!r}"
            )
        raw = self.store.targets[:, cols]  # [M, T] float64, target units
        mean, std = _statistics(self.store.path, self.targets, raw[splits["train"]])
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
    def from_config(cls, data_cfg, split: str = "train") -> MoleculeDataset:
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
            f"MoleculeDataset({self.store.path!r}, split={self.split!r}, molecules={len(self)}, "
            f"targets={list(self.targets)})"
        )
