"""Runs tests/nn/triton_cases.py under Triton's interpreter (TRITON_INTERPRET=1, set here for
that process only; the package never sets it), in a fresh pytest process: see its docstring."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")


def test_triton_kernel_under_the_interpreter(tmp_path):
    here = Path(__file__).parent
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    cmd += ["--rootdir", str(here.parent.parent), str(here / "triton_cases.py")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "5 passed" in proc.stdout, proc.stdout[-2000:]
