"""Training jobs with an injected fault, submitted through ``launch(cfg, job_class=...)``.

The tests register this module with cloudpickle to be pickled by value, so the job unpickles
it without the tests folder on its path."""

from __future__ import annotations

from se3t.train.launch import TrainJob


class CrashOnRank1(TrainJob):
    """Rank 1 raises in the middle of training, right where every rank meets in a collective
    (the stop-flag all-reduce after each optimizer step, ``StopSignals.agreed``); rank 0 is
    then waiting for it."""

    CRASH_AT_STEP = 2

    def make_trainer(self, trainer_class, cfg, rank):
        trainer = super().make_trainer(trainer_class, cfg, rank)
        if rank == 1:
            agreed = trainer.stop.agreed

            def crash(distributed: bool) -> bool:
                if trainer.step >= self.CRASH_AT_STEP:
                    raise RuntimeError(f"injected fault on rank 1 at step {trainer.step}")
                return agreed(distributed)

            trainer.stop.agreed = crash
        return trainer
