"""Tile sizes of the compiled fused-TFN kernels, from a short timed trial per machine and shape.

The best edge block and ``K`` tiles depend on the cache sizes and vector width of the machine
(a tiling tuned on one Xeon was wrong for an EPYC), so nothing about speed is fixed here: the
first use of a shape times a few candidates on synthetic data of that shape (a few ms each),
keeps the fastest, and caches the choice in the user's cache folder
(``$XDG_CACHE_HOME/se3t/kernel_tuning.json``, else ``~/.cache/se3t/...``), keyed by the CPU model
(or GPU name), torch version, evaluation, dtype and shape bucket. Config overrides
(``model.kernel_edge_block``, ``model.kernel_k_tile``, ``model.kernel_k_tile_backward``,
``model.kernel_chunk_edges``; 0 = tuned) replace the tuned values. The CPU kernel's forward and
backward passes are tuned apart (their best ``K`` tiles differ: the forward pass vectorizes
over channels, the backward pass over ``K``), each candidate timed as the best of a few runs
taken in turns, so a minute of machine drift hits every candidate alike.
:meth:`KernelTuner.report` is what the training log and ``se3t profile`` show.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch
from torch import Tensor

from se3t import io
from se3t.device import cpu_model
from se3t.nn import evaluations

__all__ = ["KernelTuner", "default_cache", "default_tiles", "device_name"]

log = logging.getLogger("se3t.kernel")

# the tiles used without a tuner, the first candidate of every trial and the candidates per
# pass of the trial problem are the evaluation's own (se3t.nn.evaluations.Registered)
TRIAL_EDGES = 512  # the trial's largest problem
ROUNDS = 3  # timed runs per candidate, in turns; the best counts


def default_tiles(evaluation: str) -> dict:
    return dict(evaluations.entry(evaluation).tiles)


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "se3t" / "kernel_tuning.json"


def device_name(t: Tensor) -> str:
    if t.device.type == "cuda":
        return torch.cuda.get_device_name(t.device)
    return cpu_model()


class KernelTuner:
    """Tile sizes per (device, torch version, evaluation, dtype, shape bucket).

    ``overrides``: tile values that replace tuned ones (from the config; 0 or None = tuned).
    ``cache``: the JSON file of earlier trials (None: nothing read or written). ``trial``:
    time candidates for a shape not in the cache (else use the defaults).
    """

    def __init__(self, overrides: dict | None = None, cache: Path | None = None, trial=True):
        self.overrides = {k: int(v) for k, v in (overrides or {}).items() if v}
        self.cache, self.trial = (Path(cache) if cache else None), trial
        self.chosen: dict[str, dict] = {}  # key -> tiles, this process (the report)
        self._disk: dict[str, dict] | None = None

    def __repr__(self) -> str:
        return f"KernelTuner(overrides={self.overrides}, cache={self.cache}, trial={self.trial})"

    def _load(self) -> dict[str, dict]:
        if self._disk is None:
            self._disk = {}
            if self.cache is not None and self.cache.exists():
                try:
                    self._disk = json.loads(self.cache.read_text())
                except (OSError, ValueError) as err:
                    log.warning(
                        "kernel tuning cache %s unreadable (%s); re-tuning", self.cache, err
                    )
        return self._disk

    def key(self, evaluation: str, spec, z: Tensor) -> str:
        how = evaluations.entry(evaluation)
        E = max(1, min(z.shape[0], how.tiles["chunk_edges"]))
        bucket = 1 << (E - 1).bit_length()  # edges per call, to the next power of two
        build = how.build()  # a rebuilt kernel is a new library: re-tuned
        return "|".join(
            [
                device_name(z),
                f"torch {torch.__version__}",
                evaluation,
                str(z.dtype).removeprefix("torch."),
                f"H {z.shape[1]}",
                f"in {list(spec.ins)} out {list(spec.outs)}",
                f"E {bucket}",
                *([build] if build else []),
            ]
        )

    def tiles(self, evaluation: str, spec, z: Tensor) -> dict:
        if torch.are_deterministic_algorithms_enabled():
            # a timed choice may differ between runs, and the tiles set the order in which
            # the kernel sums: deterministic runs (train.deterministic) use fixed tiles
            tiles = default_tiles(evaluation)
            self.chosen[f"{evaluation} (deterministic: fixed tiles)"] = tiles
            return {**tiles, **{k: v for k, v in self.overrides.items() if k in tiles}}
        key = self.key(evaluation, spec, z)
        tiles = self.chosen.get(key)
        if tiles is None:
            disk = self._load()
            tiles = disk.get(key)
            if tiles is not None and set(tiles) != set(default_tiles(evaluation)):
                tiles = None  # written by a version with other tiles: tuned again
            if tiles is None:
                tiles = default_tiles(evaluation)
                if self.trial:
                    tiles = self._trial(evaluation, spec, z, tiles)
                    disk[key] = tiles
                    if self.cache is not None:
                        io.write_json(self.cache, disk)
            self.chosen[key] = tiles
        return {**tiles, **{k: v for k, v in self.overrides.items() if k in tiles}}

    def _trial(self, evaluation: str, spec, z: Tensor, base: dict) -> dict:
        how = evaluations.entry(evaluation)
        E = max(1, min(z.shape[0], base["chunk_edges"], TRIAL_EDGES))
        passes = how.trial_problem(spec, E, z.shape[1], z.dtype, z.device)  # {pass: run(tiles)}
        t0 = time.perf_counter()
        best = dict(base)
        for name, run in passes.items():
            cands = [{**best, **c} for c in how.candidates[name]]
            for tiles in cands:
                run(tiles)  # warm-up (and, on a GPU, compilation)
            times = [float("inf")] * len(cands)
            for _ in range(ROUNDS):
                for i, tiles in enumerate(cands):
                    t = time.perf_counter()
                    run(tiles)
                    times[i] = min(times[i], time.perf_counter() - t)
            best = cands[times.index(min(times))]
        log.info(
            "se3t kernel: tuned %s for %s in %.1f s: %s",
            evaluation,
            f"in {list(spec.ins)} out {list(spec.outs)}",
            time.perf_counter() - t0,
            best,
        )
        return best

    def report(self) -> str:
        """One line per shape tuned or read in this process: ``key: tiles``."""
        if not self.chosen:
            return "no compiled-kernel shapes used yet"
        over = f" (config overrides {self.overrides})" if self.overrides else ""
        return "\n".join(f"{k}: {v}{over}" for k, v in self.chosen.items())
