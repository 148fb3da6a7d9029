"""Tile sizes of the compiled fused-TFN kernels, from a short timed trial per machine and shape.

The best edge block and ``K`` tile depend on the cache sizes and vector width of the machine
(a tiling tuned on one Xeon was wrong for an EPYC), so nothing about speed is fixed here: the
first use of a shape times a few candidates on synthetic data of that shape (well under a
second each), keeps the fastest, and caches the choice in the user's cache folder
(``$XDG_CACHE_HOME/se3t/kernel_tuning.json``, else ``~/.cache/se3t/...``), keyed by the CPU model
(or GPU name), torch version, evaluation, dtype and shape bucket. Config overrides
(``model.kernel_edge_block``, ``model.kernel_k_tile``, ``model.kernel_chunk_edges``; 0 = tuned)
replace the tuned values. :meth:`KernelTuner.report` is what the training log and ``se3t
profile`` show.
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

__all__ = ["KernelTuner", "default_cache", "default_tiles", "device_name"]

log = logging.getLogger("se3t.kernel")

# tiles used without a tuner, and the first candidate of every trial. chunk_edges bounds the
# per-chunk T and dT buffers of the compiled evaluations (2 x 27 KB per edge at the paper's
# sizes, 14 MB at 512 edges): memory, not speed, so it is not part of the trial.
_DEFAULTS = {
    "cpp": {"chunk_edges": 512, "edge_block": 32, "k_tile": 32},
    "triton": {"chunk_edges": 4096, "block_e": 16, "block_k": 32},
}
_CANDIDATES = {
    "cpp": [{"edge_block": eb, "k_tile": kt} for eb in (8, 32, 128) for kt in (16, 32, 64)],
    "triton": [{"block_e": be, "block_k": bk} for be in (16, 32) for bk in (16, 32, 64)],
}


def default_tiles(evaluation: str) -> dict:
    return dict(_DEFAULTS.get(evaluation, {}))


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "se3t" / "kernel_tuning.json"


def device_name(t: Tensor) -> str:
    if t.device.type == "cuda":
        return torch.cuda.get_device_name(t.device)
    from se3t.nn.kernel_cpu import cpu_description  # deferred: avoids an import cycle

    return cpu_description()[0]


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
        E = max(1, min(z.shape[0], _DEFAULTS[evaluation]["chunk_edges"]))
        bucket = 1 << (E - 1).bit_length()  # edges per call, to the next power of two
        build = ""
        if evaluation == "cpp":
            from se3t.nn.kernel_cpu import build_info  # deferred: avoids an import cycle

            # a rebuilt kernel (new source, compiler or flags) is a new library: re-tune it
            build = Path(str(build_info().get("library", ""))).stem
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
        key = self.key(evaluation, spec, z)
        tiles = self.chosen.get(key)
        if tiles is None:
            disk = self._load()
            tiles = disk.get(key)
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
        if evaluation == "cpp":
            from se3t.nn.kernel_cpu import trial_problem  # deferred: cycle
        else:
            from se3t.nn.kernel_triton import trial_problem  # deferred: optional dependency
        E = max(1, min(z.shape[0], base["chunk_edges"], 256))
        run = trial_problem(spec, E, z.shape[1], z.dtype, z.device)
        t0 = time.perf_counter()
        best, best_t = base, float("inf")
        for cand in _CANDIDATES[evaluation]:
            tiles = {**base, **cand}
            run(tiles)  # warm-up (and, on a GPU, compilation)
            t = time.perf_counter()
            run(tiles)
            t = time.perf_counter() - t
            if t < best_t:
                best, best_t = tiles, t
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
