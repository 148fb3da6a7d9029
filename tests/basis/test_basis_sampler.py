"""Chunk-aware shuffling: every molecule once per epoch, batches confined to chunk windows,
equal batch counts across DDP ranks, and a chunk decoded once per epoch through the store."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from basis_helpers import build

from se3t.basis import ChunkShuffleBatchSampler, open_basis
from se3t.data import MoleculeDataset, collate
from se3t.data.store import fingerprint
from se3t.so3.basis import compute_basis_flat


def _chunks(n=1000, per=37):
    return np.repeat(np.arange(-(-n // per)), per)[:n]


@pytest.mark.parametrize("drop_last", [False, True])
def test_each_position_once_per_epoch(drop_last):
    chunk_of = _chunks()
    s = ChunkShuffleBatchSampler(chunk_of, 64, buffer_chunks=4, seed=3, drop_last=drop_last)
    batches = list(s)
    assert len(batches) == len(s)
    seen = np.concatenate(batches)
    assert len(seen) == len(np.unique(seen))
    if drop_last:
        assert all(len(b) == 64 for b in batches) and len(seen) == 1000 // 64 * 64
    else:
        assert sorted(seen.tolist()) == list(range(1000))
    s.set_epoch(1)
    assert list(s) != batches  # a new order every epoch
    s.set_epoch(0)
    assert list(s) == batches  # reproducible


def test_batches_stay_within_a_chunk_window():
    chunk_of = _chunks()
    s = ChunkShuffleBatchSampler(chunk_of, 50, buffer_chunks=4, seed=0)
    for b in s:
        assert len(np.unique(chunk_of[b])) <= 8  # one window, or the seam of two
    # and the order is really shuffled, not dataset order
    flat = np.concatenate(list(s))
    assert (np.diff(flat) != 1).mean() > 0.5


def test_no_shuffle_is_dataset_order():
    s = ChunkShuffleBatchSampler(_chunks(), 100, shuffle=False)
    assert np.concatenate(list(s)).tolist() == list(range(1000))


def test_ranks_split_chunks_with_equal_batch_counts():
    chunk_of = _chunks(1000, 29)
    ranks = [ChunkShuffleBatchSampler(chunk_of, 20, world_size=3, rank=r, seed=5) for r in range(3)]
    counts = {len(list(r)) for r in ranks}
    assert len(counts) == 1
    seen = [np.concatenate(list(r)) for r in ranks]
    all_seen = np.concatenate(seen)
    assert len(all_seen) == len(np.unique(all_seen))  # disjoint
    chunk_sets = [set(chunk_of[x].tolist()) for x in seen]
    assert not (chunk_sets[0] & chunk_sets[1]) and not (chunk_sets[1] & chunk_sets[2])


def test_store_sampler_reads_each_chunk_once(qm9_store, tmp_path):
    store_path = build(qm9_store, tmp_path)
    store = open_basis(
        store_path,
        dataset_fingerprint=fingerprint(qm9_store),
        max_degree=3,
        dtype="float32",
        read="chunks",
        cache_chunks=5,
    )
    ds = MoleculeDataset(
        qm9_store, split="train", n_train=200, test_fraction=0.1, train_fraction=0.7
    )
    reads = []
    real = store._read_rows
    store._read_rows = lambda r0, r1, what: reads.append(r0) or real(r0, r1, what=what)
    sampler = store.batch_sampler(ds.indices, 16, buffer_chunks=4, seed=0)
    n = 0
    for positions in sampler:
        batch = collate([ds[i] for i in positions])
        torch.testing.assert_close(
            store.gather(batch.index), compute_basis_flat(batch.edge_vec, 3), rtol=1e-5, atol=1e-6
        )
        n += len(positions)
    assert n == len(ds)
    assert len(reads) == len(set(reads))  # every chunk decoded once in the epoch
