"""Predictions for new molecules given as XYZ or SDF files.

Each file is read by :func:`se3t.data.read_molecule` (bonds perceived exactly as in the dataset
build), the molecules are batched with :func:`se3t.data.collate`, and the model's standardized
outputs are mapped back to target units with the checkpoint's training statistics.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from se3t.data import collate, read_molecule
from se3t.device import resolve_device
from se3t.errors import InputError
from se3t.eval.metrics import load_for_inference, resolve_checkpoint, target_stats
from se3t.eval.references import ENERGY_TARGETS, UNITS
from se3t.io import write_text

__all__ = ["predict", "predictions_csv"]


def _read(path: Path, graph: str, cutoff: float):
    if not path.is_file():
        raise InputError(f"molecule file {str(path)!r} does not exist")
    try:
        return read_molecule(path, graph=graph, cutoff=cutoff)
    except InputError:
        raise  # already names the file, record and field
    except Exception as err:  # noqa: BLE001 - the reader's own failures, made readable
        raise InputError(f"molecule file {str(path)!r}: cannot be read ({err})") from err


def predict(
    checkpoint: str | os.PathLike,
    files: Sequence[str | os.PathLike],
    *,
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = True,
    nvidia: str | os.PathLike | bool | None = None,
) -> pd.DataFrame:
    """One row per (file, target): ``file, target, unit, prediction`` (and ``prediction_mev`` for
    energies). All files are read before the model runs, so a malformed one fails before any
    prediction is made. ``nvidia``: ``checkpoint`` is NVIDIA's DLE checkpoint with this sidecar
    (:func:`se3t.eval.metrics.load_for_inference`)."""
    if not files:
        raise InputError("give at least one XYZ or SDF file")
    ckpt = resolve_checkpoint(checkpoint)
    paths = [Path(f) for f in files]
    dev = resolve_device(device)
    model, cfg, stats = load_for_inference(ckpt, dev, nvidia)
    names, mean, std = target_stats(stats, str(ckpt))
    # the graph the model was trained on: bonds (perceived as in the build) or a radius graph
    samples = [_read(p, cfg.data.graph, cfg.data.cutoff) for p in paths]
    outs = []
    with torch.inference_mode():
        starts = range(0, len(samples), batch_size)
        for s in tqdm(starts, desc="predict", unit="batch", disable=not progress):
            batch = collate(samples[s : s + batch_size]).to(dev)
            outs.append(model(batch).double().cpu() * std + mean)  # [B, T] in target units
    values = torch.cat(outs).numpy()
    rows = []
    for path, value in zip(paths, values, strict=True):
        for j, name in enumerate(names):
            row = {
                "file": str(path),
                "target": name,
                "unit": UNITS.get(name, ""),
                "prediction": float(value[j]),
                "prediction_mev": float(value[j]) * 1000 if name in ENERGY_TARGETS else np.nan,
            }
            rows.append(row)
    return pd.DataFrame(rows, columns=["file", "target", "unit", "prediction", "prediction_mev"])


def predictions_csv(frame: pd.DataFrame, out: str | os.PathLike | None = None) -> str:
    """The CSV text; written atomically to ``out`` when given."""
    buf = io.StringIO()
    frame.to_csv(buf, index=False, float_format="%.8g")
    text = buf.getvalue()
    if out is not None:
        write_text(out, text)
    return text
