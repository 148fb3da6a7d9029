"""Train / validation / test splits of the dataset store's rows, deterministic from a seed.

Full QM9 follows NVIDIA's SE3Transformer recipe: ``n_train`` (100,000) molecules for training,
``int(test_fraction * M)`` for testing and the rest for validation, drawn as
``torch.utils.data.random_split(range(M), [train, val, test], generator=manual_seed(seed))``
does: one ``torch.randperm(M)`` cut in that order. With the store in gdb order (as the build
writes it, and as DGL's QM9EdgeDataset is) and seed 0, the splits are NVIDIA's.

A subset too small for that (``M - n_train - int(test_fraction * M) < 1``) uses fractions:
``int(train_fraction * M)`` train, ``int(test_fraction * M)`` test, the rest validation.
"""

from __future__ import annotations

import numpy as np
import torch

from se3t.choices import Split

__all__ = ["SPLITS", "split_indices", "split_sizes"]

SPLITS = tuple(s.value for s in Split)  # in the order of the cuts


def split_sizes(
    num: int, *, n_train: int = 100_000, test_fraction: float = 0.1, train_fraction: float = 0.8
) -> tuple[int, int, int]:
    """(train, val, test) sizes for ``num`` molecules; see the module docstring."""
    if num < 3:
        raise ValueError(f"split_sizes: need at least 3 molecules to split, got {num}")
    n_test = int(test_fraction * num)
    if num - n_train - n_test >= 1:
        return n_train, num - n_train - n_test, n_test
    n_train = int(train_fraction * num)
    n_test = max(1, int(test_fraction * num))
    n_train = max(1, min(n_train, num - n_test - 1))
    return n_train, num - n_train - n_test, n_test


def split_indices(
    num: int,
    *,
    seed: int = 0,
    n_train: int = 100_000,
    test_fraction: float = 0.1,
    train_fraction: float = 0.8,
) -> dict[str, np.ndarray]:
    """Store rows of each split (``train``, ``val``, ``test``; np.int64, disjoint, covering all)."""
    sizes = split_sizes(
        num, n_train=n_train, test_fraction=test_fraction, train_fraction=train_fraction
    )
    perm = torch.randperm(num, generator=torch.Generator().manual_seed(seed)).numpy()
    cuts = np.cumsum((0, *sizes))
    return {name: perm[cuts[i] : cuts[i + 1]].astype(np.int64) for i, name in enumerate(SPLITS)}
