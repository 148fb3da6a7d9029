"""Predictions for new molecules given in any input format of the dataset build.

Files are read by suffix: ``.xyz`` (QM9's format with its ``gdb`` line, else extended/plain XYZ
through ASE, any number of frames), ``.extxyz``, ``.sdf``/``.sd``/``.mol`` (any number of
records) and ``.csv`` (SMILES, embedded with the checkpoint's conformer settings). Each molecule
gets the graph the model was trained on (se3t.data.graphs: the file's bonds for a model
trained on bonds from files, bonds perceived from 3D as in the build, or the radius graph) and
the checkpoint's element encoding: an element the model never saw is an error naming the file,
the molecule and the element. The model's standardized outputs are mapped back to target units
with the checkpoint's training statistics.
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

from se3t.data import collate
from se3t.device import resolve_device
from se3t.errors import InputError
from se3t.eval.metrics import load_for_inference, resolve_checkpoint, target_stats
from se3t.eval.references import ENERGY_TARGETS, UNITS
from se3t.io import write_text

__all__ = ["predict", "predictions_csv", "read_inputs"]

PREDICT_COLUMNS = ["file", "id", "target", "unit", "prediction", "prediction_mev"]


def read_inputs(path: Path, cfg, encoding) -> list:
    """``[(id, MoleculeSample)]`` of every molecule in ``path`` for a model trained with
    ``cfg`` (its data section: graph, cutoff, SMILES settings) and ``encoding``."""
    from se3t.data.graphs import sample_for
    from se3t.data.parse import MoleculeError

    if not path.is_file():
        raise InputError(f"molecule file {str(path)!r} does not exist")
    try:
        mols = _molecules(path, cfg.data)
        out = []
        for mol_id, species, pos, bonds, where in mols:
            encoding.check(species, where)
            sample = sample_for(species, pos, bonds, encoding, cfg.data)
            sample.name = str(path)
            out.append((mol_id, sample))
    except (InputError, MoleculeError):
        raise  # already names the file, record and field
    except Exception as err:  # noqa: BLE001 - the readers' own failures, made readable
        raise InputError(f"molecule file {str(path)!r}: cannot be read ({err})") from err
    if not out:
        raise InputError(f"molecule file {str(path)!r}: no molecule")
    return out


def _molecules(path: Path, data) -> list[tuple]:
    """``[(id, species, pos, file bonds or None, where)]``; a bad record is an InputError."""
    from se3t.data.parse import MoleculeError, check_geometry
    from se3t.data.sources.extxyz import iter_extxyz
    from se3t.data.sources.qm9 import parse_qm9_xyz
    from se3t.data.sources.sdf import iter_sdf
    from se3t.data.sources.smiles import iter_smiles

    suffix = path.suffix.lower()
    if suffix == ".xyz":
        lines = path.read_text(errors="replace").splitlines()
        head = lines[1].split() if len(lines) > 1 else []
        if len(head) >= 17 and head[0] == "gdb":  # QM9's own XYZ format (gdb id, properties)
            rec = parse_qm9_xyz("\n".join(lines), str(path), qm9=True)
            return [(str(rec.mol_id), rec.species, rec.pos, None, str(path))]
    if suffix in (".xyz", ".extxyz"):
        records = iter_extxyz(path, data.id_column)
    elif suffix in (".sdf", ".sd", ".mol"):
        records = iter_sdf(path, data.id_column)
    elif suffix == ".csv":
        records = iter_smiles(
            path,
            smiles_column=data.smiles_column,
            id_column=data.id_column,
            seed=data.conformer_seed,
            iterations=data.mmff_iterations,
            processes=1,
            progress=False,
        )
    else:
        raise InputError(
            f"{path}: unknown molecule format {suffix!r} (use .xyz, .extxyz, .sdf, .mol or a "
            ".csv of SMILES)"
        )
    out = []
    for rec in records:
        if isinstance(rec, MoleculeError):
            raise rec
        if len(rec.species) < 2:
            raise InputError(f"{rec.where}: field 'atoms': one atom: a graph needs two")
        check_geometry(rec.species, rec.pos, rec.where)
        out.append((rec.id, rec.species, rec.pos, rec.bonds, f"{path}: {rec.where}"))
    return out


def predict(
    checkpoint: str | os.PathLike,
    files: Sequence[str | os.PathLike],
    *,
    batch_size: int = 64,
    device: str = "auto",
    progress: bool = True,
    nvidia: str | os.PathLike | bool | None = None,
) -> pd.DataFrame:
    """One row per (molecule, target): ``file, id, target, unit, prediction`` (and
    ``prediction_mev`` for energies). All files are read before the model runs, so a malformed
    one fails before any prediction is made. ``nvidia``: ``checkpoint`` is NVIDIA's DLE
    checkpoint with this sidecar (:func:`se3t.eval.metrics.load_for_inference`)."""
    from se3t.data.elements import QM9_ENCODING, Encoding
    from se3t.train.checkpoint import load_checkpoint

    if not files:
        raise InputError("give at least one molecule file (XYZ, extended XYZ, SDF or SMILES CSV)")
    ckpt = resolve_checkpoint(checkpoint)
    paths = [Path(f) for f in files]
    dev = resolve_device(device)
    model, cfg, stats = load_for_inference(ckpt, dev, nvidia)
    names, mean, std = target_stats(stats, str(ckpt))
    # NVIDIA's checkpoints are QM9 models (H, C, N, O, F and bond types)
    encoding = (
        QM9_ENCODING
        if nvidia
        else Encoding.from_dict(load_checkpoint(ckpt, map_location="cpu").get("encoding"))
    )
    entries = [(p, mol_id, s) for p in paths for mol_id, s in read_inputs(p, cfg, encoding)]
    samples = [s for _, _, s in entries]
    values = _values(model, samples, batch_size, dev, mean, std, progress)
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():  # an empty or NaN cell in the CSV would pass for a prediction
        path, mol_id, _ = entries[int(np.nonzero(~finite)[0][0])]
        raise InputError(
            f"{str(ckpt)!r}: the model predicts a non-finite value for {path}: molecule "
            f"{mol_id} ({int((~finite).sum())} of {len(finite)} molecules); nothing written"
        )
    units = {n: cfg.data.units.get(n) or UNITS.get(n, "") for n in names}
    return _frame(entries, values, names, units)


def _values(model, samples, batch_size: int, dev, mean, std, progress: bool) -> np.ndarray:
    """The model's predictions, ``[M, T]`` in target units, ``batch_size`` molecules a call."""
    outs = []
    with torch.inference_mode():
        starts = range(0, len(samples), batch_size)
        for s in tqdm(starts, desc="predict", unit="batch", disable=not progress):
            batch = collate(samples[s : s + batch_size]).to(dev)
            outs.append(model(batch).double().cpu() * std + mean)  # [B, T] in target units
    return torch.cat(outs).numpy()


def _frame(entries, values, names, units) -> pd.DataFrame:
    rows = []
    for (path, mol_id, _), value in zip(entries, values, strict=True):
        for j, name in enumerate(names):
            energy = units[name] == "eV" or name in ENERGY_TARGETS
            rows.append(
                {
                    "file": str(path),
                    "id": mol_id,
                    "target": name,
                    "unit": units[name],
                    "prediction": float(value[j]),
                    "prediction_mev": float(value[j]) * 1000 if energy else np.nan,
                }
            )
    return pd.DataFrame(rows, columns=PREDICT_COLUMNS)


def predictions_csv(frame: pd.DataFrame, out: str | os.PathLike | None = None) -> str:
    """The CSV text; written atomically to ``out`` when given."""
    buf = io.StringIO()
    frame.to_csv(buf, index=False, float_format="%.8g")
    text = buf.getvalue()
    if out is not None:
        write_text(out, text)
    return text
