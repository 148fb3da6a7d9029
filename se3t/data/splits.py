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

from se3t.choices import Split, SplitMethod

__all__ = [
    "SPLITS",
    "SPLIT_METHODS",
    "column_split",
    "scaffold_split",
    "split_indices",
    "split_sizes",
    "store_splits",
]

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


# ------------------------------------------------------------------ splits of users' datasets

SPLIT_METHODS = tuple(m.value for m in SplitMethod)
# spellings of the three splits accepted in a split column (case-insensitive)
_LABELS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


def column_split(labels: list[str], where: str = "split column") -> dict[str, np.ndarray]:
    """Rows by the input's split column (``train``, ``val``/``valid``/``validation``,
    ``test``); any other value is an error naming the row and the value."""
    out: dict[str, list[int]] = {name: [] for name in SPLITS}
    for row, value in enumerate(labels):
        key = _LABELS.get(str(value).strip().lower())
        if key is None:
            raise ValueError(
                f"{where}: row {row}: {value!r} is not a split (use train, val or test)"
            )
        out[key].append(row)
    return {name: np.asarray(rows, dtype=np.int64) for name, rows in out.items()}


def scaffold_split(
    scaffolds: list[str], *, test_fraction: float = 0.1, train_fraction: float = 0.8
) -> dict[str, np.ndarray]:
    """Bemis-Murcko scaffold split: molecules grouped by scaffold SMILES, the groups sorted by
    size (largest first, ties by first row) and given whole to train until it holds
    ``train_fraction`` of the molecules, then to validation until train + val hold
    ``1 - test_fraction``, the rest to test, so no scaffold is in two splits (DeepChem's rule).
    Deterministic: there is no seed. Molecules without a ring share the empty scaffold."""
    num = len(scaffolds)
    groups: dict[str, list[int]] = {}
    for row, s in enumerate(scaffolds):
        groups.setdefault(s, []).append(row)
    ordered = sorted(groups.values(), key=lambda rows: (-len(rows), rows[0]))
    train_cut = train_fraction * num
    val_cut = (1.0 - test_fraction) * num
    out: dict[str, list[int]] = {name: [] for name in SPLITS}
    for rows in ordered:
        if len(out["train"]) + len(rows) <= train_cut:
            out["train"].extend(rows)
        elif len(out["train"]) + len(out["val"]) + len(rows) <= val_cut:
            out["val"].extend(rows)
        else:
            out["test"].extend(rows)
    return {name: np.sort(np.asarray(rows, dtype=np.int64)) for name, rows in out.items()}


def store_splits(
    store,
    method: str = "random",
    *,
    seed: int = 0,
    n_train: int = 100_000,
    test_fraction: float = 0.1,
    train_fraction: float = 0.8,
) -> dict[str, np.ndarray]:
    """The splits of a dataset store by ``method`` (``data.split``): ``random`` (the seeded
    rule above), ``column`` (the store's ``split_label``, from the input's split column) or
    ``scaffold`` (the store's ``scaffold`` per molecule)."""
    from se3t.errors import InputError

    if method == "random":
        return split_indices(
            len(store),
            seed=seed,
            n_train=n_train,
            test_fraction=test_fraction,
            train_fraction=train_fraction,
        )
    if method == "column":
        labels = store.attrs.get("split_label")
        if labels is None:
            raise InputError(
                f"{store.path}: config key 'data.split' is 'column' but the store has no split "
                "column (build it with data.split_column naming a column of the input)"
            )
        try:
            return column_split(list(labels), f"{store.path}: split column")
        except ValueError as err:
            raise InputError(str(err)) from None
    if method == "scaffold":
        scaffolds = store.attrs.get("scaffold")
        if scaffolds is None:
            raise InputError(
                f"{store.path}: config key 'data.split' is 'scaffold' but the store has no "
                "scaffolds (they need bonds: an SDF or SMILES input, or data.graph=bond)"
            )
        return scaffold_split(
            list(scaffolds), test_fraction=test_fraction, train_fraction=train_fraction
        )
    raise InputError(f"config key 'data.split': {method!r} is not one of {list(SPLIT_METHODS)}")
