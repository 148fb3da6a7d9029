"""Chunk-aware shuffling: random batches that read a chunked basis store chunk by chunk.

A basis chunk holds ~100 whole QM9 molecules (4,096 edge rows). Uniformly random batches of 240
molecules touch ~240 different chunks, each decoded for one molecule: the loader would crawl
whenever the store is read chunk by chunk instead of from RAM. This sampler shuffles at two
levels instead (block shuffling):

1. the chunks' order is a fresh random permutation every epoch;
2. the molecules of each window of ``buffer_chunks`` consecutive chunks (in that order) are
   shuffled together, and the windows' molecules are cut into batches.

Effect on sampling: every molecule of the split is seen exactly once per epoch (as with a random
permutation) but a batch draws from ~``buffer_chunks`` chunks, i.e. a window of about
``buffer_chunks * 100`` molecules that are neighbours in dataset order (QM9's order correlates
with molecule size and composition), rather than from the whole split. With the default 16 chunks
a window holds ~1,600 molecules of QM9's 110,000 training molecules; each chunk is decoded once
per epoch when the store's chunk cache holds two windows (``2 * buffer_chunks`` chunks; a batch
at the seam of two windows touches both), which ``BasisStore.batch_sampler`` ensures. A store
read into memory needs none of this: use plain random sampling there.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

__all__ = ["ChunkShuffleBatchSampler"]


class ChunkShuffleBatchSampler(Sampler[list[int]]):
    """Batches of dataset positions, shuffled chunk-window by chunk-window.

    ``chunk_of [N]``: the basis chunk of each dataset position (``BasisStore.molecule_chunk``
    at the split's store rows). With ``world_size > 1`` each rank takes every ``world_size``-th
    chunk of the epoch's permutation and all ranks yield the same number of batches (the
    shortest rank's count), as DDP requires. Call :meth:`set_epoch` at every epoch.
    """

    def __init__(
        self,
        chunk_of: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = True,
        buffer_chunks: int = 16,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size <= 0 or buffer_chunks <= 0:
            raise ValueError(
                f"batch_size and buffer_chunks must be > 0, got {batch_size}, {buffer_chunks}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.chunk_of = np.asarray(chunk_of, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.buffer_chunks = buffer_chunks
        self.seed = seed
        self.drop_last = drop_last or world_size > 1
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        # positions grouped by chunk, in dataset order within a chunk
        order = np.argsort(self.chunk_of, kind="stable")
        chunks, starts = np.unique(self.chunk_of[order], return_index=True)
        self._chunks = chunks
        self._groups = np.split(order, starts[1:]) if len(order) else []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _rank_positions(self, rng: np.random.Generator | None, rank: int) -> np.ndarray:
        n = len(self._groups)
        perm = rng.permutation(n) if rng is not None else np.arange(n)
        mine = perm[rank :: self.world_size]
        out = []
        for w in range(0, len(mine), self.buffer_chunks):
            window = np.concatenate([self._groups[g] for g in mine[w : w + self.buffer_chunks]])
            if rng is not None:
                window = window[rng.permutation(len(window))]
            out.append(window)
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)

    def _num_batches(self, n: int) -> int:
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _positions(self) -> tuple[np.ndarray, int]:
        rngs = (
            [np.random.default_rng([self.seed, self.epoch]) for _ in range(self.world_size)]
            if self.shuffle
            else [None] * self.world_size
        )
        # every rank derives every rank's count from the same permutation: equal batch counts
        per_rank = [self._rank_positions(rngs[r], r) for r in range(self.world_size)]
        count = min(self._num_batches(len(p)) for p in per_rank)
        return per_rank[self.rank], count

    def __iter__(self) -> Iterator[list[int]]:
        positions, count = self._positions()
        for b in range(count):
            yield positions[b * self.batch_size : (b + 1) * self.batch_size].tolist()

    def __len__(self) -> int:
        return self._positions()[1]
