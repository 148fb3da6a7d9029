"""The multi-node SLURM cluster of the tests: the ``slurm_cluster`` fixture and job helpers.

``tests/conftest.py`` registers this module as a pytest plugin (``pytest_plugins``), so every
test folder (training, workflow) can ask for ``slurm_cluster``. The fixture first takes
:data:`LOCK` (one test cluster per machine: concurrent pytest runs wait for each other instead
of colliding), then starts the cluster with ``tests/slurm/cluster.sh start`` when it does not
answer yet, and at the end of the session stops it (``cluster.sh stop``: the daemons by pid, the
namespaces and links) only if it started it -- also after a failed start. Tests are skipped,
with the reason, only where ``sbatch``, ``ip`` or ``unshare`` is absent (or, with the cluster
down, where the user is not root and so cannot start it).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("cluster.sh")
# one SLURM test cluster per machine: whoever runs SLURM tests holds this lock (flock(1) around
# pytest, or this fixture)
LOCK = Path("/tmp/se3t-slurm.lock")

__all__ = ["LOCK", "SCRIPT", "SlurmCluster", "slurm_cluster"]


@dataclass(frozen=True)
class SlurmCluster:
    """What a test needs to submit to the cluster."""

    partition: str  # default partition (never preempted)
    preemptable_partition: str  # PreemptMode=REQUEUE: `urgent` jobs preempt its jobs
    urgent_partition: str  # higher PriorityTier: preempts jobs of `preemptable_partition`
    account: str
    nodes: tuple[str, ...]  # se3t-n1, se3t-n2, ...: each its own network and UTS namespace
    cpus: int  # per node
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
        """CPUs of all nodes no job holds now (scontrol's CPUTot - CPUAlloc; sinfo's %C lags)."""
        idle = 0
        for line in _run(["scontrol", "-o", "show", "node"]).stdout.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if "CPUTot" in fields and "DOWN" not in fields.get("State", ""):
                idle += int(fields["CPUTot"]) - int(fields["CPUAlloc"])
        return idle

    def job_nodes(self, job_id: str) -> list[str]:
        """The hosts the job runs (or ran) on: squeue's node list, else sacct's NodeList."""
        for cmd in (
            ["squeue", "-h", "-j", str(job_id), "-o", "%N"],
            ["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "NodeList"],
        ):
            out = _run(cmd, check=False).stdout.split()
            if out and out[-1] not in ("", "None", "(null)"):
                hosts = _run(["scontrol", "show", "hostnames", out[-1]]).stdout.split()
                return hosts
        return []

    def node_state(self, node: str) -> str:
        return _run(["sinfo", "-h", "-n", node, "-o", "%T"]).stdout.strip()

    def kill_node(self, node: str) -> None:
        """The node fails: it is marked DOWN (as the controller does once a node stops
        answering for SlurmdTimeout), so SLURM requeues its jobs (JobRequeue=1), then its
        slurmd and every process on it are killed (SIGKILL). DOWN comes first so that SLURM
        has decided the requeue before the job's other ranks see their peer vanish and fail.
        :meth:`start_node` brings the node back."""
        _run(["scontrol", "update", f"NodeName={node}", "State=DOWN", "Reason=se3t-test-failure"])
        _run(["bash", str(SCRIPT), "node-kill", node])

    def start_node(self, node: str) -> None:
        proc = _run(["bash", str(SCRIPT), "node-start", node], check=False, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"cluster.sh node-start {node} failed: {proc.stderr[-2000:]}")


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


def _lock_fd() -> int:
    """A descriptor holding :data:`LOCK` exclusively. One inherited from ``flock LOCK pytest``
    already holds it (flock(2) locks belong to the open file, which the child shares): locking
    it again returns at once, where a new open of the file would wait for our own parent."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == str(LOCK):
                fd = os.dup(int(name))
                fcntl.flock(fd, fcntl.LOCK_EX)
                return fd
        except OSError:
            continue
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"\nslurm_cluster: waiting for {LOCK} (another SLURM test run holds it)", flush=True)
        fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running multi-node SLURM cluster (started here if needed, stopped if started here)."""
    missing = [b for b in ("sbatch", "slurmd", "ip", "unshare", "nsenter") if not shutil.which(b)]
    if missing:
        pytest.skip(
            f"SLURM tests need {', '.join(missing)}: install slurm-wlm, slurmdbd, munge, "
            "mariadb-server and iproute2 (scripts/setup.sh --system)"
        )
    if not _up() and os.geteuid() != 0:
        pytest.skip("the SLURM test cluster is down and only root can start it")
    fd = _lock_fd()
    started = False
    try:
        # a cluster left running may have been started by another checkout's cluster.sh:
        # `start` is idempotent and rewrites slurm.conf (reconfiguring on a change), so the
        # tests always run against this tree's settings
        started = not _up()  # a failed start is stopped too: it may have left daemons, netns
        proc = _run(["bash", str(SCRIPT), "start"], check=False, timeout=300)
        if proc.returncode != 0:
            pytest.fail(f"tests/slurm/cluster.sh start failed:\n{proc.stderr[-3000:]}")
        s = _settings()
        yield SlurmCluster(
            partition=s["PARTITION"],
            preemptable_partition=s["PREEMPTABLE_PARTITION"],
            urgent_partition=s["URGENT_PARTITION"],
            account=s["ACCOUNT"],
            nodes=tuple(s["NODES"].split()),
            cpus=int(s["CPUS"]),
            conf=s["SLURM_CONF"],
            state_dir=Path(s["SE3T_SLURM_DIR"]),
        )
    finally:
        if started:
            _run(["bash", str(SCRIPT), "stop"], check=False, timeout=300)
        os.close(fd)
