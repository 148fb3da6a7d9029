"""Validation during training: the MAE per target over a split, every rank taking its share,
and the score that selects the best checkpoint."""

from __future__ import annotations

import torch

from se3t.train import distributed as D
from se3t.train.loss import masked_abs_error

__all__ = ["Validation", "selection_score"]


class Validation:
    """Validation, as a base of ``Trainer``."""

    @torch.no_grad()
    def evaluate(self, dataset) -> dict[str, float]:
        """MAE per target in target units over ``dataset`` (ranks split it and reduce)."""
        self.model.eval()
        positions = list(range(self.env.rank, len(dataset), self.env.world_size))
        if self.sampler_kind == "chunks":  # chunk by chunk: each chunk decoded once
            chunk = self.basis_store.molecule_chunk[dataset.indices]
            positions.sort(key=lambda p: int(chunk[p]))
        bs = self.cfg.eval.batch_size
        batches = [positions[i : i + bs] for i in range(0, len(positions), bs)]
        sums = torch.zeros(2, len(dataset.targets), dtype=torch.float64)
        std = dataset.std.to(self.device)
        for batch in self.loader(dataset, batches):
            batch = batch.to(self.device, non_blocking=True)
            with self.autocast():
                pred = self.model(batch, self.basis(batch))  # [B, T]
            err, present = masked_abs_error(pred.float(), batch.y)
            err = err * std  # [B, T] target units, 0 where the target is missing
            sums[0] += err.sum(0).double().cpu()
            sums[1] += present.sum(0).double().cpu()
        D.all_reduce_(sums)
        self.model.train()
        mae = sums[0] / sums[1].clamp(min=1)
        return {t: float(mae[k]) for k, t in enumerate(dataset.targets)}


def selection_score(val_mae: dict[str, float], train_set) -> float:
    """Model selection: mean over targets of MAE / training std (unit-free)."""
    std = train_set.std.double()
    return float(sum(val_mae[t] / std[k] for k, t in enumerate(train_set.targets)) / len(val_mae))
