"""A run's inputs, opened and checked before any training work: the dataset store and its
targets, the basis store (when used) and a checkpoint to resume. Errors name file and field."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from se3t.basis import open_basis
from se3t.choices import BasisRead, BasisUse
from se3t.config import Config, to_dict
from se3t.data import MoleculeDataset, fingerprint
from se3t.errors import InputError
from se3t.location import Location
from se3t.models import build
from se3t.train.checkpoint import (
    check_model_state,
    checkpoint_config,
    load_checkpoint,
    warn_if_model_code_changed,
)

__all__ = ["Inputs", "check_inputs"]

log = logging.getLogger("se3t.train")


@dataclass
class Inputs:
    cfg: Config  # with model.out_dim set to the number of targets
    train_set: Any
    val_set: Any
    basis_store: Any
    resume_path: Path
    resume_state: dict[str, Any] | None


def check_inputs(cfg: Config, *, world_size: int = 1, model: bool = False) -> Inputs:
    """Open and check every input of a run before any training work: the dataset store and
    its targets, the basis store (when used), and a checkpoint to resume (its model settings
    and targets; with ``model=True`` also its parameter shapes against the built model).
    Raises :class:`InputError` naming the file and field."""
    t = cfg.train
    if t.batch_size < world_size:
        raise InputError(
            f"config key 'train.batch_size': {t.batch_size} is smaller than the {world_size} "
            "ranks of this job (it is the global batch)"
        )
    data = Location.from_config(cfg, "data.path")
    data_path = Path(cfg.data.path)
    if not data.remote and not data.path.exists():
        raise InputError(
            f"dataset store {str(data_path)!r} (config key 'data.path') does not exist; "
            "build it with se3t data build"
        )
    train_set = MoleculeDataset.from_config(cfg.data, "train")
    val_set = MoleculeDataset.from_config(cfg.data, "val")
    if len(train_set) < world_size:
        raise InputError(f"dataset {str(data_path)!r}: training split smaller than the job")
    if t.tensorboard:
        try:  # an optional dependency: checked here, before any training work
            import tensorboard  # noqa: F401
        except ImportError as err:
            raise InputError(
                "config key 'train.tensorboard': the tensorboard package is not installed"
            ) from err
    basis_store = _open_basis(cfg)
    if (
        basis_store is not None
        and basis_store.read == BasisRead.CHUNKS
        and t.batch_size % world_size
    ):
        raise InputError(
            f"config key 'train.batch_size': {t.batch_size} is not a multiple of the "
            f"{world_size} ranks of this job, which chunk-aware sampling (basis.read=chunks) "
            "needs"
        )
    # the input widths follow the dataset's encoding (QM9: 6 node, 4 edge features)
    enc = train_set.encoding
    cfg = replace(
        cfg,
        model=replace(
            cfg.model,
            out_dim=len(train_set.targets),
            node_features=enc.node_features,
            edge_features=enc.edge_features,
        ),
    )
    resume_path = Path(cfg.run.dir).absolute() / "last.pt"
    state = None
    if t.resume and resume_path.is_file():
        state = load_checkpoint(resume_path)
        _check_resume_config(cfg, checkpoint_config(state, resume_path), resume_path)
        warn_if_model_code_changed(state, resume_path)
        if model:
            check_model_state(build(cfg.model), state["model"], str(resume_path))
    return Inputs(cfg, train_set, val_set, basis_store, resume_path, state)


def _open_basis(cfg: Config):
    b = cfg.basis
    if b.use == BasisUse.COMPUTE or (b.use == BasisUse.AUTO and not b.manifest):
        return None
    if not b.manifest:
        raise InputError("config key 'basis.use' is 'store' but 'basis.manifest' is not set")
    manifest = Location.from_config(cfg, "basis.manifest")
    absent = not manifest.remote and not manifest.path.exists()
    if b.use == BasisUse.AUTO and absent:
        log.warning("basis manifest %s absent: computing bases in the forward pass", b.manifest)
        return None
    if b.use == BasisUse.STORE and absent:
        raise InputError(
            f"basis manifest or store {b.manifest!r} (config key 'basis.manifest') does not "
            "exist; run se3t basis precompute and se3t basis finalize"
        )
    return open_basis(
        manifest,
        dataset_fingerprint=fingerprint(cfg.data.path),
        max_degree=cfg.model.max_degree,
        dtype=b.dtype,
        read=b.read,
        cache_chunks=b.cache_chunks,
    )


def _check_resume_config(cfg: Config, old: Config, path: Path) -> None:
    new, before = to_dict(cfg.model), to_dict(old.model)
    diff = [
        f"model.{k}={before[k]!r} there, {new[k]!r} here"
        for k in new
        if k in before and before[k] != new[k]
    ]
    if diff:
        raise InputError(
            f"checkpoint {str(path)!r} was trained with another model: "
            + "; ".join(diff[:4])
            + " (use another run.dir, or train.resume=false to start over)"
        )
    if list(old.data.targets) != list(cfg.data.targets):
        raise InputError(
            f"checkpoint {str(path)!r} was trained on targets {list(old.data.targets)}, this "
            f"config asks for {list(cfg.data.targets)}"
        )
