"""The machine a side-by-side benchmark ran on and how loaded it was: its summary's first line.

Imported by the timing scripts (``nvidia/timing.py``, ``rosettafold/timing.py``) from this
folder; standard library only, so any venv runs it."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def machine() -> dict:
    """CPU model, its vector ISA flags (AVX2, AVX-512, AMX), cores and platform (lscpu)."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next(
        (ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if "Model name" in ln), ""
    )
    flags = next(
        (ln.split(":", 1)[1].split() for ln in lscpu.splitlines() if ln.startswith("Flags")), []
    )
    isa = sorted(f for f in flags if f == "avx2" or f.startswith(("avx512", "amx")))
    return {"cpu": model, "isa": isa, "cores": os.cpu_count(), "platform": platform.platform()}


def load_avg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_info() -> dict:
    """Date, command line, machine and load at the start of a run."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "load_before": load_avg(),
    }


def summary_head(info: dict) -> list[str]:
    """The summary's first lines: when, where, how loaded, which command."""
    m = info["machine"]
    return [
        f"{info['date']}; {m['cpu']} ({m['cores']} cores; {', '.join(m['isa']) or 'no AVX2'}); "
        f"load {info['load_before']} before, {info['load_after']} after",
        f"command: `{info['command']}`",
    ]
