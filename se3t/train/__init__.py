"""Training: the loop (AMP, accumulation, clipping, schedules), atomic checkpoints with exact
resume, DDP (torchrun, srun, submitit) and the submitit launcher.

Public API: :func:`train` (one process / one DDP rank), :func:`se3t.train.launch.launch`,
:func:`se3t.train.checkpoint.load_checkpoint`, :func:`se3t.train.checkpoint.load_model`.
"""

from se3t.train.checkpoint import load_checkpoint, load_model, save_checkpoint
from se3t.train.loop import Trainer, train

__all__ = ["Trainer", "load_checkpoint", "load_model", "save_checkpoint", "train"]
