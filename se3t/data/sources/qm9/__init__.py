"""QM9 as a source of the dataset build: its vocabulary (:mod:`.vocabulary`), its two published
formats (figshare's XYZ files, :mod:`.xyz`; qm9pack's CSVs, :mod:`.qm9pack`), its fetch
(:mod:`.fetch`) and the source itself (:mod:`.source`: :class:`QM9Source`, :func:`build_qm9`);
:func:`read_molecule` reads a new molecule for a model trained on QM9.

QM9 (Ramakrishnan et al., Sci. Data 1, 140022, 2014) holds 133,885 small organic molecules (up
to nine heavy atoms C, N, O, F) with B3LYP/6-31G(2df,p) geometries and 12 properties.
"""

from se3t.data.sources.qm9.fetch import fetch, qm9pack_files
from se3t.data.sources.qm9.molecule import read_molecule
from se3t.data.sources.qm9.qm9pack import iter_csv
from se3t.data.sources.qm9.source import QM9Source, build_qm9, check_targets, find_raw
from se3t.data.sources.qm9.vocabulary import (
    ELEMENTS,
    HARTREE_TO_EV,
    QM9_TARGETS,
    TARGET_UNITS,
)
from se3t.data.sources.qm9.xyz import (
    iter_xyz_archive,
    iter_xyz_dir,
    parse_qm9_xyz,
    read_uncharacterized,
)

__all__ = [
    "ELEMENTS",
    "HARTREE_TO_EV",
    "QM9_TARGETS",
    "TARGET_UNITS",
    "QM9Source",
    "build_qm9",
    "check_targets",
    "fetch",
    "find_raw",
    "iter_csv",
    "iter_xyz_archive",
    "iter_xyz_dir",
    "parse_qm9_xyz",
    "qm9pack_files",
    "read_molecule",
    "read_uncharacterized",
]
