"""The data stage: fetch, parse, bond graphs, the Zarr dataset store, splits and the loader.

One build (:mod:`se3t.data.build`) turns any source's records into a dataset store: QM9
(:mod:`se3t.data.sources.qm9`) or users' own molecules (:mod:`se3t.data.sources.own`).

Public API: :class:`MoleculeDataset`, :func:`collate`, :func:`read_molecule`,
:func:`open_dataset`, :func:`fingerprint`, :func:`build_store`, :func:`build_qm9`,
:func:`build_molecules`, :func:`fetch`, :func:`split_indices`.
"""

from se3t.data.build import build_store
from se3t.data.dataset import MoleculeDataset, MoleculeSample
from se3t.data.loader import collate, make_loader
from se3t.data.sources.own import build_molecules
from se3t.data.sources.qm9 import build_qm9, fetch, read_molecule
from se3t.data.splits import split_indices
from se3t.data.store import DatasetStore, fingerprint, open_dataset

__all__ = [
    "DatasetStore",
    "MoleculeDataset",
    "MoleculeSample",
    "build_molecules",
    "build_qm9",
    "build_store",
    "collate",
    "fetch",
    "fingerprint",
    "make_loader",
    "open_dataset",
    "read_molecule",
    "split_indices",
]
