"""Test-set errors of a trained model: MAE and RMSE per target, predictions and figures.

For target ``t`` over the ``n`` molecules of a split, with de-standardized predictions
``p_i = out_i * std_t + mean_t`` (``mean``/``std`` of the training split, stored in the
checkpoint) and reference values ``y_i``::

    MAE_t  = 1/n * sum_i |p_i - y_i|
    RMSE_t = sqrt(1/n * sum_i (p_i - y_i)^2)

both in the target's unit (energies in eV, and also in meV, the unit papers report).
"""

from __future__ import annotations

import datetime as _dt
import io
import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from se3t.choices import Split
from se3t.data import MoleculeDataset, collate
from se3t.data.provenance import check_dataset
from se3t.device import resolve_device
from se3t.errors import InputError
from se3t.eval import plots
from se3t.eval.environment import describe_environment
from se3t.eval.references import ENERGY_TARGETS, UNITS
from se3t.eval.schema import METRICS_SCHEMA, METRICS_SCHEMA_VERSION, validate
from se3t.io import atomic_write, write_json
from se3t.train.checkpoint import load_checkpoint, load_model

log = logging.getLogger("se3t.eval")

__all__ = [
    "compute_metrics",
    "evaluate",
    "load_for_inference",
    "resolve_checkpoint",
    "target_stats",
]

PREDICTION_COLUMNS = (
    "mol_id",
    "row",
    "target",
    "unit",
    "reference",
    "prediction",
    "error",
    "id",
)


def resolve_checkpoint(run_or_checkpoint: str | os.PathLike) -> Path:
    """A run folder -> its ``best.pt`` (else ``last.pt``); a file -> itself."""
    path = Path(run_or_checkpoint)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise InputError(f"run folder {str(path)!r} has no checkpoint (best.pt or last.pt)")
    if not path.exists():
        raise InputError(f"{str(path)!r} does not exist (give a run folder or a checkpoint)")
    return path


def load_for_inference(
    checkpoint: str | os.PathLike,
    device: torch.device,
    nvidia: str | os.PathLike | bool | None = None,
):
    """``(model, cfg, stats)`` from a checkpoint through the training stage's ``load_model``.

    ``nvidia``: the checkpoint is NVIDIA's DLE training checkpoint, described by this sidecar
    YAML (``True``: the checkpoint's name with ``.yaml``; :func:`se3t.interop.nvidia.read_sidecar`).
    It holds no se3t config, so ``cfg`` is the default one (bond graphs, as NVIDIA's QM9)."""
    if nvidia is not None and nvidia is not False:
        from se3t.config import Config
        from se3t.interop.nvidia import load_dle_checkpoint

        model, stats = load_dle_checkpoint(checkpoint, None if nvidia is True else nvidia)
        return model.to(device).eval(), Config(), stats
    model, cfg, stats = load_model(checkpoint, map_location="cpu")
    model.to(device).eval()
    return model, cfg, stats


def target_stats(stats: dict, source: str) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The checkpoint's target names, means and standard deviations as float64 tensors."""
    try:
        names = list(stats["targets"])
        mean = torch.as_tensor(np.asarray(stats["mean"], dtype=np.float64)).reshape(-1)
        std = torch.as_tensor(np.asarray(stats["std"], dtype=np.float64)).reshape(-1)
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{source}: field 'target_stats' is missing or malformed ({err})") from err
    if not (len(names) == mean.numel() == std.numel()):
        raise InputError(
            f"{source}: field 'target_stats': {len(names)} targets but {mean.numel()} means and "
            f"{std.numel()} standard deviations"
        )
    return names, mean, std


def compute_metrics(
    reference: np.ndarray,
    prediction: np.ndarray,
    targets: list[str],
    units: dict[str, str] | None = None,
) -> dict:
    """Per target: count, MAE, RMSE, largest |error| (and the same in meV for energies).

    ``reference``, ``prediction``: [M, T] in target units, columns in ``targets`` order.
    """
    units = units or {}
    reference = np.asarray(reference, dtype=np.float64)
    prediction = np.asarray(prediction, dtype=np.float64)
    out = {}
    for j, name in enumerate(targets):
        # missing references (NaN: a property some molecules lack) are left out and counted
        present = ~np.isnan(reference[:, j])
        if not present.any():
            raise InputError(
                f"target {name!r}: no molecule of the split has a reference value "
                f"({int(present.size)} missing)"
            )
        err = prediction[present, j] - reference[present, j]
        entry = {
            "unit": units.get(name) or UNITS.get(name, ""),
            "count": int(err.size),
            "missing": int((~present).sum()),
            "mae": float(np.mean(np.abs(err))),
            "rmse": float(np.sqrt(np.mean(err**2))),
            "max_abs_error": float(np.max(np.abs(err))),
        }
        if entry["unit"] == "eV" or name in ENERGY_TARGETS:
            entry["mae_mev"] = entry["mae"] * 1000.0
            entry["rmse_mev"] = entry["rmse"] * 1000.0
        out[name] = entry
    return out


def _check_format(fmt: str) -> None:
    if fmt not in ("csv", "parquet"):
        raise InputError(f"predictions format {fmt!r} is not csv or parquet")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as err:
            raise InputError(
                "predictions format 'parquet' needs pyarrow (pip install pyarrow); "
                "or use --format csv"
            ) from err


def _write_predictions(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".parquet":
        return atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))
    buf = io.StringIO()
    frame.to_csv(buf, index=False, float_format="%.8g")
    return atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue()))


def evaluate(
    run_or_checkpoint: str | os.PathLike,
    split: str = "test",
    out_dir: str | os.PathLike | None = None,
    *,
    dataset: str | os.PathLike | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    predictions_format: str = "csv",
    progress: bool = True,
    nvidia: str | os.PathLike | bool | None = None,
    allow_other_dataset: bool = False,
) -> dict:
    """Evaluate a checkpoint on a split; write metrics.json, predictions, parity.png, errors.png.

    ``run_or_checkpoint``: a run folder (its ``best.pt``, else ``last.pt``) or a checkpoint.
    ``out_dir`` defaults to the run folder (the checkpoint's folder). ``dataset`` overrides the
    dataset path stored in the checkpoint's config (runs made elsewhere). The split is the one
    training used: same store, ``split_seed`` and fractions from the checkpoint's config. A
    dataset or split other than the checkpoint's training data is refused unless
    ``allow_other_dataset`` (:func:`se3t.data.provenance.check_dataset`); the document's
    ``dataset_check`` says what was evaluated. Returns the ``metrics.json`` document.
    ``nvidia``: evaluate NVIDIA's DLE checkpoint (see :func:`load_for_inference`; ``dataset`` is
    then required, on se3t's split of it).
    """
    if split not in [s.value for s in Split]:
        raise InputError(f"split {split!r} is not one of {[s.value for s in Split]}")
    _check_format(predictions_format)  # before the model runs
    ckpt = resolve_checkpoint(run_or_checkpoint)
    out_dir = Path(out_dir) if out_dir is not None else ckpt.parent
    dev = resolve_device(device)
    model, cfg, (names, mean, std) = _model(ckpt, dev, nvidia, dataset)
    data, data_cfg, dataset_check = _open_split(
        ckpt, cfg, names, dataset, split, nvidia=nvidia, allow_other=allow_other_dataset
    )
    units = {x: getattr(data, "units", {}).get(x) or UNITS.get(x, "") for x in names}
    bs = int(batch_size or cfg.eval.batch_size)
    loader = torch.utils.data.DataLoader(
        data, batch_size=bs, shuffle=False, collate_fn=collate, num_workers=cfg.data.num_workers
    )
    prediction, row, mol_ids, elapsed = _predict(
        model, loader, dev, mean, std, desc=f"evaluate {split}", progress=progress
    )
    store = data.store
    reference, mol = _references(store, names, row, mol_ids, prediction, ckpt)
    n = reference.shape[0]
    frame = _predictions_frame(reference, prediction, names, units, mol, row, store.ids)
    doc = _document(
        ckpt, split, data_cfg, store, names, units, reference, prediction, dev, bs, elapsed
    )
    doc["dataset_check"] = dataset_check
    validate(doc, METRICS_SCHEMA, "evaluation result")
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_predictions(frame, out_dir / f"predictions.{predictions_format}")
    _plot(
        reference, prediction, names, units, out_dir, f"{split} split, {n} molecules, {ckpt.name}"
    )
    # metrics.json last: its presence means the other outputs are complete
    write_json(out_dir / "metrics.json", doc)
    return doc


def _model(ckpt: Path, dev, nvidia, dataset):
    """``(model, config, (target names, mean, std))`` of the checkpoint."""
    if nvidia not in (None, False) and dataset is None:
        raise InputError(
            f"{str(ckpt)!r} is an NVIDIA checkpoint, which names no dataset: give --dataset"
        )
    model, cfg, stats = load_for_inference(ckpt, dev, nvidia)
    return model, cfg, target_stats(stats, str(ckpt))


def _open_split(ckpt: Path, cfg, names, dataset, split: str, *, nvidia, allow_other: bool):
    """The split to evaluate (of ``dataset`` where given, else the checkpoint's), checked
    against the checkpoint: ``(dataset, its config, dataset_check)``."""
    data_cfg = cfg.data if dataset is None else replace(cfg.data, path=str(dataset))
    data_cfg = replace(data_cfg, targets=list(names))
    overridden, nvidia = dataset is not None, nvidia not in (None, False)
    try:
        data = MoleculeDataset.from_config(data_cfg, split)
    except ValueError as err:  # e.g. too few molecules to split; InputErrors pass unchanged
        if isinstance(err, InputError):
            raise
        raise InputError(f"dataset {data_cfg.path!r}: split {split!r}: {err}") from err
    if not nvidia:  # NVIDIA checkpoints are QM9 models
        _check_encoding(ckpt, data)
    dataset_check = check_dataset(
        ckpt,
        # NVIDIA's checkpoints record no dataset, and its split of QM9 is not se3t's
        None if nvidia else _checkpoint_dataset(ckpt),
        MoleculeDataset.from_config(data_cfg, "train"),  # the split training would have drawn
        allow_other=allow_other,
        overridden=overridden,
    )
    if dataset_check["matches_training"] is False:
        log.warning("evaluating %s on another dataset: %s", ckpt, dataset_check["note"])
    if len(data) == 0:
        raise InputError(
            f"dataset {data_cfg.path!r}: split {split!r} has no molecules "
            f"(fractions train={data_cfg.train_fraction}, test={data_cfg.test_fraction})"
        )
    return data, data_cfg, dataset_check


def _predict(model, loader, dev, mean, std, *, desc: str, progress: bool):
    """The model over the loader: ``(prediction [M, T] in target units, store rows [M], the
    batches' molecule ids, seconds)``."""
    preds, mol_ids, rows = [], [], []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress):
            out = model(batch.to(dev))  # [B, T] standardized
            preds.append(out.double().cpu() * std + mean)  # [B, T] target units
            mol_ids.append(batch.mol_ids.cpu() if batch.mol_ids is not None else None)
            rows.append(batch.index.cpu())
    elapsed = time.perf_counter() - t0
    prediction = torch.cat(preds).numpy()  # [M, T]
    row = torch.cat(rows).numpy()  # [M] store rows, in the split's order
    return prediction, row, mol_ids, elapsed


def _references(store, names, row, mol_ids, prediction, ckpt: Path):
    """``(reference [M, T], molecule ids [M])``; a non-finite prediction is refused."""
    # references straight from the store in float64 (not re-derived from the standardized y)
    cols = [list(store.target_names).index(x) for x in names]
    reference = np.asarray(store.targets[row], dtype=np.float64)[:, cols]  # [M, T]
    mol = torch.cat(mol_ids).numpy() if all(m is not None for m in mol_ids) else row
    if not np.isfinite(prediction).all():
        bad = int(row[~np.isfinite(prediction).all(axis=1)][0])
        raise InputError(f"{str(ckpt)!r}: the model predicts a non-finite value (store row {bad})")
    return reference, mol


def _predictions_frame(reference, prediction, names, units, mol, row, ids) -> pd.DataFrame:
    """One line per molecule and target, in the split's order."""
    n, t = reference.shape
    return pd.DataFrame(
        {
            "mol_id": np.repeat(mol, t),
            "row": np.repeat(row, t),
            "target": np.tile(np.asarray(names), n),
            "unit": np.tile(np.asarray([units[x] for x in names]), n),
            "reference": reference.reshape(-1),
            "prediction": prediction.reshape(-1),
            "error": (prediction - reference).reshape(-1),
            "id": np.repeat(np.asarray(ids, dtype=object)[row], t),
        },
        columns=list(PREDICTION_COLUMNS),
    )


def _document(
    ckpt: Path, split, data_cfg, store, names, units, reference, prediction, dev, bs, elapsed
) -> dict:
    """The ``metrics.json`` document, before its ``dataset_check``."""
    n = reference.shape[0]
    ckpt_meta = _checkpoint_meta(ckpt)
    return {
        "schema_version": METRICS_SCHEMA_VERSION,
        "kind": "se3t.evaluate",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": str(ckpt),
        "epoch": ckpt_meta.get("epoch"),
        "step": ckpt_meta.get("step"),
        "split": split,
        "dataset": str(data_cfg.path),
        "dataset_source": _source_kind(store),
        "count": int(n),
        "targets": list(names),
        "metrics": compute_metrics(reference, prediction, list(names), units),
        "environment": describe_environment(dev),
        "batch_size": bs,
        "mol_per_s": float(n / elapsed) if elapsed > 0 else 0.0,
    }


def _plot(reference, prediction, names, units, out_dir: Path, title: str) -> None:
    """Parity plot and error histogram; missing references are not plotted."""
    has = ~np.isnan(reference)  # [M, T]
    plots.plot_parity(
        {x: reference[has[:, j], j] for j, x in enumerate(names)},
        {x: prediction[has[:, j], j] for j, x in enumerate(names)},
        units,
        out_dir / "parity.png",
        title,
    )
    plots.plot_errors(
        {x: (prediction - reference)[has[:, j], j] for j, x in enumerate(names)},
        units,
        out_dir / "errors.png",
        title,
    )


def _check_encoding(ckpt: Path, data) -> None:
    """The dataset's element encoding must be the one the model was trained with."""
    from se3t.data.elements import Encoding
    from se3t.train.checkpoint import load_checkpoint

    trained = Encoding.from_dict(load_checkpoint(ckpt, map_location="cpu").get("encoding"))
    if trained != data.encoding:
        raise InputError(
            f"dataset {data.store.path!r}: its encoding {data.encoding.to_dict()['symbols']} "
            f"({data.encoding.edges} edges) is not the one checkpoint {str(ckpt)!r} was "
            f"trained with, {trained.to_dict()['symbols']} ({trained.edges} edges)"
        )


def _source_kind(store) -> str:
    """The dataset's input format: qm9, or one of users' formats (se3t.data.sources)."""
    kind = (store.attrs.get("source") or {}).get("kind", "")
    return kind if kind in ("extxyz", "sdf", "xyz_dir", "smiles") else "qm9"


def _checkpoint_dataset(path: Path) -> dict | None:
    """The checkpoint's record of its training data (None in checkpoints made before it)."""
    record = load_checkpoint(path, map_location="cpu").get("dataset")
    return record if isinstance(record, dict) else None


def _checkpoint_meta(path: Path) -> dict:
    try:
        ckpt = load_checkpoint(path, map_location="cpu")
    except Exception:  # noqa: BLE001 - load_model already accepted the file; metadata is optional
        return {}
    meta = {}
    for key in ("epoch", "step"):
        value = ckpt.get(key)
        meta[key] = int(value) if isinstance(value, (int, np.integer)) else None
    return meta
