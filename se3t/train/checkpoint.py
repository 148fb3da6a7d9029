"""Checkpoints: atomic writes, safe loads (``torch.load(weights_only=True)``), model rebuild.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so loading it never
executes code. Keys: ``format`` (``"se3t-checkpoint"``), ``version``, ``model`` (state_dict,
without DDP's ``module.`` prefix), ``optimizer``, ``scheduler``, ``scaler`` (state dicts),
``epoch`` (the epoch in progress), ``batch_in_epoch`` (micro-batches of that epoch already
consumed: the sampler position), ``step`` (optimizer steps done), ``best_val``, ``rng``
(torch, numpy, python, cuda states), ``config`` (:func:`se3t.config.to_dict`),
``target_stats`` (``{"targets", "mean", "std"}`` in target units), ``world_size``,
``model_code`` (:func:`model_code_version` of the code that wrote it).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from se3t.config import Config, ConfigError, from_dict
from se3t.errors import InputError
from se3t.io import atomic_write
from se3t.models import build

__all__ = [
    "FORMAT",
    "VERSION",
    "capture_rng",
    "load_checkpoint",
    "load_model",
    "model_code_version",
    "restore_rng",
    "save_checkpoint",
]

FORMAT = "se3t-checkpoint"
VERSION = 1


def model_code_version() -> str:
    """A hash of the model's source (``se3t/so3``, ``se3t/nn``, ``se3t/models``). A checkpoint
    records it: weights of the same shapes can mean something else after the code changes (a
    new parameter layout), so loading warns when it differs."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for sub in ("so3", "nn", "models"):
        for f in sorted((root / sub).glob("*.py")):
            h.update(f"{sub}/{f.name}\0".encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def warn_if_model_code_changed(state: dict[str, Any], path: str | os.PathLike) -> bool:
    """Warn (and return True) when ``state`` was written by other model code than this one."""
    saved = state.get("model_code")
    if saved is None or saved == model_code_version():
        return False
    msg = (
        f"checkpoint {str(path)!r} was written by other model code (model_code {saved}, "
        f"now {model_code_version()}): if the change altered what the weights mean, its "
        "predictions are wrong; retrain or use the se3t version it was trained with"
    )
    warnings.warn(msg, stacklevel=2)
    logging.getLogger("se3t.train").warning(msg)
    return True


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync,
    rename, fsync of the folder (:func:`se3t.io.atomic_write` with ``fsync``). A crash (or
    ``kill -9``, or a power loss) at any moment leaves either the old file or the new one."""
    state = {"format": FORMAT, "version": VERSION, "model_code": model_code_version(), **state}

    def write(tmp: str) -> None:
        # serialized in memory, then written by Python: a full disk is then an OSError
        # (ENOSPC), which atomic_write reports naming the path, not torch's RuntimeError
        buf = io.BytesIO()
        torch.save(state, buf)
        with open(tmp, "wb") as fh:
            fh.write(buf.getbuffer())

    return atomic_write(path, write, fsync=True)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a se3t checkpoint with ``weights_only=True`` (no code runs). Raises
    :class:`InputError` naming the file when it is missing, unreadable or not a se3t checkpoint."""
    path = Path(path)
    if path.is_dir():
        for name in ("last.pt", "best.pt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise InputError(f"run folder {str(path)!r} holds no checkpoint (last.pt or best.pt)")
    if not path.is_file():
        raise InputError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise InputError(
            f"checkpoint {str(path)!r} cannot be loaded safely: {_why_unloadable(err)}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"checkpoint {str(path)!r} is not a se3t checkpoint (no format tag)")
    for key in ("model", "config", "target_stats", "epoch", "step"):
        if key not in state:
            raise InputError(f"checkpoint {str(path)!r}: field {key!r} is missing")
    return state


def _why_unloadable(err: Exception) -> str:
    """torch's reason, without its advice to retry with ``weights_only=False``: that would run
    whatever code the file carries, and a checkpoint that needs it is not a se3t checkpoint."""
    text = str(err)
    found = re.search(r"unsupported global:? *(?:GLOBAL +)?([\w.]+)", text, flags=re.IGNORECASE)
    if found:
        return (
            f"it holds Python objects ({found.group(1)}) that only unpickling with code "
            "execution could restore, which se3t never does; use a checkpoint written by "
            "se3t train"
        )
    advice = ("weights_only", "file an issue", "documentation of torch.load")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    reasons = [ln for ln in lines if not any(a in ln for a in advice)]
    reason = reasons[0] if reasons else type(err).__name__
    return f"not a readable torch checkpoint ({reason}); is the file damaged or of another kind?"


def checkpoint_config(state: dict[str, Any], path: str | os.PathLike) -> Config:
    """The resolved config stored in a checkpoint (InputError naming the file if invalid)."""
    stored = state["config"]
    model = stored.get("model") if isinstance(stored, dict) else None
    if isinstance(model, dict) and "radial_sharing" not in model:
        # a checkpoint without these keys was trained with radial sharing per fusion group and
        # the self-interaction once per node: read it as that function, not today's default
        stored = {**stored, "model": {"radial_sharing": "fusion", "self_interaction": "node"}}
        stored["model"].update(model)
    try:
        return from_dict(stored)
    except ConfigError as err:
        raise InputError(f"checkpoint {str(path)!r}: stored config is invalid: {err}") from err


def check_model_state(model: torch.nn.Module, state_dict: dict[str, Any], path: str) -> None:
    """Raise :class:`InputError` naming the checkpoint and the first differing parameter when
    ``state_dict`` does not fit ``model`` (another model shape)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    extra = [k for k in state_dict if k not in own]
    if missing or extra:
        raise InputError(
            f"checkpoint {path!r} holds another model: parameters missing {missing[:3]}, "
            f"unexpected {extra[:3]} (was it trained with other model.* settings?)"
        )
    for k, v in own.items():
        if tuple(state_dict[k].shape) != tuple(v.shape):
            raise InputError(
                f"checkpoint {path!r} holds another model shape: parameter {k!r} is "
                f"{list(state_dict[k].shape)} there, {list(v.shape)} here "
                "(was it trained with other model.* settings?)"
            )


def check_finite_weights(state_dict: dict[str, Any], path: str) -> None:
    """Refuse a checkpoint whose weights hold NaN or infinity (a run that diverged, or a file
    altered by hand): every prediction of it would be NaN."""
    for k, v in state_dict.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all():
            bad = int((~torch.isfinite(v)).sum())
            raise InputError(
                f"checkpoint {path!r}: parameter {k!r} holds {bad} non-finite value(s) (NaN or "
                "inf): the weights are unusable (did the run diverge? use an earlier checkpoint)"
            )


def load_model(path: str | os.PathLike, map_location: Any = "cpu"):
    """``(model, cfg, stats)``: the checkpoint's model rebuilt from its stored config, weights
    loaded, in eval mode; ``stats`` is ``{"targets": [...], "mean": Tensor[T], "std": Tensor[T]}``
    (predictions are ``model(batch) * std + mean`` in target units)."""
    state = load_checkpoint(path, map_location=map_location)
    warn_if_model_code_changed(state, path)
    cfg = checkpoint_config(state, path)
    model = build(cfg.model)
    check_model_state(model, state["model"], str(path))
    check_finite_weights(state["model"], str(path))
    model.load_state_dict(state["model"])
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    model.eval()
    return model, cfg, state["target_stats"]


# --------------------------------------------------------------------------------------------
# RNG states as weights_only-safe containers (numpy's state holds an ndarray: keep it a tensor)


def capture_rng() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and python RNG states."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return out


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (CUDA states only when the device count matches)."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(
        (
            n["name"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
