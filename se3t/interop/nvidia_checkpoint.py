"""NVIDIA DLE training checkpoints (with their sidecar YAML) for se3t evaluate / predict."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor, nn

from se3t.graph import Batch
from se3t.interop.nvidia_model import NvidiaSE3Transformer, NvidiaStateDictError
from se3t.interop.nvidia_weights import from_state_dict

__all__ = [
    "DLEModel",
    "load_dle_checkpoint",
    "read_sidecar",
    "sidecar_path",
]

# NVIDIA's runtime/training.py builds SE3TransformerPooled with these fibers for QM9
_DLE_DEFAULTS = dict(
    num_degrees=4,
    num_channels=32,
    num_layers=7,
    num_heads=8,
    channels_div=2,
    pooling="max",
    norm=True,
    use_layer_norm=True,
    tensor_cores=True,
    low_memory=False,
)


_SIDECAR_KEYS = {"model", "target", "mean", "std"}


class DLEModel(nn.Module):
    """An NVIDIA QM9 model as se3t's evaluation expects it: ``model(batch) -> [B, 1]``
    standardized predictions (NVIDIA's ``[B]`` with the target axis restored)."""

    def __init__(self, model: NvidiaSE3Transformer):
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> Tensor:
        return self.model(batch).reshape(batch.num_graphs, -1)


def sidecar_path(checkpoint: str | Path) -> Path:
    """The default sidecar of a DLE checkpoint: the same name with ``.yaml``."""
    return Path(checkpoint).with_suffix(".yaml")


def read_sidecar(path: str | Path) -> dict:
    """The sidecar YAML of a DLE checkpoint (docs/model.md): NVIDIA's model arguments under
    ``model`` (defaults: its QM9 training script's), the ``target`` and NVIDIA's
    standardization ``mean``/``std`` in se3t's unit of that target. Errors name the file and
    field."""
    import yaml  # deferred: only the CLI's NVIDIA path reads YAML here

    from se3t.errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"NVIDIA checkpoint sidecar {str(path)!r} does not exist (give --nvidia-config, "
            f"a YAML file with 'model', 'target', 'mean', 'std': docs/model.md)"
        )
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(f"{str(path)!r}: not valid YAML ({err})") from err
    if not isinstance(doc, dict):
        raise InputError(f"{str(path)!r}: expected a mapping with {sorted(_SIDECAR_KEYS)}")
    unknown = sorted(set(doc) - _SIDECAR_KEYS)
    if unknown:
        raise InputError(
            f"{str(path)!r}: unknown field(s) {unknown} (known {sorted(_SIDECAR_KEYS)})"
        )
    for key in ("target", "mean", "std"):
        if key not in doc:
            raise InputError(f"{str(path)!r}: field {key!r} is missing")
    if not isinstance(doc["target"], str):
        raise InputError(
            f"{str(path)!r}: field 'target' must be a target name, got {doc['target']!r}"
        )
    for key in ("mean", "std"):
        if isinstance(doc[key], bool) or not isinstance(doc[key], (int, float)):
            raise InputError(f"{str(path)!r}: field {key!r} must be a number, got {doc[key]!r}")
    if not doc["std"] > 0:
        raise InputError(f"{str(path)!r}: field 'std' must be > 0, got {doc['std']!r}")
    model = doc.get("model") or {}
    if not isinstance(model, dict):
        raise InputError(f"{str(path)!r}: field 'model' must be a mapping of NVIDIA's arguments")
    kwargs = {**_DLE_DEFAULTS, **model}
    kwargs.setdefault("fiber_in", {0: 6})
    kwargs.setdefault("fiber_edge", {0: 4})
    kwargs.setdefault("fiber_out", {0: kwargs["num_degrees"] * kwargs["num_channels"]})
    kwargs.setdefault("output_dim", 1)
    return {"kwargs": kwargs, "target": doc["target"], "mean": doc["mean"], "std": doc["std"]}


def load_dle_checkpoint(checkpoint: str | Path, sidecar: str | Path | None = None):
    """``(DLEModel, stats)`` from NVIDIA's training checkpoint (``torch.save`` of
    ``{'state_dict', 'optimizer_state_dict', 'epoch', ...}``), read with ``weights_only=True``;
    ``stats`` as in se3t checkpoints (``targets``, ``mean``, ``std``)."""
    from se3t.errors import InputError

    checkpoint = Path(checkpoint)
    side = read_sidecar(sidecar if sidecar is not None else sidecar_path(checkpoint))
    if not checkpoint.is_file():
        raise InputError(f"NVIDIA checkpoint {str(checkpoint)!r} does not exist")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:
        # torch's own message advises weights_only=False, which would run the file's code:
        # se3t never does that (docs/integrity.md), so the message is se3t's own
        found = re.search(
            r"unsupported global:? *(?:GLOBAL +)?([\w.]+)", str(err), flags=re.IGNORECASE
        )
        if found:
            why = (
                f"it holds Python objects other than tensors ({found.group(1)}), which se3t "
                "does not unpickle: save NVIDIA's model.state_dict() in the DLE layout "
                "instead (docs/model.md)"
            )
        else:
            why = f"not a torch checkpoint ({type(err).__name__}); is it the right file?"
        raise InputError(f"NVIDIA checkpoint {str(checkpoint)!r} cannot be read: {why}") from None
    try:
        model = from_state_dict(state, **side["kwargs"])
    except (NvidiaStateDictError, ValueError, NotImplementedError) as err:
        raise InputError(f"NVIDIA checkpoint {str(checkpoint)!r}: {err}") from err
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise InputError(
                f"NVIDIA checkpoint {str(checkpoint)!r}: parameter {name!r} holds non-finite "
                "values (NaN or inf): the weights are unusable"
            )
    stats = {
        "targets": [side["target"]],
        "mean": torch.tensor([float(side["mean"])]),
        "std": torch.tensor([float(side["std"])]),
    }
    return DLEModel(model.float()).eval(), stats
