"""FLOP count of a training step from the fibers and edge counts, and the machine's roofline.

The count is that of the TFN convolutions (every :class:`se3t.nn.conv.ConvSE3` of the model),
which hold all but a few percent of the arithmetic: per fusion group and edge

- radial MLP: ``2 (F H + H H)`` (hidden layers) and ``2 H R`` (last layer, ``R`` radial
  weights: ``sum_{d_in, d_out} C_i C_o num_freq``),
- ``T = x B``: ``2 (2 d_in + 1) num_freq (2 d_out + 1) C_i`` per degree pair,
- the radial contraction: ``2 C_o K (2 d_out + 1)`` per output degree (``K = C_i sum num_freq``).

A training step counts as 3x the forward pass (backward: two products of each forward one's
size), the usual convention; the backward pass's recomputation of ``R`` (fused paths) is not
counted, so the rate is of useful work and comparable between paths. The roofline is the rate
of a square float32 matmul (``torch.mm``, MKL/oneDNN), measured in the same process.
"""

from __future__ import annotations

import re
import time

import torch

from se3t.device import cpu_model
from se3t.so3.basis import num_freq

__all__ = ["conv_flops", "machine", "model_step_flops", "sgemm_gflops"]


def conv_flops(conv, num_edges: int, num_nodes: int) -> int:
    """Forward FLOPs of one ``ConvSE3`` on a graph of ``num_edges`` edges (self-interaction
    on ``num_nodes`` nodes included)."""
    E, total = num_edges, 0
    for spec, radial in zip(conv.specs, conv.radial, strict=True):
        H = radial.hidden_features
        total += 2 * E * (radial.in_features * H + H * H) + 2 * E * H * spec.num_radial
        for di, ci, do, co in spec.pairs():
            nf, mo = num_freq(di, do), 2 * do + 1
            total += 2 * E * (2 * di + 1) * nf * mo * ci  # T
            total += 2 * E * co * ci * nf * mo  # contraction with the radial weights
    if conv.self_interaction:
        for key, w in conv.self_weights.items():
            total += 2 * num_nodes * w.shape[0] * w.shape[1] * (2 * int(key) + 1)
    return total


def model_step_flops(model, num_edges: int, num_nodes: int) -> int:
    """FLOPs of one training step (3x the forward pass) of every ``ConvSE3`` in ``model``."""
    from se3t.nn.conv import ConvSE3  # deferred: keeps this module importable on its own

    fwd = sum(
        conv_flops(m, num_edges, num_nodes) for m in model.modules() if isinstance(m, ConvSE3)
    )
    return 3 * fwd


def sgemm_gflops(n: int = 2048, repeats: int = 3, device: str = "cpu") -> float:
    """Best rate of ``repeats`` square ``n x n`` float32 matmuls, GFLOP/s (torch's threads)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    out = torch.empty(n, n, device=device)
    torch.mm(a, b, out=out)  # warm-up: pages, library init
    best = float("inf")
    for _ in range(repeats):
        if device != "cpu":
            torch.cuda.synchronize()
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        if device != "cpu":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def machine() -> dict:
    """The CPU's model name (:func:`se3t.device.cpu_model`), its SIMD/matrix ISA flags (avx2,
    avx512*, amx*, fma) and the load average: what every CPU figure records beside it."""
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = sorted(
                        {
                            f
                            for f in line.split(":", 1)[1].split()
                            if re.match(r"(avx2|avx512|amx|fma)", f)
                        }
                    )
                    break
    except OSError:
        pass
    try:
        with open("/proc/loadavg") as f:
            load = f.read().split()[0]
    except OSError:
        load = ""
    return {"cpu": cpu_model(), "isa": " ".join(flags), "load": load}
