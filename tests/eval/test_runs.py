"""A run folder's results as the report reads them: how the report names their paths."""

from __future__ import annotations

from se3t.eval.runs import RunResults, shown_path


def test_shown_path_keeps_paths_outside_the_results_folder(tmp_path):
    results = tmp_path / "results"
    run = RunResults(
        "r", results / "runs" / "r", {"run": {"dir": "/scratch/job/run"}}, [], {}, None
    )
    assert shown_path("/scratch/job/run/best.pt", results, run) == "runs/r/best.pt"
    assert shown_path(results / "runs" / "r" / "last.pt", results, run) == "runs/r/last.pt"
    assert shown_path("/scratch/job/run2/best.pt", results, run) == "/scratch/job/run2/best.pt"
    assert shown_path("/other/best.pt", results) == "/other/best.pt"
    assert shown_path(results / "profile" / "memory.json", results) == "profile/memory.json"
    assert shown_path(results, results) == "."
