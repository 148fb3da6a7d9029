"""The workflow's static checks: `snakemake --lint`, dry runs of the full and demo configs and of
both profiles, several runs sharing the data and basis rules, and config errors that name the
key -- all without running a job."""

from __future__ import annotations

import re
import shlex

import pytest
import yaml
from wf_helpers import REPO, run_snakemake, write_config

pytestmark = pytest.mark.workflow


def _jobs(out: str) -> dict[str, int]:
    """The job-stats table of a dry run: rule -> count."""
    table = out.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def _shell(out: str, rule_word: str) -> list[list[str]]:
    """The shell commands of a dry run that start with ``se3t <rule_word>``, split into words."""
    cmds = []
    for line in out.splitlines():
        if line.startswith("Shell command: se3t "):
            words = shlex.split(line.removeprefix("Shell command: "))
            if words[1] == rule_word:
                cmds.append(words)
    return cmds


def _run_configs(tmp_path, config, runs, *args, profile="local") -> dict[str, dict]:
    """Write the runs' config files for real (only the config rules run) and read them back."""
    targets = [f"results/configs/runs/{run}.yaml" for run in runs]
    run_snakemake(tmp_path, config, *targets, *args, profile=profile)
    return {
        run: yaml.safe_load((tmp_path / t).read_text())
        for run, t in zip(runs, targets, strict=True)
    }


def test_lint_is_clean_but_for_software_deployment(tmp_path):
    proc = run_snakemake(REPO, None, "--lint", profile="", check=False)
    titles = re.findall(r"^\s+\* (.+?):?$", proc.stdout, flags=re.M)
    assert titles, proc.stdout[-3000:]
    # Rules run the se3t installed next to Snakemake (scripts/setup.sh); no conda env or container
    # is declared, which is the one lint left.  Anything else is a regression.
    others = sorted({t for t in titles if not t.startswith("Specify a conda environment")})
    assert not others, proc.stdout[-5000:]


def test_dry_run_full_config(tmp_path):
    proc = run_snakemake(
        tmp_path, REPO / "config" / "config.yaml", "-n", "--quiet", "rules", profile=""
    )
    jobs = _jobs(proc.stdout)
    assert jobs == {
        "all": 1,
        "build_dataset": 1,
        "fetch_raw": 1,
        "evaluate": 1,
        "finalize_basis": 1,
        "precompute_basis": 8,
        "profile_memory": 1,
        "report": 1,
        "run_config": 1,
        "stage_config": 2,
        "train": 1,
        "total": 19,
    }


def test_dry_run_commands_demo_local_profile(tmp_path):
    proc = run_snakemake(tmp_path, REPO / "config" / "demo.yaml", "-n", "-p")
    out = proc.stdout
    data = {c[2]: c for c in _shell(out, "data")}
    assert set(data) == {"fetch", "build"}
    for cmd in data.values():  # the data section (limit 600 ...) comes from the stage's file
        assert cmd[cmd.index("--config") + 1] == "results/configs/data.yaml"
    assert data["build"][data["build"].index("--raw") + 1] == "resources/qm9"
    basis = [c for c in _shell(out, "basis")]
    assert {c[c.index("--config") + 1] for c in basis} == {"results/configs/basis.yaml"}
    shards = sorted(c[c.index("--shard") + 1] for c in basis if c[2] == "precompute")
    assert shards == ["0/2", "1/2"]
    (launch,) = _shell(out, "launch")
    assert launch[2:4] == ["--config", "results/configs/runs/demo.yaml"]
    assert not [w for w in launch if "=" in w]  # on the local executor: the file and nothing else
    (profile,) = _shell(out, "profile")
    assert profile[2:4] == ["--config", "results/configs/runs/demo.yaml"]
    (report,) = _shell(out, "report")
    assert report[2] == "results" and report[report.index("--runs") + 1] == "results/runs/demo"
    run = _run_configs(tmp_path, REPO / "config" / "demo.yaml", ["demo"])["demo"]
    assert run["run"]["dir"] == "results/runs/demo"
    assert run["basis"]["manifest"] == "results/basis/manifest.json"
    assert run["data"]["limit"] == 600  # the whole resolved config, not a diff


def test_slurm_profile_passes_job_shape_to_launch(tmp_path):
    proc = run_snakemake(
        tmp_path,
        REPO / "config" / "config.yaml",
        "-n",
        "-p",
        profile="slurm",
    )
    (launch,) = _shell(proc.stdout, "launch")
    overrides = dict(w.split("=", 1) for w in launch[4:] if "=" in w)
    assert "launch.cluster" not in overrides  # the run's config file says slurm (below)
    # the values of profiles/slurm/config.yaml's `set-resources: train:`
    assert overrides["launch.gpus_per_node"] == "0"
    assert overrides["launch.nodes"] == "2"
    assert overrides["launch.time"] == "60"
    assert overrides["launch.account"] == "se3t"
    assert overrides["launch.partition"] == "debug"
    assert overrides["launch.mem_gb"] == "4"
    config = REPO / "config" / "config.yaml"
    run = _run_configs(tmp_path, config, ["homo"], "--config", "launch={cluster: slurm}")
    assert run["homo"]["launch"]["cluster"] == "slurm"  # what profiles/slurm's config sets


def test_runs_share_dataset_and_basis(tmp_path):
    config = write_config(
        tmp_path / "runs.yaml",
        **{
            "workflow.runs": {
                "homo": {},
                "lumo_seed1": {"data.targets": ["lumo"], "train.seed": 1},
                "bf16": {"train": {"precision": "bf16"}},
                "otf": {"basis.use": "compute"},  # bases computed in the forward pass
            }
        },
    )
    proc = run_snakemake(tmp_path, config, "-n", "-p")
    jobs = _jobs(proc.stdout)
    assert jobs["build_dataset"] == 1
    assert jobs["precompute_basis"] == 2
    assert jobs["finalize_basis"] == 1
    assert jobs["train"] == jobs["evaluate"] == jobs["profile_memory"] == 4
    names = ("homo", "lumo_seed1", "bf16", "otf")
    assert sorted(c[3] for c in _shell(proc.stdout, "launch")) == sorted(
        f"results/configs/runs/{run}.yaml" for run in names
    )
    runs = _run_configs(tmp_path, config, names)
    assert runs["lumo_seed1"]["data"]["targets"] == ["lumo"]
    assert runs["lumo_seed1"]["train"]["seed"] == 1
    assert runs["bf16"]["train"]["precision"] == "bf16"
    assert runs["homo"]["train"]["seed"] == 0  # the workflow config's
    assert runs["homo"]["basis"]["manifest"] == "results/basis/manifest.json"
    assert runs["otf"]["basis"]["manifest"] is None
    assert runs["otf"]["basis"]["use"] == "compute"
    assert {r["run"]["dir"] for r in runs.values()} == {f"results/runs/{run}" for run in names}
    assert {name: r["run"]["name"] for name, r in runs.items()} == {n: n for n in names}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"data.limt": 5}, "data.limt"),
        ({"model.heads": 3}, "model.heads"),
        ({"train.precision": "fp8"}, "train.precision"),
        ({"workflow.runs": {"a": {"data.limit": 10}}}, "workflow.runs.a: 'data.limit' is shared"),
        ({"workflow.runs": {"a": {"basis": {"dtype": "float16"}}}}, "'basis.dtype' is shared"),
        ({"workflow.runs": {"a": {"train.lrr": 1.0}}}, "train.lrr"),
        ({"workflow.runs": {"bad/name": {}}}, "run name 'bad/name'"),
        ({"workflow.runs": {"a": {"model.max_degree": 2}}}, "basis.max_degree"),
    ],
)
def test_bad_config_fails_at_start_naming_the_key(tmp_path, changes, message):
    config = write_config(tmp_path / "bad.yaml", **changes)
    proc = run_snakemake(tmp_path, config, "-n", check=False)
    assert proc.returncode != 0
    assert message in proc.stdout, proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout


def test_config_override_on_command_line_reaches_training(tmp_path):
    config = write_config(tmp_path / "c.yaml")
    (run,) = _run_configs(tmp_path, config, ["ci"], "--config", "train={epochs: 7}").values()
    assert run["train"]["epochs"] == 7


def test_a_config_file_changes_only_when_its_sections_do(tmp_path):
    """A run's training key rewrites the run's file, not the shared stages' files: the data and
    basis rules, which take only those, do not rerun (Snakemake reruns on a newer input)."""
    config = write_config(tmp_path / "c.yaml")
    targets = ["results/configs/data.yaml", "results/configs/basis.yaml"]
    _run_configs(tmp_path, config, ["ci"], *targets)
    files = [tmp_path / t for t in (*targets, "results/configs/runs/ci.yaml")]
    before = [f.stat().st_mtime_ns for f in files]
    assert yaml.safe_load(files[0].read_text()).keys() == {"data"}
    assert yaml.safe_load(files[1].read_text()).keys() == {"data", "basis"}
    run = _run_configs(tmp_path, config, ["ci"], *targets, "--config", "train={epochs: 7}")["ci"]
    after = [f.stat().st_mtime_ns for f in files]
    assert after[:2] == before[:2] and after[2] > before[2]
    assert run["train"]["epochs"] == 7
