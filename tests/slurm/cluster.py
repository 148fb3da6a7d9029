"""The single-node SLURM cluster of the tests: the ``slurm_cluster`` fixture and job helpers.

``tests/conftest.py`` registers this module as a pytest plugin (``pytest_plugins``), so every
test folder (training, workflow) can ask for ``slurm_cluster``. The fixture starts the cluster
with ``tests/slurm/cluster.sh start`` when it does not answer yet, and stops it at the end of the
session only if it started it. Tests are skipped, with the reason, only where ``sbatch`` is
absent (or, with the cluster down, where the user is not root and so cannot start it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("cluster.sh")

__all__ = ["SCRIPT", "SlurmCluster", "slurm_cluster"]


@dataclass(frozen=True)
class SlurmCluster:
    """What a test needs to submit to the cluster."""

    partition: str  # default partition (never preempted)
    preemptable_partition: str  # PreemptMode=REQUEUE: `urgent` jobs preempt its jobs
    urgent_partition: str  # higher PriorityTier: preempts jobs of `preemptable_partition`
    account: str
    node: str
    cpus: int
    conf: str  # /etc/slurm/slurm.conf
    state_dir: Path  # daemons' logs, spool, pid files

    # ---- job helpers (all through the real SLURM client commands) --------------------------
    def job_state(self, job_id: str) -> str:
        """The job's state from squeue, or from sacct once it left the queue ('' if unknown)."""
        out = _run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], check=False)
        state = out.stdout.strip().splitlines()
        if out.returncode == 0 and state:
            return state[0].strip()
        out = _run(["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "State"], check=False)
        lines = [s.strip() for s in out.stdout.splitlines() if s.strip()]
        return lines[-1].split()[0] if lines else ""

    def wait_state(self, job_id: str, states: set[str] | tuple[str, ...], timeout: float = 120):
        """Poll until the job is in one of ``states``; return it (fail the test on timeout)."""
        end = time.monotonic() + timeout
        state = ""
        while time.monotonic() < end:
            state = self.job_state(job_id)
            if state in states:
                return state
            time.sleep(0.5)
        pytest.fail(f"SLURM job {job_id} not in {sorted(states)} after {timeout}s (last: {state})")

    def release(self, job_id: str) -> None:
        """Start a requeued job now: SLURM holds it PENDING (BeginTime) for about 120 s."""
        _run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=False)

    def signal(self, job_id: str, sig: str = "USR2") -> None:
        """Send a signal to the job's processes: USR2 is submitit's checkpoint-and-requeue."""
        _run(["scancel", f"--signal={sig}", str(job_id)])

    def cancel(self, job_id: str) -> None:
        _run(["scancel", str(job_id)], check=False)

    def idle_cpus(self) -> int:
        """CPUs of the node no job holds now (scontrol's CPUTot - CPUAlloc; sinfo's %C lags)."""
        out = _run(["scontrol", "-o", "show", "node", self.node]).stdout
        fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
        return int(fields["CPUTot"]) - int(fields["CPUAlloc"])


def _run(cmd: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _settings() -> dict[str, str]:
    out = _run(["bash", str(SCRIPT), "env"])
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def _up() -> bool:
    return _run(["bash", str(SCRIPT), "status"], check=False).returncode == 0


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node SLURM cluster (started here if needed, stopped if started here)."""
    if shutil.which("sbatch") is None:
        pytest.skip("SLURM tests need sbatch: install slurm-wlm (scripts/setup.sh --system)")
    started = False
    if not _up():
        if os.geteuid() != 0:
            pytest.skip("the SLURM test cluster is down and only root can start it")
        proc = _run(["bash", str(SCRIPT), "start"], check=False, timeout=180)
        if proc.returncode != 0:
            pytest.fail(f"tests/slurm/cluster.sh start failed:\n{proc.stderr[-3000:]}")
        started = True
    s = _settings()
    yield SlurmCluster(
        partition=s["PARTITION"],
        preemptable_partition=s["PREEMPTABLE_PARTITION"],
        urgent_partition=s["URGENT_PARTITION"],
        account=s["ACCOUNT"],
        node=s["NODE"],
        cpus=int(s["CPUS"]),
        conf=s["SLURM_CONF"],
        state_dir=Path(s["SE3T_SLURM_DIR"]),
    )
    if started:
        _run(["bash", str(SCRIPT), "stop"], check=False, timeout=180)
