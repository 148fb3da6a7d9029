"""The step harness: a few training steps of one model on one batch, timed and measured, in a
fresh process. ``se3t profile`` and ``benchmarks/train_step.py`` both measure through it.

A point is named in the config's words: ``model.fusion``, ``model.low_memory``,
``train.precision``, a batch size and where the bases come from (``eval.profile_basis``:
``step``, computed inside every step as NVIDIA's benchmark does, or ``precomputed`` once before
the clock starts, as read from the basis store). Its record, :class:`StepPoint`, is one row of
``memory.json`` and of the benchmark's ``results.json``.

Memory (see :mod:`se3t.device`): ``baseline_memory_bytes`` is what the process holds before the
first step (interpreter, torch, model, data; on CUDA the tensors allocated), ``peak_memory_bytes``
the peak over the timed steps (the mark is reset after the warm-up), and
``added_memory_bytes`` their difference: what a training step adds, the figure that grows with
the batch. It is never negative: on a CPU a small step's peak resident set can stay below the
baseline (the allocator hands freed warm-up memory back to the system), and then it adds 0.

Run in its own interpreter (``python -m se3t.eval.point SPEC.json RESULT.json``), a point's peak
is its own. The spec is JSON: ``model`` (ModelConfig's keys; missing ones keep their defaults),
``precision``, ``batch_size``, ``steps``, ``warmup_steps``, ``basis``, ``device``, ``seed``,
``memory_limit`` (bytes or null), ``lr``, and the batch source: ``data`` (the data section of a
config: real molecules of its training split) or ``batches`` (a ``.pt`` of plain tensors keyed
by batch size, which needs neither Zarr nor OmegaConf on the machine that measures).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from se3t.config import ModelConfig
from se3t.device import (
    current_memory,
    device_name,
    is_out_of_memory,
    limit_cpu_memory,
    peak_memory,
    reset_peak_memory,
    synchronize,
)
from se3t.graph import Batch, Graph
from se3t.io import write_json
from se3t.models.transformer import SE3TransformerPooled, build
from se3t.so3.basis import compute_basis_flat
from se3t.train.step import TrainingStep, set_matmul_precision

__all__ = ["StepPoint", "build_model", "load_batches", "measure", "run_fresh", "run_spec"]


@dataclass
class StepPoint:
    """One measured point: what was run (config words) and what it took."""

    fusion: str
    precision: str
    low_memory: bool
    batch_size: int
    basis: str = "step"
    status: str = "ok"  # ok | oom | error | timeout | skipped
    peak_memory_bytes: int | None = None
    baseline_memory_bytes: int | None = None
    added_memory_bytes: int | None = None
    step_time_s: float | None = None  # median over the timed steps
    mol_per_s: float | None = None
    num_atoms: int | None = None
    num_edges: int | None = None
    num_params: int | None = None
    loss: float | None = None
    device_name: str | None = None
    peak_reset: bool | None = None  # CPU: the peak mark was reset after the warm-up
    error: str | None = None
    wall_s: float = 0.0
    warmup_times_s: list[float] | None = None  # every untimed step (see measure)
    step_times_s: list[float] | None = None  # every timed step

    @property
    def series(self) -> str:
        """Its line in a plot: ``"fp32 pairwise"``, ``"fp16 full low_memory"``."""
        return f"{self.precision} {self.fusion}" + (" low_memory" if self.low_memory else "")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepPoint:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def of_spec(cls, spec: dict, status: str = "ok", error: str | None = None) -> StepPoint:
        """The point a spec names, not yet measured (or failed: ``status``, ``error``)."""
        return cls(
            fusion=str(spec["model"].get("fusion", "auto")),
            precision=str(spec["precision"]),
            low_memory=bool(spec["model"].get("low_memory", False)),
            batch_size=int(spec["batch_size"]),
            basis=str(spec.get("basis", "step")),
            status=status,
            error=error,
        )


def build_model(words: dict[str, Any]) -> SE3TransformerPooled:
    """The pooled model of ModelConfig's keys, built as training builds it
    (:func:`se3t.models.transformer.build`); keys left out keep the config's defaults."""
    return build(dataclasses.replace(ModelConfig(), **words))


def load_batches(path: str | Path, size: int) -> Batch:
    """The batch of ``size`` molecules of a ``.pt`` written by ``benchmarks/train_step.py
    make-batches`` (plain tensors: src, dst, node_graph, num_nodes, pos, node/edge feats, y)."""
    d = torch.load(path, weights_only=True)[size]
    graph = Graph(d["src"], d["dst"], d["node_graph"], int(d["num_nodes"]), size)
    return Batch(graph, d["pos"], d["node_feats"], d["edge_feats"], y=d["y"])


def _dataset_batch(data: dict[str, Any], size: int, seed: int) -> Batch:
    """``size`` molecules of the training split (cycled when the split is smaller)."""
    # deferred: the dataset needs Zarr and the config OmegaConf, which a `batches` spec does not
    from se3t.config import from_dict
    from se3t.data import MoleculeDataset, collate

    cfg = from_dict({"data": data})
    split = MoleculeDataset.from_config(cfg.data, "train")
    if len(split) == 0:
        raise RuntimeError(f"the training split of {cfg.data.path} has no molecules")
    rows = np.resize(np.random.default_rng(seed).permutation(len(split)), size)
    return collate([split[int(i)] for i in rows])


# A step is warm once two consecutive untimed steps agree within STEADY (first-use costs such
# as the fused kernel's tile trial, its compilation or the allocator's growth make a step
# several times slower than the next); at most MAX_EXTRA_WARMUP steps beyond the configured ones.
STEADY = 1.25
MAX_EXTRA_WARMUP = 6


def warm_up(step, warmup_steps: int, device: torch.device) -> list[float]:
    """Run ``step()`` ``warmup_steps`` times, then more until the last two agree within
    ``STEADY`` (at most ``MAX_EXTRA_WARMUP`` more): the timed steps that follow are then free
    of one-time costs. Returns every warm-up step's seconds."""
    times: list[float] = []
    for i in range(warmup_steps + MAX_EXTRA_WARMUP):
        if i >= warmup_steps and len(times) >= 2:
            a, b = times[-2], times[-1]
            if max(a, b) <= STEADY * min(a, b):
                break
        if i >= warmup_steps and warmup_steps == 0:
            break  # no warm-up asked for (smoke runs): none added
        t0 = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def measure(
    model: torch.nn.Module,
    batch: Batch,
    point: StepPoint,
    *,
    steps: int,
    warmup_steps: int,
    device: torch.device,
    lr: float = 1e-3,
) -> StepPoint:
    """Fill ``point`` with ``steps`` timed training steps after ``warmup_steps`` untimed ones
    (Adam, ``point.precision``). An out-of-memory or other failure becomes the point's status."""
    set_matmul_precision(point.precision)
    point.num_atoms, point.num_edges = int(batch.graph.num_nodes), int(batch.graph.num_edges)
    point.device_name = device_name(device)
    try:
        model = model.to(device).train()
        point.num_params = sum(p.numel() for p in model.parameters())
        batch = batch.to(device)
        basis = None
        if point.basis == "precomputed":
            with torch.no_grad():
                basis = compute_basis_flat(batch.edge_vec, model.max_degree)
        step = TrainingStep(
            model, torch.optim.Adam(model.parameters(), lr=lr), point.precision, device
        )
        gc.collect()
        point.baseline_memory_bytes = current_memory(device)
        point.warmup_times_s = warm_up(lambda: step(batch, basis), warmup_steps, device)
        gc.collect()
        point.peak_reset = reset_peak_memory(device)
        times, loss = [], None
        for _ in range(steps):
            t0 = time.perf_counter()
            loss = step(batch, basis)
            synchronize(device)
            times.append(time.perf_counter() - t0)
        point.peak_memory_bytes = peak_memory(device)
        point.added_memory_bytes = max(0, point.peak_memory_bytes - point.baseline_memory_bytes)
        point.step_times_s = times
        point.step_time_s = statistics.median(times)
        point.mol_per_s = point.batch_size / point.step_time_s
        point.loss = float(loss) if loss is not None else None
    except Exception as err:  # noqa: BLE001 - every failure of the point becomes its record
        point.status = "oom" if is_out_of_memory(err) else "error"
        point.error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        if device.type == "cpu":
            point.peak_memory_bytes = peak_memory(device)
    return point


def run_spec(spec: dict) -> StepPoint:
    """Measure the point a spec describes, in this process."""
    device = torch.device(spec["device"])
    seed = int(spec.get("seed", 0))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        if spec.get("memory_limit"):
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(
                min(1.0, spec["memory_limit"] / total), device
            )
    elif spec.get("memory_limit"):
        limit_cpu_memory(int(spec["memory_limit"]))
    point = StepPoint.of_spec(spec)
    try:
        b = point.batch_size
        if spec.get("batches"):
            batch = load_batches(spec["batches"], b)
        else:
            batch = _dataset_batch(spec["data"], b, seed)
        torch.manual_seed(seed)
        # the input widths follow the batch's features: the dataset's encoding (QM9: 6, 4)
        words = dict(spec["model"])
        words.update(
            node_features=int(batch.node_feats.shape[1]),
            edge_features=int(batch.edge_feats.shape[1]),
        )
        model = build_model(words)
    except Exception as err:  # noqa: BLE001 - setup failures (data, model) are records too
        point.status = "oom" if is_out_of_memory(err) else "error"
        point.error = f"{type(err).__name__}: {err}"
        return point
    return measure(
        model,
        batch,
        point,
        steps=int(spec["steps"]),
        warmup_steps=int(spec.get("warmup_steps", 1)),
        device=device,
        lr=float(spec.get("lr", 1e-3)),
    )


def run_fresh(spec: dict, timeout: float) -> StepPoint:
    """Measure the point in a fresh interpreter (its peak memory its own); never raises for the
    point: a crash, a kill by the OOM killer or a time-out is its record."""
    with tempfile.TemporaryDirectory(prefix="se3t-point-") as work:
        spec_file, result_file = Path(work) / "spec.json", Path(work) / "result.json"
        spec_file.write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", "se3t.eval.point", str(spec_file), str(result_file)]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            point = StepPoint.of_spec(spec, "timeout", f"did not finish within {timeout:g} s")
            point.wall_s = time.perf_counter() - t0
            return point
        wall = time.perf_counter() - t0
        if result_file.is_file():
            point = StepPoint.from_dict(json.loads(result_file.read_text()))
        elif proc.returncode == -9:  # SIGKILL: the kernel's OOM killer, nothing else here
            point = StepPoint.of_spec(
                spec, "oom", "process killed (SIGKILL), most likely by the OOM killer"
            )
        else:
            tail = " | ".join((proc.stderr or "").strip().splitlines()[-5:])
            point = StepPoint.of_spec(
                spec, "error", f"process exited with {proc.returncode}: {tail}"
            )
    point.wall_s = wall
    return point


def main(argv: list[str]) -> int:
    spec_file, result_file = argv
    point = run_spec(json.loads(Path(spec_file).read_text()))
    write_json(result_file, point.as_dict())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
