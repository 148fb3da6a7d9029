"""The device a step runs on: which one, its name in figures, and the memory it holds.

Peak memory has one meaning across training, ``se3t profile`` and the benchmarks: on CUDA
``torch.cuda.max_memory_allocated``; on the CPU the process's peak resident set size (the
kernel's ``VmHWM``), whose mark :func:`reset_peak_memory` moves down to the current RSS, the
CPU twin of ``torch.cuda.reset_peak_memory_stats``.
"""

from __future__ import annotations

import platform
import resource

import torch

__all__ = [
    "cpu_model",
    "current_memory",
    "device_name",
    "is_out_of_memory",
    "limit_cpu_memory",
    "peak_memory",
    "reset_peak_memory",
    "resolve_device",
    "synchronize",
]


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


def device_name(device: torch.device, world_size: int = 1) -> str:
    """A figure's machine: the GPU's name (``torch.cuda.get_device_name``) or the CPU model with
    the threads torch uses, prefixed with ``N x`` when N ranks work together."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{cpu_model()} ({torch.get_num_threads()} threads)"
    return name if world_size == 1 else f"{world_size} x {name}"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so a clock reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def current_memory(device: torch.device) -> int:
    """Bytes held now: CUDA memory allocated by tensors, or the process's resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else peak_memory(device)


def peak_memory(device: torch.device) -> int:
    """Peak bytes since the last :func:`reset_peak_memory` (on the CPU, where the kernel cannot
    reset the mark, since the process started: ``ru_maxrss``)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    kib = _status_kib("VmHWM")
    if kib is None:
        kib = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # Linux: KiB
    return kib * 1024


def reset_peak_memory(device: torch.device) -> bool:
    """Move the peak mark down to what is held now. On the CPU this writes 5 to
    ``/proc/self/clear_refs`` (Linux >= 4.0), which resets VmHWM; False where that fails (then
    :func:`peak_memory` is the peak since the process started)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def limit_cpu_memory(limit: int) -> None:
    """Cap this process's data at ``limit`` bytes: RLIMIT_DATA covers heap and private anonymous
    mappings (Linux >= 4.7), so an allocation beyond it fails as a real out-of-memory would."""
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure (CUDA's, or the CPU allocator's under a cap)."""
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "cannot allocate" in text
    )
