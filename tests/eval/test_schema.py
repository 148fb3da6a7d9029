"""The documented JSON schemas accept what se3t writes and reject what it must not."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from se3t.errors import InputError
from se3t.eval.schema import METRICS_SCHEMA, PROFILE_SCHEMA, validate


def _point(**kw):
    p = {
        "fusion": "pairwise",
        "precision": "fp32",
        "low_memory": False,
        "batch_size": 10,
        "basis": "step",
        "status": "ok",
        "peak_memory_bytes": 123,
        "baseline_memory_bytes": 100,
        "added_memory_bytes": 23,
        "mol_per_s": 5.0,
        "step_time_s": 2.0,
        "num_atoms": 180,
        "num_edges": 370,
        "error": None,
        "wall_s": 3.0,
    }
    p.update(kw)
    return p


def _profile_doc():
    return {
        "schema_version": 2,
        "kind": "se3t.profile",
        "created": "2026-01-01T00:00:00+00:00",
        "environment": {"torch": "2.13.0", "device": "cpu", "device_name": "x86 (2 threads)"},
        "memory_metric": "cpu_peak_rss",
        "steps": 3,
        "warmup_steps": 1,
        "basis": "step",
        "model": {"num_layers": 1},
        "points": [
            _point(),
            _point(
                batch_size=20,
                status="oom",
                peak_memory_bytes=None,
                added_memory_bytes=None,
                mol_per_s=None,
                step_time_s=None,
                error="RuntimeError: can't allocate memory",
            ),
        ],
        "largest_batch": {"fp32 pairwise": 10},
    }


def test_profile_schema_accepts_a_valid_document():
    validate(_profile_doc(), PROFILE_SCHEMA, "memory.json")


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.pop("points"), "(top level)"),
        (lambda d: d["points"][0].update(status="fine"), "['points'][0]['status']"),
        (lambda d: d["points"][0].update(precision="fp64"), "['points'][0]['precision']"),
        (lambda d: d["points"][0].update(fusion="fused"), "['points'][0]['fusion']"),
        (lambda d: d["points"][0].update(mol_per_s=None), "['points'][0]['mol_per_s']"),
        (lambda d: d["points"][1].update(error=None), "['points'][1]['error']"),
        (lambda d: d["points"][0].update(batch_size=0), "['points'][0]['batch_size']"),
        (lambda d: d.update(memory_metric="vms"), "['memory_metric']"),
    ],
)
def test_profile_schema_names_the_bad_field(mutate, field):
    doc = copy.deepcopy(_profile_doc())
    mutate(doc)
    with pytest.raises(InputError) as err:
        validate(doc, PROFILE_SCHEMA, "memory.json")
    assert str(err.value).startswith(f"memory.json: field {field}")


def test_metrics_schema_rejects_negative_mae():
    doc = {
        "schema_version": 1,
        "kind": "se3t.evaluate",
        "created": "2026-01-01T00:00:00+00:00",
        "checkpoint": "run/best.pt",
        "split": "test",
        "count": 3,
        "targets": ["homo"],
        "metrics": {"homo": {"unit": "eV", "count": 3, "mae": 0.1, "rmse": 0.2}},
        "environment": {"torch": "2.13.0", "device": "cpu", "device_name": "cpu"},
    }
    validate(doc, METRICS_SCHEMA, "metrics.json")
    doc["metrics"]["homo"]["mae"] = -1.0
    with pytest.raises(InputError, match=r"metrics.json: field \['metrics'\]\['homo'\]\['mae'\]"):
        validate(doc, METRICS_SCHEMA, "metrics.json")


def test_schema_printed_by_module_is_the_one_used():
    out = subprocess.run(
        [sys.executable, "-m", "se3t.eval.schema", "profile"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out) == PROFILE_SCHEMA
