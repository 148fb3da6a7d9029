"""Stores written by the code before the one builder open, verify, and are up to date for it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from se3t.config import DataConfig
from se3t.data import MoleculeDataset, open_dataset
from se3t.data.sources.own import build_molecules
from se3t.data.sources.qm9 import QM9_TARGETS, build_qm9
from se3t.data.store import FORMAT_VERSION
from se3t.errors import InputError

BEFORE = Path(__file__).parent / "stores_before"
QM9PACK = Path(__file__).parent / "qm9" / "qm9pack"


def _cmet_config(**kw) -> DataConfig:
    from rdkit import RDConfig

    sdf = Path(RDConfig.RDContribDir) / "FreeWilson" / "data" / "cmet_ligands.sdf"
    assert sdf.is_file(), f"the RDKit wheel no longer ships {sdf}"
    return DataConfig(
        source=str(sdf), targets=["r_exp_dg"], units={"r_exp_dg": "kcal/mol"}, limit=8, **kw
    )


def test_qm9_store_before_opens_and_is_up_to_date(tmp_path):
    old = tmp_path / "qm9.zarr"
    shutil.copytree(BEFORE / "qm9.zarr", old)
    store = open_dataset(old)
    store.verify()
    assert len(store) == 12 and store.target_names == list(QM9_TARGETS)
    ds = MoleculeDataset(old, split="all", targets=("homo", "U0"))
    assert len(ds) == 12
    # the same inputs and settings: the new build takes the old store as up to date...
    again = build_qm9(QM9PACK, old, limit=12, processes=1, progress=False)
    assert again["skipped"] and again["fingerprint"] == store.fingerprint
    # ...and a fresh build writes the same content (so basis stores keyed on it stay valid)
    fresh = build_qm9(QM9PACK, tmp_path / "new.zarr", limit=12, processes=1, progress=False)
    assert fresh["fingerprint"] == store.fingerprint
    new = open_dataset(tmp_path / "new.zarr")
    for name, arr in store.arrays().items():
        np.testing.assert_array_equal(arr, new.arrays()[name], err_msg=name)


def test_own_store_before_opens_and_is_up_to_date(tmp_path):
    old = tmp_path / "cmet.zarr"
    shutil.copytree(BEFORE / "cmet.zarr", old)
    store = open_dataset(old)
    assert len(store) == 8 and store.target_names[0] == "r_exp_dg"
    assert store.encoding.bonds == "file"
    again = build_molecules(_cmet_config(), old, progress=False)
    assert again["skipped"] and again["fingerprint"] == store.fingerprint
    fresh = build_molecules(_cmet_config(), tmp_path / "new.zarr", progress=False)
    assert fresh["fingerprint"] == store.fingerprint


def test_store_of_another_format_version_is_refused_with_the_rebuild_command(tmp_path):
    import zarr

    old = tmp_path / "qm9.zarr"
    shutil.copytree(BEFORE / "qm9.zarr", old)
    group = zarr.open_group(str(old), mode="r+")
    group.attrs["format_version"] = FORMAT_VERSION - 1
    with pytest.raises(InputError) as err:
        open_dataset(old)
    message = str(err.value)
    assert "\n" not in message and "rebuild it with `se3t data build`" in message
