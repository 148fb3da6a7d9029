"""The report's sections: a run's model in words, and what a profile says about batch sizes."""

from __future__ import annotations

from se3t.config import ModelConfig
from se3t.eval.report_sections import batch_limits, model_words
from se3t.models import build


def test_model_words_count_parameters_and_know_the_paper_model():
    text, paper = model_words({})
    n = sum(p.numel() for p in build(ModelConfig()).parameters())
    assert paper and text.startswith("7 layers, degrees 0–3, 32 channels, 8 heads")
    assert f"{n:,} parameters" in text
    text, paper = model_words({"num_layers": 2, "channels": 8, "heads": 2})
    assert not paper and text.startswith("2 layers, degrees 0–3, 8 channels")


def _point(batch, status="ok", low_memory=False):
    return {
        "precision": "fp32",
        "fusion": "full",
        "low_memory": low_memory,
        "batch_size": batch,
        "status": status,
    }


def test_largest_batch_is_said_only_where_a_larger_one_failed():
    every_fits = {
        "points": [_point(b) for b in (4, 8, 64)],
        "largest_batch": {"fp32 full": 64},
    }
    text = batch_limits(every_fits)
    assert "Largest batch that fits" not in text
    assert "Every batch tried fits in fp32 full (up to 64)" in text
    failed = {
        "points": [
            _point(4),
            _point(8),
            _point(16, "oom"),
            _point(32, "skipped"),
            _point(4, low_memory=True),
        ],
        "largest_batch": {"fp32 full": 8, "fp32 full low_memory": 4},
    }
    text = batch_limits(failed)
    assert "Largest batch that fits, where a larger one failed: fp32 full: 8 (16: oom)" in text
    assert "Every batch tried fits in fp32 full low_memory (up to 4)" in text
