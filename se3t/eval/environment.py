"""What a figure was measured on: library versions and the device, named."""

from __future__ import annotations

import os
import platform
import sys

import torch

from se3t.device import cpu_model, device_name, resolve_device

__all__ = ["describe_environment"]


def describe_environment(device: torch.device | str | None = None) -> dict:
    """A JSON-ready description: versions, host CPU, and the device the work ran on.

    ``device_name`` is the GPU's marketing name on CUDA, the CPU model (with the number of
    threads torch may use) on the CPU (:func:`se3t.device.device_name`), so that every
    throughput or memory figure names its machine.
    """
    device = resolve_device("auto" if device is None else str(device))
    env = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device.type,
        "device_name": device_name(device),
        "device_count": torch.cuda.device_count() if device.type == "cuda" else 1,
    }
    return env
