"""Fault injection: every array of every store, deleted, truncated or flipped, is refused by
every command that reads the store, with a non-zero exit and a message naming the array.

The guard against silent failures (a damaged store read as zeros, trained on, exit 0). Real
stores of the committed QM9 molecules, real commands (the ``se3t`` entry point, in process)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from faults import FAULTS, cli, config_args, damage

from se3t.basis import BasisSettings, finalize, precompute, write_manifest
from se3t.data.store import ARRAYS

# a tiny real model (degrees 0..1), as in the training tests
TINY = [
    "model.num_layers=1",
    "model.max_degree=1",
    "model.channels=8",
    "model.heads=2",
    "model.radial_hidden=8",
    "basis.max_degree=1",
    "train.batch_size=32",
    "train.max_steps=2",
]
BASIS_FILES = ["basis/c/0/0", "row_start/c/0", "edge_count/c/0", "chunk_mols/c/0", "zarr.json"]


@pytest.fixture(scope="module")
def world(qm9_store, tmp_path_factory):
    """A config file, a trained run and a sealed basis store with its manifest, all clean."""
    from se3t.config import load, save
    from se3t.train import train

    root = tmp_path_factory.mktemp("faults")
    cfg = save(load(None, [*TINY, f"data.path={qm9_store}"]), root / "tiny.yaml")
    train(load(cfg, [f"run.dir={root / 'run'}"]), progress=False)
    settings = BasisSettings(max_degree=1, chunk_edges=512, chunks_per_shard=2, compressor="zstd")
    store = precompute(qm9_store, root / "cache", settings, progress=False)["store"]
    finalize(store)
    return {"root": root, "config": cfg, "run": root / "run", "store": Path(store)}


def _chunk_file(store: Path, array: str) -> Path:
    return next(p for p in sorted((store / array / "c").rglob("*")) if p.is_file())


def _refused(capsys, argv: list, name: str) -> str:
    code, out, err = cli(capsys, *argv)
    text = out + err
    assert code != 0, f"se3t {' '.join(map(str, argv))} exited 0 on a damaged store"
    # an array is named quoted or as the start of its file's path (bare, "pos" would match any
    # path holding "pos"); a file by its name
    named = name in text if "." in name else (f"'{name}'" in text or f"{name}/" in text)
    assert named, text
    assert "Traceback" not in text
    return text


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("array", list(ARRAYS))
def test_a_damaged_dataset_store_is_refused_by_every_reader(
    qm9_store, world, tmp_path, capsys, array, fault
):
    data = tmp_path / "qm9.zarr"
    shutil.copytree(qm9_store, data)
    damage(_chunk_file(data, array), fault)
    readers = {
        "data info": ["data", "info", data, "--verify"],
        "train": [
            *config_args(["train"], world["config"]),
            f"data.path={data}",
            f"run.dir={tmp_path / 'run'}",
            "--no-progress",
        ],
        "basis precompute": [
            "basis",
            "precompute",
            "--dataset",
            data,
            "--cache",
            tmp_path / "cache",
            "--quiet",
            "basis.max_degree=1",
        ],
        "basis verify": ["basis", "verify", world["store"], "--dataset", data, "--sample", "50"],
        "evaluate": [
            "evaluate",
            world["run"],
            "--dataset",
            data,
            "--out",
            tmp_path / "eval",
            "--allow-other-dataset",
            "--quiet",
        ],
    }
    for argv in readers.values():
        _refused(capsys, argv, array)
    assert not (tmp_path / "run" / "last.pt").exists()
    assert not list((tmp_path / "cache").rglob("checksums.json"))


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("name", BASIS_FILES)
def test_a_damaged_basis_store_is_refused_by_every_reader(world, tmp_path, capsys, name, fault):
    store = tmp_path / world["store"].name
    shutil.copytree(world["store"], store)
    damage(store / name, fault)
    manifest = tmp_path / "basis.json"
    if name != "zarr.json":
        write_manifest(store, manifest)  # the run points at the damaged store
    else:
        manifest = store  # nothing can describe a store whose zarr.json is gone
    readers = {
        "train": [
            *config_args(["train"], world["config"]),
            "basis.use=store",
            f"basis.manifest={manifest}",
            "basis.read=memory",
            f"run.dir={tmp_path / 'run'}",
            "--no-progress",
        ],
        "basis verify": ["basis", "verify", store, "--sample", "50"],
    }
    array = name.split("/")[0]
    for argv in readers.values():
        _refused(capsys, argv, "zarr.json" if array == "zarr.json" else array)
    assert not (tmp_path / "run" / "last.pt").exists()
