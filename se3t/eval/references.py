"""Published figures that se3t's results are shown beside, and the units of the QM9 targets.

Sources: NVIDIA DeepLearningExamples, ``DGLPyTorch/DrugDiscovery/SE3Transformer/README.md``
(results on QM9 ``homo``, DGX A100 and V100) and Fuchs et al., "SE(3)-Transformers:
3D Roto-Translation Equivariant Attention Networks", NeurIPS 2020 (QM9 homo: 35 meV).
Only the figures these sources state for the setup se3t trains (QM9 ``homo``) are listed.
"""

from __future__ import annotations

from se3t.data.sources.qm9 import TARGET_UNITS

__all__ = [
    "ENERGY_TARGETS",
    "PAPER_MODEL",
    "MEMORY_REFERENCES",
    "PUBLISHED_MAE",
    "THROUGHPUT_REFERENCES",
    "UNITS",
]

# Units of the 12 targets as the dataset store holds them (energies converted to eV): the data
# stage's table, so that a report never disagrees with the store.
UNITS: dict[str, str] = dict(TARGET_UNITS)

# Targets in eV: their errors are also given in meV, the unit papers report them in.
ENERGY_TARGETS = tuple(t for t, u in UNITS.items() if u == "eV")

# The model every published figure below was measured with (NVIDIA's QM9 training script and
# the paper): model.* keys of se3t's config. A run of another model is named as such beside them.
PAPER_MODEL: dict[str, int] = {"num_layers": 7, "max_degree": 3, "channels": 32, "heads": 8}

# Published test MAEs, per target, in the target's unit (eV for energies).
PUBLISHED_MAE: dict[str, list[dict]] = {
    "homo": [
        {
            "source": "NVIDIA SE3Transformer README (100 epochs, 8x A100, TF32 and AMP)",
            "low": 0.0342,
            "high": 0.0346,
            "unit": "eV",
        },
        {
            "source": "Fuchs et al. 2020 (SE(3)-Transformer paper)",
            "low": 0.035,
            "high": 0.035,
            "unit": "eV",
        },
    ],
}

# Training throughput on QM9 homo, molecules per millisecond (NVIDIA README).
THROUGHPUT_REFERENCES: list[dict] = [
    {
        "device": "1x NVIDIA A100 (DGX A100)",
        "precision": "TF32",
        "batch_size": 240,
        "mol_per_ms": 2.21,
    },
    {
        "device": "1x NVIDIA A100 (DGX A100)",
        "precision": "AMP",
        "batch_size": 240,
        "mol_per_ms": 2.92,
    },
    {
        "device": "8x NVIDIA A100 (DGX A100)",
        "precision": "AMP",
        "batch_size": 240,
        "mol_per_ms": 22.95,
    },
]

# Peak training memory at batch 100 on a V100 (NVIDIA README), bytes.
MEMORY_REFERENCES: list[dict] = [
    {
        "device": "NVIDIA V100",
        "variant": "original implementation",
        "batch_size": 100,
        "peak_bytes": 27e9,
    },
    {"device": "NVIDIA V100", "variant": "fp32", "batch_size": 100, "peak_bytes": 5.7e9},
    {"device": "NVIDIA V100", "variant": "AMP", "batch_size": 100, "peak_bytes": 3.8e9},
    {
        "device": "NVIDIA V100",
        "variant": "AMP + low memory",
        "batch_size": 100,
        "peak_bytes": 3.0e9,
    },
]
