"""Helpers for the workflow tests (imported as `wf_helpers`; fixtures are in conftest.py).

Run the real Snakemake on the repository's Snakefile in a temporary working directory, with
the CI config (40 real QM9 molecules from qm9pack, a tiny model) or a copy of it with some keys
changed.

Each end-to-end test gets its own working directory; tests that are not about the data stage
point `data.raw_dir`/`data.path` at one dataset built once per session by the workflow itself.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "Snakefile"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
CI_CONFIG = Path(__file__).with_name("ci.yaml")


def write_config(path: Path, base: Path = CI_CONFIG, **changes) -> Path:
    """Write ``base`` with dotted keys changed (``write_config(p, **{"train.epochs": 3})``)."""
    cfg = yaml.safe_load(base.read_text())
    for dotted, value in changes.items():
        node = cfg
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def snakemake_cmd(workdir: Path, config: Path | None, *args: str, profile: str | Path = "local"):
    # targets and options first: --configfile and --profile take several values, so they go last
    cmd = [str(SNAKEMAKE), *args, "-s", str(SNAKEFILE), "-d", str(workdir)]
    if profile:
        cmd += [
            "--profile",
            str(profile if isinstance(profile, Path) else REPO / "profiles" / profile),
        ]
    if config is not None:
        cmd += ["--configfile", str(config)]
    return cmd


def _explain(workdir: Path, out: str) -> str:
    """The tail of Snakemake's output and of every rule log, for a failed assertion."""
    parts = [out[-6000:]]
    logs = Path(workdir) / "logs"
    if logs.is_dir():
        for log in sorted(logs.rglob("*.log")):
            text = log.read_text(errors="replace")[-3000:]
            parts.append(f"--- {log.relative_to(workdir)}\n{text}")
    return "\n".join(parts)


def run_snakemake(
    workdir: Path,
    config: Path | None,
    *args: str,
    profile: str | Path = "local",
    check: bool = True,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Run Snakemake to the end; on an unexpected exit status fail with its output and logs."""
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        snakemake_cmd(workdir, config, *args, profile=profile),
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"snakemake exited {proc.returncode} in {workdir}:\n{_explain(workdir, proc.stdout)}"
        )
    return proc


def start_snakemake(workdir: Path, config: Path, *args: str, profile: str | Path = "local"):
    """Start Snakemake in the background (for the kill tests); its output goes to a file."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = open(workdir / f"snakemake-{time.monotonic_ns()}.out", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        snakemake_cmd(workdir, config, *args, profile=profile),
        cwd=workdir,
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc.output_file = Path(out.name)
    return proc


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    """Poll ``predicate`` every 50 ms; fail naming ``what`` on timeout or when ``proc`` ends."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            text = proc.output_file.read_text() if hasattr(proc, "output_file") else ""
            pytest.fail(f"snakemake ended ({proc.returncode}) before {what}:\n{text[-6000:]}")
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def find_process(root_pid: int, *words: str) -> psutil.Process | None:
    """The first descendant of ``root_pid`` whose command line holds all ``words``."""
    for proc in descendants(root_pid):
        try:
            cmdline = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if all(w in cmdline for w in words) and "/bin/sh" not in cmdline[:8]:
            if "bash -c" in cmdline:
                continue
            return proc
    return None


def kill_tree(procs: list[psutil.Process]) -> None:
    """SIGKILL the given processes and everything below them (collected first, so none is
    orphaned and missed), then reap them."""
    everything = []
    for proc in procs:
        everything.append(proc)
        with contextlib.suppress(psutil.NoSuchProcess):
            everything.extend(proc.children(recursive=True))
    for proc in everything:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(everything, timeout=15)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def site_profile(folder: Path, account: str, partition: str) -> Path:
    """A copy of profiles/slurm with the site values (account, partitions) set: what a user does
    for their cluster, in the one place the profile keeps them."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    profile["default-resources"]["slurm_account"] = account
    profile["default-resources"]["slurm_partition"] = partition
    profile["set-resources"]["train"]["slurm_partition"] = partition
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return folder
