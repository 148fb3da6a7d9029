"""A damaged dataset store is refused by every reader, naming the array and chunk, and a rebuild
over it rebuilds. Real stores of the committed QM9 molecules."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from faults import FAULTS, QM9PACK, damage, rewrite_values

from se3t.data.sources.qm9 import build_qm9
from se3t.data.store import open_dataset
from se3t.errors import InputError


@pytest.fixture
def store(qm9_store, tmp_path):
    """A private copy of the session's dataset store, free to damage."""
    out = tmp_path / "qm9.zarr"
    shutil.copytree(qm9_store, out)
    return out


def test_an_intact_store_opens(store):
    ds = open_dataset(store)
    assert len(ds) == 275 and np.isfinite(ds.pos).all()


@pytest.mark.parametrize("array", ["pos", "targets", "species"])
def test_a_deleted_chunk_is_an_error_never_zeros(store, array):
    chunk = "c/0/0" if array in ("pos", "targets") else "c/0"
    (store / array / chunk).unlink()
    with pytest.raises(
        InputError, match=rf"array '{array}' chunk 0 \(file {array}/{chunk}\) is missing"
    ):
        open_dataset(store)


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("array", ["pos", "targets", "src", "edge_offsets"])
def test_every_fault_names_the_array(store, array, fault):
    files = sorted((store / array / "c").rglob("*"))
    damage(next(f for f in files if f.is_file()), fault)
    with pytest.raises(InputError, match=rf"'{array}' (chunk 0|is missing)"):
        open_dataset(store)


@pytest.mark.parametrize("array", ["pos", "targets", "bond_type", "mol_id"])
def test_altered_values_that_still_decode_are_refused(store, array):
    """The bytes decode (rewritten through Zarr): only the content hash can tell, and the
    per-chunk checksums then name the chunk."""
    rewrite_values(store, array)
    with pytest.raises(InputError, match=rf"array '{array}' chunk 0 .* differs from its checksum"):
        open_dataset(store)


def test_a_rebuild_over_a_damaged_store_rebuilds(tmp_path, caplog):
    out = tmp_path / "qm9.zarr"
    first = build_qm9(QM9PACK, out, processes=1, progress=False)
    assert not first["skipped"]
    again = build_qm9(QM9PACK, out, processes=1, progress=False)
    assert again["skipped"]  # intact and same inputs: up to date
    (out / "pos" / "c" / "0" / "0").unlink()
    with caplog.at_level("WARNING", logger="se3t.data"):
        repaired = build_qm9(QM9PACK, out, processes=1, progress=False)
    assert not repaired["skipped"] and "'pos' chunk 0" in caplog.text
    assert repaired["fingerprint"] == first["fingerprint"]
    assert np.isfinite(open_dataset(out).pos).all()
