"""Resumable, distributed batch sampling: every epoch's order is a pure function of
``(seed, epoch)``, so a run resumed mid-epoch replays exactly the batches it had left.

Epoch ``e`` shuffles the split with ``torch.randperm(n, generator=seed(seed + e))`` and cuts it
into *global* batches of ``batch_size`` molecules (the last, shorter one kept unless it has
fewer molecules than ranks). Rank ``r`` of ``w`` takes positions ``r, r + w, ...`` of each global
batch, so the ranks together see exactly the batches of a one-process run with the same
``batch_size``: with the loss of each rank normalized by the global batch's size (see
``se3t.train.loop``), DDP's averaged gradient equals the one-process gradient.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["ChunkResumableBatchSampler", "ResumableBatchSampler"]


class ResumableBatchSampler(Sampler[list[int]]):
    """Batches of dataset positions for one rank; ``set_epoch(e, start=k)`` skips the epoch's
    first ``k`` global batches (the position a checkpoint stored)."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if n <= 0:
            raise ValueError(f"ResumableBatchSampler: empty split (n={n})")
        if batch_size < world_size:
            raise ValueError(
                f"ResumableBatchSampler: batch size {batch_size} < world size {world_size}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"ResumableBatchSampler: rank {rank} outside world of {world_size}")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def global_batches(self) -> list[torch.Tensor]:
        """This epoch's global batches (all ranks), before skipping."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        batches = list(order.split(self.batch_size))
        if len(batches[-1]) < self.world_size:
            batches.pop()
        return batches

    def __len__(self) -> int:
        """Global batches per epoch (the same on every rank), ignoring ``start``."""
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest >= self.world_size else 0)

    def __iter__(self) -> Iterator[list[int]]:
        for b in self.global_batches()[self.start :]:
            yield b[self.rank :: self.world_size].tolist()


class ChunkResumableBatchSampler(Sampler[list[int]]):
    """The basis store's chunk-aware sampler (``BasisStore.batch_sampler``,
    :class:`se3t.basis.sampler.ChunkShuffleBatchSampler`) made resumable like
    :class:`ResumableBatchSampler`: ``set_epoch(e, start=k)`` skips the epoch's first ``k``
    batches. Its order is a pure function of ``(seed, epoch)`` too, so a resumed run replays it.

    Each rank draws its own chunks and yields batches of ``batch_size // world_size`` molecules
    (``world_size > 1`` drops every rank's last, short batch so all ranks make the same number
    of steps): the global batch is ``world_size`` local batches, and its size is
    ``len(local batch) * world_size`` (:meth:`global_size`).
    """

    def __init__(
        self,
        store,
        indices,
        batch_size: int,
        *,
        buffer_chunks: int = 16,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(
                f"batch size {batch_size} is not a multiple of world size {world_size}"
            )
        self.inner = store.batch_sampler(
            indices,
            batch_size // world_size,
            shuffle=True,
            buffer_chunks=buffer_chunks,
            seed=seed,
            rank=rank,
            world_size=world_size,
        )
        self.world_size = world_size
        self.epoch = 0
        self.start = 0
        self._len: tuple[int, int] | None = None  # (epoch, len) cache

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start
        self.inner.set_epoch(epoch)

    def global_size(self, local: int) -> int:
        return local * self.world_size

    def __len__(self) -> int:
        """Batches of the current epoch (every rank the same; may vary by one between epochs),
        ignoring ``start``."""
        if self._len is None or self._len[0] != self.epoch:
            self.inner.set_epoch(self.epoch)
            self._len = (self.epoch, len(self.inner))
        return self._len[1]

    def __iter__(self) -> Iterator[list[int]]:
        self.inner.set_epoch(self.epoch)
        for k, b in enumerate(self.inner):
            if k >= self.start:
                yield b
