"""Training: the loop (AMP, accumulation, clipping, schedules), atomic checkpoints with exact
resume, DDP (torchrun, srun, submitit) and the submitit launcher.

Public API: :func:`train` (one process / one DDP rank), :func:`se3t.train.launch.launch`,
:func:`se3t.train.checkpoint.load_checkpoint`, :func:`se3t.train.checkpoint.load_model`, and
:class:`se3t.train.step.TrainingStep` (one step, as training, profile and benchmarks run it).

Names are imported on first use, so that the step harness's fresh process and the GPU benchmark
(which import only ``se3t.train.step``) need neither OmegaConf nor the dataset's Zarr.
"""

from __future__ import annotations

from se3t.lazy import lazy_exports

_EXPORTS = {
    "Trainer": "se3t.train.loop",
    "train": "se3t.train.loop",
    "load_checkpoint": "se3t.train.checkpoint",
    "load_model": "se3t.train.checkpoint",
    "save_checkpoint": "se3t.train.checkpoint",
    "TrainingStep": "se3t.train.step",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
