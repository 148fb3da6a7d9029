"""Stop signals as a flag that every rank agrees on at a step boundary.

SIGUSR2 (SLURM preemption or time limit, through submitit) and SIGTERM only set a flag: the
training state is consistent again at the next optimizer-step boundary, where the ranks agree
on the flag (an all-reduce), rank 0 writes ``last.pt`` and training returns ``stopped``.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import torch

from se3t.train import distributed as D

__all__ = ["StopSignals"]


class StopSignals:
    """``with StopSignals(signals) as stop: ... if stop.agreed(distributed): ...``; handlers are
    installed only in the main thread (Python's rule) and put back on exit."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGUSR2, signal.SIGTERM)) -> None:
        self.signals = signals
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum, frame) -> None:
        self.requested = int(signum)

    def agreed(self, distributed: bool) -> bool:
        """Whether any rank got a stop signal (then every rank records it)."""
        flag = torch.tensor([0 if self.requested is None else int(self.requested)])
        if distributed:
            D.all_reduce_(flag, op="max")
        if int(flag) and self.requested is None:
            self.requested = int(flag)
        return bool(int(flag))
