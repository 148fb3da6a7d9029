"""Checkpoint files, RNG capture, the resumable sampler, the LR schedule, the DDP environment."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from se3t.errors import InputError
from se3t.train.checkpoint import (
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from se3t.train.distributed import detect
from se3t.train.sampler import ResumableBatchSampler
from se3t.train.schedule import lr_factor


def _minimal_state():
    return {"model": {"w": torch.ones(2)}, "config": {}, "target_stats": {}, "epoch": 0, "step": 0}


def test_checkpoint_round_trip_and_atomic(tmp_path):
    path = save_checkpoint({**_minimal_state(), "rng": capture_rng()}, tmp_path / "last.pt")
    state = load_checkpoint(path)
    assert torch.equal(state["model"]["w"], torch.ones(2))
    # no temporary files are left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    # a run folder resolves to its last.pt
    assert load_checkpoint(tmp_path)["format"] == "se3t-checkpoint"


def test_checkpoint_save_failure_keeps_old_file(tmp_path):
    path = save_checkpoint(_minimal_state(), tmp_path / "last.pt")
    before = path.read_bytes()

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(Exception):  # noqa: B017 (pickling error of the torch version)
        save_checkpoint({**_minimal_state(), "bad": Boom()}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoint_never_runs_code(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": "se3t-checkpoint", "model": _Evil()}, path)
    with pytest.raises(InputError, match="evil.pt"):
        load_checkpoint(path)
    assert "code ran" not in capsys.readouterr().out


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(1)}, other)
    with pytest.raises(InputError, match="other.pt.*not a se3t checkpoint"):
        load_checkpoint(other)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(pickle.dumps([1, 2], protocol=2) + b"garbage")
    with pytest.raises(InputError, match="junk.pt"):
        load_checkpoint(junk)
    (tmp_path / "run").mkdir()
    with pytest.raises(InputError, match="no checkpoint"):
        load_checkpoint(tmp_path / "run")


def test_rng_states_survive_a_checkpoint(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    save_checkpoint({**_minimal_state(), "rng": capture_rng()}, tmp_path / "c.pt")
    expect = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng(load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    # restored generator states replay the same draws: exact by construction
    assert torch.equal(expect[0], got[0])
    assert np.array_equal(expect[1], got[1])
    assert expect[2] == got[2]


@pytest.mark.parametrize("n,batch,world", [(100, 16, 1), (100, 16, 2), (101, 10, 3), (7, 4, 2)])
def test_ranks_together_see_the_one_process_batches(n, batch, world):
    one = ResumableBatchSampler(n, batch, seed=5)
    one.set_epoch(2)
    ranks = [
        ResumableBatchSampler(n, batch, seed=5, rank=r, world_size=world) for r in range(world)
    ]
    for s in ranks:
        s.set_epoch(2)
    per_rank = [list(s) for s in ranks]
    assert len({len(b) for b in per_rank}) == 1  # every rank the same number of batches
    assert all(len(b) == len(ranks[0]) for b in per_rank)
    for i, global_batch in enumerate(one):
        if len(global_batch) < world:
            continue  # dropped in the distributed sampler (a rank would get nothing)
        together = sorted(x for r in range(world) for x in per_rank[r][i])
        assert together == sorted(global_batch)
    # every molecule once per epoch (up to the dropped remainder)
    seen = [x for b in per_rank for batch_ in b for x in batch_]
    assert len(seen) == len(set(seen)) >= n - world + 1


def test_sampler_resume_skips_consumed_batches_and_epochs_differ():
    s = ResumableBatchSampler(50, 8, seed=1)
    s.set_epoch(3)
    full = list(s)
    s.set_epoch(3, start=4)
    assert list(s) == full[4:]
    s.set_epoch(4)
    assert list(s) != full


def test_lr_schedule_warmup_then_cosine_to_min():
    f = [lr_factor(s, warmup=4, total=20, kind="cosine", min_ratio=0.1) for s in range(21)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[4:], f[5:], strict=False))  # decays
    assert f[20] == pytest.approx(0.1)
    assert lr_factor(10, warmup=0, total=20, kind="constant", min_ratio=0.1) == 1.0


def test_detect_reads_torchrun_and_slurm_environments():
    assert detect({}).world_size == 1
    env = detect(
        {
            "RANK": "1",
            "WORLD_SIZE": "4",
            "LOCAL_RANK": "1",
            "MASTER_ADDR": "h",
            "MASTER_PORT": "1234",
        }
    )
    assert (env.rank, env.world_size, env.local_rank, env.master_port) == (1, 4, 1, 1234)
    env = detect(
        {
            "SLURM_PROCID": "3",
            "SLURM_NTASKS": "4",
            "SLURM_LOCALID": "1",
            "SLURM_JOB_ID": "77",
            "SLURM_JOB_NODELIST": "node7",
        }
    )
    assert (env.rank, env.world_size, env.local_rank) == (3, 4, 1)
    assert env.master_addr == "node7" and env.master_port == 20077
    # a world of several without a rendezvous address is refused, never localhost
    with pytest.raises(InputError, match="MASTER_ADDR"):
        detect({"RANK": "0", "WORLD_SIZE": "2"})
    assert detect({"RANK": "0", "WORLD_SIZE": "1"}).world_size == 1


def test_checkpoint_records_model_code_and_warns_when_it_changed(tmp_path):
    from se3t.train.checkpoint import model_code_version, warn_if_model_code_changed

    path = save_checkpoint(_minimal_state(), tmp_path / "c.pt")
    state = load_checkpoint(path)
    assert state["model_code"] == model_code_version()
    assert not warn_if_model_code_changed(state, path)
    state["model_code"] = "0" * 16
    with pytest.warns(UserWarning, match="other model code"):
        assert warn_if_model_code_changed(state, path)


def test_chunk_sampler_resumes_and_splits_the_global_batch_over_ranks(qm9_store, tmp_path):
    """The training wrapper of the basis store's chunk-aware sampler: skipping ``start``
    batches replays the rest of the epoch; each of 2 ranks yields half-size batches, as many
    as the other, from its own chunks; every batch draws from at most 2 windows of chunks."""
    from se3t.basis import BasisSettings, finalize, open_basis, precompute
    from se3t.data import MoleculeDataset
    from se3t.data.store import fingerprint
    from se3t.train.sampler import ChunkResumableBatchSampler

    receipt = precompute(
        qm9_store,
        tmp_path / "cache",
        BasisSettings(max_degree=1, dtype="float32", chunk_edges=1024),
        progress=False,
    )
    finalize(receipt["store"])
    store = open_basis(
        receipt["store"],
        dataset_fingerprint=fingerprint(qm9_store),
        max_degree=1,
        dtype="float32",
        read="chunks",
        cache_chunks=2,
    )
    assert store.read == "chunks"
    idx = MoleculeDataset(qm9_store, split="train").indices
    one = ChunkResumableBatchSampler(store, idx, 32, buffer_chunks=2, seed=3)
    one.set_epoch(1)
    full = list(one)
    assert len(full) == len(one) == -(-len(idx) // 32)
    assert sorted(p for b in full for p in b) == list(range(len(idx)))  # each molecule once
    chunk = store.molecule_chunk[idx]
    assert max(len(set(chunk[b].tolist())) for b in full) <= 4  # 2 windows of 2 chunks
    one.set_epoch(1, start=3)
    assert list(one) == full[3:]
    one.set_epoch(2)
    assert list(one) != full  # a new order every epoch
    ranks = [
        ChunkResumableBatchSampler(store, idx, 32, buffer_chunks=2, seed=3, rank=r, world_size=2)
        for r in range(2)
    ]
    for s in ranks:
        s.set_epoch(1)
    a, b = list(ranks[0]), list(ranks[1])
    assert len(a) == len(b) == len(ranks[0]) > 0
    assert all(len(x) == 16 for x in a + b) and ranks[0].global_size(16) == 32
    assert not {p for x in a for p in x} & {p for x in b for p in x}
    with pytest.raises(ValueError, match="multiple of world size"):
        ChunkResumableBatchSampler(store, idx, 31, world_size=2)
