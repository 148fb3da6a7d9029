"""A run folder's results as the report reads them: the config, the training log, the
evaluation and its predictions, the profiles; and how the report names paths and devices."""

from __future__ import annotations

import json
import os
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from se3t.errors import InputError
from se3t.eval.schema import METRICS_SCHEMA, PROFILE_SCHEMA, validate

__all__ = [
    "RunResults",
    "find_runs",
    "load_run",
    "read_profile",
    "shared_profile",
    "shown_path",
    "training_device",
    "training_throughput",
]

REQUIRED = {
    "config.yaml": "se3t train (the resolved config)",
    "metrics.jsonl": "se3t train (the training log)",
    "metrics.json": "se3t evaluate",
    "predictions.csv": "se3t evaluate",
}


@dataclass
class RunResults:
    name: str
    folder: Path
    config: dict
    records: list[dict]
    evaluation: dict
    predictions: pd.DataFrame
    profile: dict | None = None
    profile_path: Path | None = None


def find_runs(results_dir: Path) -> list[Path]:
    """Run folders under ``results_dir``: itself if it holds a config.yaml, else its children."""
    if not results_dir.is_dir():
        raise InputError(f"results folder {str(results_dir)!r} does not exist")
    if (results_dir / "config.yaml").is_file() or (results_dir / "metrics.jsonl").is_file():
        return [results_dir]
    found: list[Path] = []
    for parent in (results_dir / "runs", results_dir):
        if parent.is_dir():
            for child in sorted(parent.iterdir()):
                if child.is_dir() and (child / "config.yaml").is_file() and child not in found:
                    found.append(child)
    if not found:
        raise InputError(
            f"results folder {str(results_dir)!r} holds no run: expected config.yaml "
            "(from se3t train) in it, or in its sub-folders runs/* or *"
        )
    return found


def _inside(path: str | os.PathLike, folder: str | os.PathLike) -> str | None:
    """``path`` relative to ``folder`` (POSIX, ``.`` for the folder itself) when it lies inside
    it, compared as written after normalisation (no file need exist); else None. A relative
    path never lies inside an absolute folder, nor the other way round: their bases differ."""
    p, f = Path(os.path.normpath(path)), Path(os.path.normpath(folder))
    if p.is_absolute() != f.is_absolute() or not p.is_relative_to(f):
        return None
    return p.relative_to(f).as_posix()


def shown_path(path: str | os.PathLike, results_dir: Path, run: RunResults | None = None) -> str:
    """How the report names ``path``: relative to ``results_dir`` when inside it, else as given.

    With ``run``, a path recorded inside the folder where the run was written (its config's
    ``run.dir``, e.g. ``/tmp/x/run/best.pt``) or inside the run folder is first mapped to the run
    folder's place now; ``results_dir`` and the run folder are taken from the current directory.
    """
    here = Path(path)
    if run is not None:
        written = (run.config.get("run") or {}).get("dir")
        for origin in (os.path.abspath(run.folder), written):
            rel = _inside(path, origin) if origin else None
            if rel is not None:
                here = Path(os.path.abspath(run.folder)) / rel
                break
    rel = _inside(os.path.abspath(here), os.path.abspath(results_dir))
    return str(path) if rel is None else rel


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{str(path)!r}: line {lineno} is not JSON ({err.msg})") from err
            if not isinstance(rec, dict):
                raise InputError(f"{str(path)!r}: line {lineno} is not a JSON object")
            records.append(rec)
    if not records:
        raise InputError(f"{str(path)!r}: holds no records (has training started?)")
    return records


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{str(path)!r}: not valid JSON (line {err.lineno}: {err.msg})") from err


def load_run(folder: Path) -> RunResults:
    """Read one run folder's files; a missing or malformed one raises InputError naming it."""
    for name, producer in REQUIRED.items():
        if not (folder / name).is_file():
            raise InputError(
                f"results folder {str(folder)!r} is missing {name} (written by {producer})"
            )
    try:
        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise InputError(f"{str(folder / 'config.yaml')!r}: not valid YAML ({err})") from err
    records = _read_jsonl(folder / "metrics.jsonl")
    evaluation = _read_json(folder / "metrics.json")
    validate(evaluation, METRICS_SCHEMA, str(folder / "metrics.json"))
    try:
        predictions = pd.read_csv(folder / "predictions.csv")
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise InputError(f"{str(folder / 'predictions.csv')!r}: not a CSV table ({err})") from err
    missing = {"target", "reference", "prediction"} - set(predictions.columns)
    if missing:
        raise InputError(
            f"{str(folder / 'predictions.csv')!r}: missing column(s) {sorted(missing)}"
        )
    name = folder.name if folder.parent.name == "runs" else None
    name = name or (config.get("run") or {}).get("name") or folder.name
    run = RunResults(name, folder, config, records, evaluation, predictions)
    for candidate in (folder / "memory.json", folder / "profile" / "memory.json"):
        if candidate.is_file():
            run.profile, run.profile_path = read_profile(candidate), candidate
            break
    return run


def read_profile(path: Path) -> dict:
    doc = _read_json(path)
    validate(doc, PROFILE_SCHEMA, str(path))
    return doc


def shared_profile(results_dir: Path, runs: list[RunResults], given: Path | None):
    """The profile shared by all runs: ``given``, else one in the results folder (not a run's)."""
    if given is not None:
        if not given.is_file():
            raise InputError(f"profile file {str(given)!r} does not exist (se3t profile writes it)")
        return given
    own = {r.profile_path for r in runs}
    for candidate in (results_dir / "profile" / "memory.json", results_dir / "memory.json"):
        if candidate.is_file() and candidate not in own:
            return candidate
    return None


def training_throughput(records: list[dict]) -> dict | None:
    """Median training throughput over the logged steps (the first one, warm-up, left out)."""
    values = [
        float(r["mol_per_s"])
        for r in records
        if r.get("kind") == "step" and isinstance(r.get("mol_per_s"), (int, float))
    ]
    if len(values) > 1:
        values = values[1:]
    if not values:
        return None
    return {"mol_per_s": statistics.median(values), "steps": len(values)}


def training_device(run: RunResults) -> str:
    """The device training ran on: from the log records, else train.log's start line, else the
    config's launch settings."""
    for rec in run.records:
        for key in ("device_name", "device"):
            if isinstance(rec.get(key), str):
                return rec[key]
    log = run.folder / "train.log"
    if log.is_file():
        found = re.findall(r"world size (\d+).*?device (\S+?), precision", log.read_text("utf-8"))
        if found:
            world, device = found[-1]
            if device == "cpu":
                return f"CPU ({world} process(es); train.log)"
            return f"{world} x {device} (train.log)"
    launch = run.config.get("launch") or {}
    train = run.config.get("train") or {}
    gpus = int(launch.get("gpus_per_node") or 0) * int(launch.get("nodes") or 1)
    if gpus:
        return f"{gpus} GPU(s) (launch config)"
    return f"train.device={train.get('device', 'auto')} (config)"
