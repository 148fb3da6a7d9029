"""Which data a model was trained on, and whether an evaluation uses the same.

Training records in every checkpoint (``"dataset"``) the verified fingerprint of its dataset
store and a hash of its training split's rows. :func:`check_dataset` compares an evaluation's
dataset and split with that record: a model scored on a dataset it was not trained with (whose
"test" split may hold its training molecules) is refused unless the caller explicitly allows it,
and then the metrics say what was evaluated.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from se3t.errors import InputError

__all__ = ["check_dataset", "dataset_record", "rows_sha256"]


def rows_sha256(rows: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows, dtype="<i8").tobytes()).hexdigest()


def dataset_record(train_set: Any) -> dict[str, Any]:
    """What a checkpoint records about its training data (the train split's ``MoleculeDataset``)."""
    return {
        "fingerprint": train_set.store.fingerprint,
        "path": str(train_set.store.path),
        "train_rows_sha256": rows_sha256(train_set.indices),
    }


def check_dataset(
    checkpoint: Path,
    trained: dict[str, Any] | None,
    train_split: Any,
    *,
    allow_other: bool,
    overridden: bool = True,
) -> dict[str, Any]:
    """Compare the evaluation's dataset (``train_split``: its train split, as training would
    have drawn it) with the checkpoint's record; returns what the metrics record.

    Raises InputError on a mismatch (or when the checkpoint predates the record and so cannot
    be checked, with the dataset given explicitly: ``overridden``) unless ``allow_other``."""
    store = train_split.store
    here = {
        "fingerprint": store.fingerprint,
        "path": str(store.path),
        "train_rows_sha256": rows_sha256(train_split.indices),
    }
    if not trained and not overridden:  # an old checkpoint on its own config's dataset
        return {**here, "matches_training": None, "note": "the checkpoint records no dataset"}
    if not trained:
        problem = "it records no dataset (made before se3t recorded one), so this cannot be checked"
    elif trained.get("fingerprint") != here["fingerprint"]:
        problem = (
            f"it was trained on dataset {trained.get('path')} (fingerprint "
            f"{str(trained.get('fingerprint'))[:16]}...), not on {here['path']} (fingerprint "
            f"{here['fingerprint'][:16]}...)"
        )
    elif trained.get("train_rows_sha256") != here["train_rows_sha256"]:
        problem = "its training split differs from the one drawn here (split settings or code)"
    else:
        return {**here, "matches_training": True}
    if not allow_other:
        raise InputError(
            f"checkpoint {str(checkpoint)!r}: {problem}; its test molecules may overlap its "
            "training molecules. Pass --allow-other-dataset to evaluate anyway (the metrics "
            "then say so)"
        )
    return {**here, "matches_training": False, "training": trained, "note": problem}
