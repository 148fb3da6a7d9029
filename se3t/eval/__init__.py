"""Evaluation: test metrics, memory/throughput profile, prediction for new molecules, report.

- :func:`evaluate` — MAE/RMSE per target on a split, predictions CSV, parity and error plots.
- :func:`profile` — training memory and throughput per (precision, fusion, low memory, batch
  size), each point measured by the step harness (:mod:`se3t.eval.point`) in a fresh process;
  ``memory.json`` (schema :data:`PROFILE_SCHEMA`) and two plots.
- :func:`predict` — predictions for XYZ/SDF files.
- :func:`build_report` — self-contained HTML report and its Markdown twin.

Names are imported on first use, so that a profile point's fresh process (which imports
``se3t.eval.point``) does not pay for pandas and matplotlib in its peak memory.
"""

from __future__ import annotations

from se3t.lazy import lazy_exports

_EXPORTS = {
    "evaluate": "se3t.eval.metrics",
    "compute_metrics": "se3t.eval.metrics",
    "resolve_checkpoint": "se3t.eval.metrics",
    "predict": "se3t.eval.prediction",
    "predictions_csv": "se3t.eval.prediction",
    "profile": "se3t.eval.profiling",
    "largest_batch": "se3t.eval.profiling",
    "build_report": "se3t.eval.report",
    "METRICS_SCHEMA": "se3t.eval.schema",
    "PROFILE_SCHEMA": "se3t.eval.schema",
    "validate": "se3t.eval.schema",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
