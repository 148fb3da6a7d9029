"""Fixtures of the evaluation tests: one tiny model really trained on the real QM9 test store,
evaluated once, and one small real profile sweep; tests that change files work on copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# a tiny model so that training, evaluation and the profile take seconds on 2 CPU cores
TINY = [
    "model.num_layers=1",
    "model.max_degree=1",
    "model.channels=8",
    "model.channels_div=2",
    "model.heads=2",
    "model.radial_hidden=8",
    "train.epochs=2",
    "train.batch_size=32",
    "train.device=cpu",
    "train.log_every=1",
    "eval.batch_size=40",
    "basis.use=compute",
]


def tiny_config(qm9_store: Path, run_dir: Path, *extra: str):
    from se3t.config import load

    return load(None, [*TINY, f"data.path={qm9_store}", f"run.dir={run_dir}", *extra])


@pytest.fixture(scope="session")
def trained_run(qm9_store, tmp_path_factory) -> Path:
    """A run folder of a tiny model trained for two epochs on the real QM9 test store."""
    from se3t.train import train

    run_dir = tmp_path_factory.mktemp("eval") / "run"
    train(tiny_config(qm9_store, run_dir))
    assert (run_dir / "last.pt").is_file()
    return run_dir


@pytest.fixture(scope="session")
def evaluated_run(trained_run) -> Path:
    """The trained run folder after ``se3t evaluate RUN --split test`` (read-only for tests)."""
    from se3t.eval import evaluate

    evaluate(trained_run, "test", progress=False)
    return trained_run


@pytest.fixture(scope="session")
def tiny_config_file(qm9_store, tmp_path_factory) -> Path:
    from se3t.config import save

    folder = tmp_path_factory.mktemp("eval_cfg")
    return save(tiny_config(qm9_store, folder / "run"), folder / "tiny.yaml")


@pytest.fixture(scope="session")
def profiled(tiny_config_file, tmp_path_factory) -> Path:
    """A real CPU profile sweep (fp32, pairwise) under a 0.8 GiB memory cap: batches 4, 256 and
    1024 fit, 6000 (~0.95 GiB) runs out of memory, 12000 is then skipped. Its output folder."""
    from se3t.config import load
    from se3t.eval import profile

    out = tmp_path_factory.mktemp("profile")
    cfg = load(
        tiny_config_file,
        [
            "eval.profile_batch_sizes=[4,256,1024,6000,12000]",
            "eval.profile_precision=[fp32]",
            "eval.profile_fusion=[pairwise]",
            "eval.profile_steps=1",
            "eval.profile_memory_limit_gb=0.8",
        ],
    )
    profile(cfg, out, progress=False)
    return out


@pytest.fixture
def results_copy(evaluated_run, profiled, tmp_path) -> Path:
    """A writable results folder: the evaluated run under runs/tiny and the profile."""
    root = tmp_path / "results"
    shutil.copytree(evaluated_run, root / "runs" / "tiny")
    shutil.copytree(profiled, root / "profile")
    return root
