"""What a figure was measured on: library versions and the device, named."""

from __future__ import annotations

import os
import platform
import sys

import torch

__all__ = ["cpu_model", "describe_environment", "resolve_device"]


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_model() -> str:
    """The host CPU's model name (what figures measured on the CPU name as their machine)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def describe_environment(device: torch.device | str | None = None) -> dict:
    """A JSON-ready description: versions, host CPU, and the device the work ran on.

    ``device_name`` is the GPU's marketing name on CUDA, the CPU model (with the number of cores
    torch may use) on the CPU, so that every throughput or memory figure names its machine.
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
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        env["device_name"] = torch.cuda.get_device_name(index)
        env["device_count"] = torch.cuda.device_count()
    else:
        env["device_name"] = f"{env['cpu']} ({env['torch_threads']} threads)"
        env["device_count"] = 1
    return env
