"""Starting weights for a fresh run (``train.init_weights``): fine-tuning, or NVIDIA's initial
weights for a side-by-side run.

The file is either a se3t checkpoint (``last.pt`` / ``best.pt`` of any run, or its run folder)
or an NVIDIA DeepLearningExamples checkpoint or state dict of ``SE3TransformerPooled`` with its
sidecar YAML (``train.init_nvidia_config``, default: the checkpoint's name with ``.yaml``;
docs/model.md). Only the model's weights are taken: the optimizer, schedule, step count and
target standardization start fresh from this run's config and training split. A run that
resumes from its own ``last.pt`` ignores ``train.init_weights``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from se3t.config import Config
from se3t.errors import InputError
from se3t.train.checkpoint import FORMAT, check_model_state, load_checkpoint

__all__ = ["initial_weights"]


def initial_weights(cfg: Config, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of ``cfg.train.init_weights`` for ``model`` (checked against its
    parameter names and shapes). Raises :class:`InputError` naming the file and field."""
    path = Path(cfg.train.init_weights)
    where = f"config key 'train.init_weights': {str(path)!r}"
    if not path.exists():
        raise InputError(f"{where} does not exist")
    if path.is_dir() or _is_se3t(path):
        state = load_checkpoint(path)["model"]
    else:
        state = _nvidia_weights(cfg, path, where)
    check_model_state(model, state, str(path))
    return state


def _is_se3t(path: Path) -> bool:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(
            f"config key 'train.init_weights': {str(path)!r} cannot be loaded safely "
            f"(weights_only): {first}"
        ) from None
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def _nvidia_weights(cfg: Config, path: Path, where: str) -> dict[str, torch.Tensor]:
    from se3t.interop.nvidia import load_dle_checkpoint, sidecar_path

    side_path = cfg.train.init_nvidia_config or sidecar_path(path)
    dle, _ = load_dle_checkpoint(path, side_path)
    kwargs = dle.model.args
    m = cfg.model
    want = f"nvidia_{dle.model.fuse_level}"  # from the sidecar's tensor_cores / low_memory
    # the config must build the function NVIDIA's weights belong to (docs/model.md)
    checks = [
        ("model.radial_sharing", m.radial_sharing, want),
        ("model.self_interaction", m.self_interaction, "edge"),
        ("model.pooling", m.pooling, kwargs.get("pooling") or "max"),
        ("model.norm", m.norm, bool(kwargs.get("norm", True))),
        ("model.layer_norm", m.layer_norm, bool(kwargs.get("use_layer_norm", True))),
        ("model.fusion", m.fusion, "auto"),
    ]
    for key, have, need in checks:
        if str(have) != str(need):
            raise InputError(
                f"{where} (NVIDIA weights, sidecar {str(side_path)!r}) needs config key "
                f"'{key}': {need}, got {have} (the sidecar's tensor_cores/low_memory/pooling/"
                "norm fix the function those weights belong to)"
            )
    return {k: v.detach().float().clone() for k, v in dle.model.state_dict().items()}
