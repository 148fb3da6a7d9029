"""The basis cache can never be poisoned by a damaged dataset, verify covers every file of a
store, and a damaged shard is never sealed in. Real stores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from basis_helpers import build, settings, shard_files, stored_rows
from faults import cli, damage, rewrite_values

from se3t.basis import basis_key, finalize, list_stores, open_basis, precompute, verify
from se3t.data.store import fingerprint
from se3t.errors import InputError


@pytest.fixture
def damaged_dataset(qm9_store, tmp_path):
    """The test store with every position zeroed by a deleted chunk, fingerprint untouched."""
    out = tmp_path / "qm9.zarr"
    shutil.copytree(qm9_store, out)
    (out / "pos" / "c" / "0" / "0").unlink()
    return out


@pytest.fixture(scope="module")
def sealed(qm9_store, tmp_path_factory):
    """A finalized store, copied by each test that damages it."""
    return Path(build(qm9_store, tmp_path_factory.mktemp("sealed")))


def _copy(store: Path, tmp_path: Path) -> Path:
    out = tmp_path / store.name
    shutil.copytree(store, out)
    return out


def test_precompute_refuses_a_damaged_dataset(damaged_dataset, tmp_path):
    """Before: the zero-position store got the clean store's key and poisoned the cache."""
    cache = tmp_path / "cache"
    with pytest.raises(InputError, match=r"'pos' chunk 0 \(file pos/c/0/0\) is missing"):
        precompute(damaged_dataset, cache, settings(), progress=False)
    assert list_stores(cache) == []  # nothing under the clean key (or any key)


def test_precompute_refuses_altered_values_even_for_a_complete_store(qm9_store, sealed, tmp_path):
    """A complete store for the clean key exists: precompute still verifies the dataset it was
    asked to read instead of reporting the clean store as its result."""
    data = _copy(qm9_store, tmp_path)
    rewrite_values(data, "pos")
    cache = sealed.parent.parent  # CACHE/basis/KEY.zarr
    with pytest.raises(InputError, match=r"'pos' chunk 0 .* differs"):
        precompute(data, cache, settings(), progress=False)


def test_verify_recomputes_from_the_verified_dataset(sealed, damaged_dataset):
    with pytest.raises(InputError, match=r"'pos' chunk 0"):
        verify(sealed, sample=50, dataset=damaged_dataset)


def test_checksums_cover_every_file(sealed):
    files = json.loads((sealed / "checksums.json").read_text())["files"]
    assert {"zarr.json", "basis/zarr.json", "edge_count/c/0", "row_start/c/0"} <= set(files)
    assert {"chunk_mols/c/0", "chunk_mols/zarr.json"} <= set(files)
    assert {f"basis/c/{u}/0" for u in range(8)} <= set(files)


@pytest.mark.parametrize("name", ["edge_count/c/0", "row_start/c/0", "chunk_mols/c/0", "zarr.json"])
def test_verify_names_a_damaged_index_or_metadata_file(sealed, tmp_path, capsys, name):
    """Before: a corrupted edge_count/c/0 verified OK, then failed with a raw zstd error."""
    copy = _copy(sealed, tmp_path)
    damage(copy / name, "flip")
    if name == "zarr.json":  # the group itself: nothing opens it, and the error says so
        code, out, err = cli(capsys, "basis", "verify", str(copy), "--sample", "20")
        assert code == 2 and "zarr.json" in err and "Traceback" not in err
        return
    report = verify(copy, sample=20)
    assert not report.ok and any(b.startswith(f"{name}:") for b in report.bad_files)
    code, out, err = cli(capsys, "basis", "verify", str(copy), "--sample", "20")
    assert code == 1 and f"BAD {name}" in out and "FAILED" in out


@pytest.mark.parametrize("name", ["edge_count/c/0", "row_start/c/0", "chunk_mols/c/0"])
def test_readers_refuse_a_missing_index_array(sealed, qm9_store, tmp_path, name):
    copy = _copy(sealed, tmp_path)
    damage(copy / name, "delete")
    with pytest.raises(InputError, match=rf"{name}: missing"):
        open_basis(copy, dataset_fingerprint=fingerprint(qm9_store), max_degree=3, dtype="float32")


def test_a_truncated_shard_is_recomputed_never_sealed(qm9_store, tmp_path, caplog):
    """Before: precompute reused a truncated shard (0 computed) and finalize sealed it."""
    first = precompute(qm9_store, tmp_path, settings(), progress=False)
    reference = stored_rows(first["store"])
    victim = shard_files(first["store"])[3]
    damage(victim, "truncate")
    with pytest.raises(InputError, match=r"basis/c/3/0: .*(CRC32C|truncated)"):
        finalize(first["store"])
    assert not (Path(first["store"]) / "checksums.json").exists()
    with caplog.at_level("WARNING", logger="se3t.basis"):
        again = precompute(qm9_store, tmp_path, settings(), progress=False)
    assert again["chunks_computed"] == 2 and "basis/c/3/0 is damaged" in caplog.text
    finalize(again["store"])
    np.testing.assert_array_equal(stored_rows(again["store"]), reference)
    assert verify(again["store"], sample=100).ok


@pytest.mark.parametrize("fault", ["flip", "truncate"])
def test_finalize_refuses_a_damaged_shard(qm9_store, tmp_path, fault):
    first = precompute(qm9_store, tmp_path, settings(), progress=False)
    damage(shard_files(first["store"])[1], fault)
    with pytest.raises(InputError, match=r"not finalized: basis/c/1/0: .*precompute"):
        finalize(first["store"])


def test_the_key_is_that_of_the_verified_content(qm9_store, sealed):
    meta = json.loads((sealed / "zarr.json").read_text())["attributes"]["se3t_basis"]
    assert meta["key"] == basis_key(fingerprint(qm9_store), 3, "float32")
