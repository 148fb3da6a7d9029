"""JSON schemas of the files evaluation writes, and validators that name the bad field.

``memory.json`` (written by ``se3t profile``) and ``metrics.json`` (``se3t evaluate``) are read
back by ``se3t report`` and by users' own scripts, so their layout is a documented contract:
``docs/evaluation.md`` prints these schemas, and the report validates its inputs against them.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import jsonschema

from se3t.choices import Fusion, Precision, ProfileBasis, Split
from se3t.errors import InputError

__all__ = [
    "METRICS_SCHEMA",
    "PROFILE_SCHEMA",
    "PROFILE_SCHEMA_VERSION",
    "METRICS_SCHEMA_VERSION",
    "validate",
]

PROFILE_SCHEMA_VERSION = 2  # 2: points in the config's words (fusion, precision, low_memory)
METRICS_SCHEMA_VERSION = 1

_ENVIRONMENT = {
    "type": "object",
    "required": ["torch", "device", "device_name"],
    "properties": {
        "torch": {"type": "string"},
        "device": {"enum": ["cpu", "cuda"]},
        "device_name": {"type": "string"},
    },
}

_NUMBER_OR_NULL = {"type": ["number", "null"]}
_POS_INT = {"type": "integer", "minimum": 1}

PROFILE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "se3t profile: training memory and throughput per batch size",
    "type": "object",
    "required": [
        "schema_version",
        "kind",
        "created",
        "environment",
        "memory_metric",
        "steps",
        "warmup_steps",
        "basis",
        "model",
        "points",
        "largest_batch",
    ],
    "properties": {
        "schema_version": {"const": PROFILE_SCHEMA_VERSION},
        "kind": {"const": "se3t.profile"},
        "created": {"type": "string", "description": "ISO 8601 time, UTC"},
        "config": {"type": "object", "description": "the resolved se3t config"},
        "environment": _ENVIRONMENT,
        "memory_metric": {
            "enum": ["cuda_max_memory_allocated", "cpu_peak_rss"],
            "description": "CUDA: torch.cuda.max_memory_allocated over the timed steps; "
            "CPU: peak resident set size of the point's process over the timed steps "
            "(VmHWM after resetting it through /proc/self/clear_refs)",
        },
        "steps": _POS_INT,
        "warmup_steps": {"type": "integer", "minimum": 0},
        "basis": {"enum": [b.value for b in ProfileBasis]},
        "model": {"type": "object"},
        "points": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "fusion",
                    "precision",
                    "low_memory",
                    "batch_size",
                    "basis",
                    "status",
                    "peak_memory_bytes",
                    "baseline_memory_bytes",
                    "added_memory_bytes",
                    "mol_per_s",
                    "step_time_s",
                    "num_atoms",
                    "num_edges",
                    "error",
                    "wall_s",
                ],
                "properties": {
                    "fusion": {"enum": [f.value for f in Fusion]},
                    "precision": {"enum": [p.value for p in Precision]},
                    "low_memory": {"type": "boolean"},
                    "batch_size": _POS_INT,
                    "basis": {"enum": [b.value for b in ProfileBasis]},
                    "status": {"enum": ["ok", "oom", "error", "timeout", "skipped"]},
                    "peak_memory_bytes": {"type": ["integer", "null"], "minimum": 0},
                    "baseline_memory_bytes": {
                        "type": ["integer", "null"],
                        "minimum": 0,
                        "description": "held before the first step: interpreter, torch, model, "
                        "batch (CUDA: tensors allocated)",
                    },
                    "added_memory_bytes": {
                        "type": ["integer", "null"],
                        "minimum": 0,
                        "description": "peak - baseline: what the training step adds",
                    },
                    "mol_per_s": _NUMBER_OR_NULL,
                    "step_time_s": _NUMBER_OR_NULL,
                    "num_atoms": {"type": ["integer", "null"], "minimum": 0},
                    "num_edges": {"type": ["integer", "null"], "minimum": 0},
                    "error": {"type": ["string", "null"]},
                    "wall_s": {"type": "number", "minimum": 0},
                    "warmup_times_s": {
                        "type": ["array", "null"],
                        "items": {"type": "number"},
                        "description": "every untimed step: the configured warm-up, then more "
                        "until two consecutive steps agree within 25% (se3t.eval.point.warm_up)",
                    },
                    "step_times_s": {
                        "type": ["array", "null"],
                        "items": {"type": "number"},
                        "description": "every timed step (step_time_s is their median)",
                    },
                    "kernel": {
                        "type": "string",
                        "description": "model.kernel and the fused kernel's tiles per shape "
                        "(se3t.nn.tuning.KernelTuner.report)",
                    },
                    "peak_reset": {
                        "type": ["boolean", "null"],
                        "description": "CPU: the peak-RSS mark was reset after the warm-up "
                        "(peak over the timed steps); false: peak since the process started",
                    },
                },
                # a point that ran has its figures; one that did not says why
                "if": {"properties": {"status": {"const": "ok"}}},
                "then": {
                    "properties": {
                        "peak_memory_bytes": {"type": "integer"},
                        "added_memory_bytes": {"type": "integer"},
                        "mol_per_s": {"type": "number", "exclusiveMinimum": 0},
                        "step_time_s": {"type": "number", "exclusiveMinimum": 0},
                        "error": {"type": "null"},
                    }
                },
                "else": {"properties": {"error": {"type": "string"}}},
            },
        },
        "largest_batch": {
            "type": "object",
            "description": "per series ('fp32 pairwise', 'fp16 full low_memory'): the largest "
            "batch size with status ok (null: none)",
            "additionalProperties": {"type": ["integer", "null"]},
        },
        "largest_batch_per_precision": {
            "type": "object",
            "description": "per precision: the largest batch size that fits with any fusion",
            "additionalProperties": {"type": ["integer", "null"]},
        },
    },
}

_TARGET_METRICS = {
    "type": "object",
    "required": ["unit", "count", "mae", "rmse"],
    "properties": {
        "unit": {"type": "string"},
        "count": _POS_INT,
        "mae": {"type": "number", "minimum": 0},
        "rmse": {"type": "number", "minimum": 0},
        "mae_mev": {"type": "number", "minimum": 0},
        "rmse_mev": {"type": "number", "minimum": 0},
        "max_abs_error": {"type": "number", "minimum": 0},
    },
}

METRICS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "se3t evaluate: errors per target on one split",
    "type": "object",
    "required": [
        "schema_version",
        "kind",
        "created",
        "checkpoint",
        "split",
        "count",
        "targets",
        "metrics",
        "environment",
    ],
    "properties": {
        "schema_version": {"const": METRICS_SCHEMA_VERSION},
        "kind": {"const": "se3t.evaluate"},
        "created": {"type": "string"},
        "checkpoint": {"type": "string"},
        "epoch": {"type": ["integer", "null"]},
        "step": {"type": ["integer", "null"]},
        "split": {"enum": [s.value for s in Split]},
        "dataset": {"type": "string"},
        "count": _POS_INT,
        "targets": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "metrics": {"type": "object", "additionalProperties": _TARGET_METRICS},
        "environment": _ENVIRONMENT,
        "batch_size": _POS_INT,
        "mol_per_s": {"type": "number"},
    },
}


def validate(obj: Any, schema: dict[str, Any], source: str) -> None:
    """Raise :class:`InputError` naming ``source`` and the JSON path of the first violation."""
    validator = jsonschema.Draft202012Validator(schema)
    # best_match prefers the deepest error outside if/then branches: the field that is wrong
    err = jsonschema.exceptions.best_match(validator.iter_errors(obj))
    if err is not None:
        where = "".join(f"[{p!r}]" for p in err.absolute_path) or "(top level)"
        raise InputError(f"{source}: field {where}: {err.message}")


def main(argv: list[str] | None = None) -> int:
    """``python -m se3t.eval.schema profile|metrics``: print the JSON schema."""
    argv = sys.argv[1:] if argv is None else argv
    schemas = {"profile": PROFILE_SCHEMA, "metrics": METRICS_SCHEMA}
    if len(argv) != 1 or argv[0] not in schemas:
        print("usage: python -m se3t.eval.schema profile|metrics", file=sys.stderr)
        return 2
    print(json.dumps(schemas[argv[0]], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
