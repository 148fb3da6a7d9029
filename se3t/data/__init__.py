"""QM9 data stage: fetch, parse, bond graphs, the Zarr dataset store, splits and the loader.

Public API: :class:`QM9Dataset`, :func:`collate`, :func:`read_molecule`, :func:`open_dataset`,
:func:`fingerprint`, :func:`build_dataset`, :func:`fetch`, :func:`split_indices`.
"""

from se3t.data.build import build_dataset
from se3t.data.dataset import MoleculeSample, QM9Dataset, read_molecule
from se3t.data.fetch import fetch
from se3t.data.loader import collate, make_loader
from se3t.data.splits import split_indices
from se3t.data.store import DatasetStore, fingerprint, open_dataset

__all__ = [
    "DatasetStore",
    "MoleculeSample",
    "QM9Dataset",
    "build_dataset",
    "collate",
    "fetch",
    "fingerprint",
    "make_loader",
    "open_dataset",
    "read_molecule",
    "split_indices",
]
