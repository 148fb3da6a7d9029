# Paths, targets and the config, derived once for every rule file.
#
# The Snakemake config IS an se3t config (sections data, basis, model, train, run, launch, eval,
# workflow).  It is validated here, when the workflow starts, by `se3t.config.load` -- the one
# source of truth -- so a typo fails before any job runs, with an error naming the key.
#
# `workflow.runs` lists named runs, each a mapping of overrides (`train.seed: 1`,
# `data.targets: [lumo]`, `train.precision: bf16`, ...) on top of the config.  All runs share the
# dataset and basis rules; the keys that decide those artifacts can therefore only be set at the
# top level (PER_RUN_KEYS below lists what a run may change there).
#
# Rules pass files, not strings: workflow/rules/config.smk writes each run's resolved config (and
# the sections a shared stage reads) as a YAML file, and every command of a run takes that file
# with --config.  Only the job shape of the train rule's resources travels as overrides.

import json
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

import yaml

from se3t.config import ConfigError, load, save, to_dict
from se3t.io import write_text

# ------------------------------------------------------------------------------------------------
# `se3t` in the rules is the one next to the Python that runs Snakemake: the workflow works
# without activating the virtual environment, also inside SLURM jobs (they run the same
# interpreter, and the jobs inherit this PATH)
_BIN = str(Path(sys.executable).parent)
if (Path(_BIN) / "se3t").exists() and _BIN not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = os.pathsep.join([_BIN, os.environ.get("PATH", "")])

# What a run may change in the data and basis sections: how it splits and reads the shared
# artifacts.  Every other data.* and basis.* key decides the dataset or the basis store, which
# all runs share, so it is set at the top level only (as are run.* and workflow.*).
PER_RUN_KEYS = (
    "data.targets",
    "data.split_seed",
    "data.n_train",
    "data.test_fraction",
    "data.train_fraction",
    "data.num_workers",
    "basis.use",
    "basis.read",
    "basis.cache_chunks",
    "basis.buffer_chunks",
)
SHARED_SECTIONS = ("data", "basis", "run", "workflow")
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _flatten(tree, prefix=""):
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and empty mappings stay leaves."""
    flat = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _fail(message):
    raise WorkflowError(f"se3t workflow config: {message}")


def _load(overrides):
    try:
        return load(None, overrides)
    except ConfigError as err:
        # load() names dict overrides "override"; here they are the workflow's config
        _fail(str(err).removeprefix("override: "))


def _base_configfile():
    """The config file that the run's overrides are relative to (the last one given)."""
    files = list(workflow.overwrite_configfiles) or list(workflow.configfiles)
    if not files:
        _fail("no config file: pass --configfile (config/config.yaml or config/demo.yaml)")
    path = os.path.abspath(files[-1])
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _as_value(value):
    """A value as OmegaConf's dotlist parses it back (YAML flow style; JSON is YAML)."""
    if isinstance(value, str):
        plain = bool(value) and re.fullmatch(r"[A-Za-z0-9_./:@+-]+", value) is not None
        ambiguous = value.lower() in ("null", "true", "false", "yes", "no", "on", "off", "~")
        if plain and not ambiguous and not re.fullmatch(r"[-+.0-9eE]+", value):
            return value
    return json.dumps(value)


def as_overrides(flat):
    """A mapping of dotted keys to values as shell-quoted `key=value` words."""
    return " ".join(shlex.quote(f"{k}={_as_value(v)}") for k, v in flat.items())


# ------------------------------------------------------------------------------------------------
# validate the config: the whole Snakemake config, then every run
CONFIGFILE = _base_configfile()
try:
    load(CONFIGFILE)  # errors in the file itself are named with the file
except ConfigError as err:
    _fail(str(err))
CFG = _load({k: v for k, v in config.items()})
RESULTS = CFG.workflow.results.rstrip("/")
LOGS = CFG.workflow.logs.rstrip("/")

RAW_DIR = CFG.data.raw_dir
DATASET = CFG.data.path
CONFIG_DIR = f"{RESULTS}/configs"
BASIS_DIR = f"{RESULTS}/basis"
BASIS_MANIFEST = f"{BASIS_DIR}/manifest.json"
BASIS_SHARDS = CFG.basis.shards
REPORT_HTML = f"{RESULTS}/report.html"
REPORT_MD = f"{RESULTS}/report.md"


def run_dir(run):
    """A run's folder; rules pass "{run}" to get the wildcard pattern."""
    return f"{RESULTS}/runs/{run}"


def run_config(run):
    """The file that holds a run's resolved config, which every command of the run takes."""
    return f"{CONFIG_DIR}/runs/{run}.yaml"


def _run_overrides(name, spec):
    if not _RUN_NAME.match(str(name)):
        _fail(f"workflow.runs: run name {name!r} must be letters, digits, '_', '.', '-'")
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        _fail(f"workflow.runs.{name}: give a mapping of config keys to values, got {spec!r}")
    flat = _flatten(spec)
    for key in flat:
        if key.split(".")[0] in SHARED_SECTIONS and key not in PER_RUN_KEYS:
            _fail(
                f"workflow.runs.{name}: {key!r} is shared by all runs (dataset, basis, "
                "run folders); set it at the top level of the config"
            )
    return flat


def _resolve_runs():
    specs = CFG.workflow.runs or {"default": {}}
    runs = {}
    sections = {k: v for k, v in config.items()}
    for name, spec in specs.items():
        flat = _run_overrides(name, spec)
        overrides = dict(sections)
        overrides.update(flat)
        overrides["run.dir"] = run_dir(name)
        overrides["run.name"] = str(name)
        if flat.get("basis.use", CFG.basis.use) != "compute":
            overrides["basis.manifest"] = BASIS_MANIFEST
        try:
            runs[str(name)] = cfg = load(None, overrides)
        except ConfigError as err:
            _fail(f"workflow.runs.{name}: {str(err).removeprefix('override: ')}")
        if cfg.basis.use != "compute" and cfg.model.max_degree != cfg.basis.max_degree:
            _fail(
                f"workflow.runs.{name}: model.max_degree={cfg.model.max_degree} differs from "
                f"basis.max_degree={cfg.basis.max_degree}, the degree of the shared basis store "
                "(set them equal, or basis.use=compute)"
            )
    return runs


RUNS = _resolve_runs()


def stage_sections(stage):
    """The sections of the config that a shared stage reads: `data` for the data rules, `data`
    and `basis` for the basis rules (the dataset path and the store's settings).  Its file holds
    only these, so changing a run's training keys never reruns the shared stages."""
    sections = {"data": ("data",), "basis": ("data", "basis")}[stage]
    resolved = to_dict(CFG)
    return {name: resolved[name] for name in sections}


def config_settings(sections):
    """A config as canonical JSON: a config rule's `params.settings`, so that changing any value
    (in the file or on the command line) rewrites the file (Snakemake's params trigger)."""
    return json.dumps(sections, sort_keys=True)


# the train rule's resources that shape the training job on SLURM (set in profiles/slurm),
# Snakemake resource -> (launch.* key, conversion)
_LAUNCH_RESOURCES = {
    "nodes": ("launch.nodes", int),
    "gpus_per_node": ("launch.gpus_per_node", int),
    "tasks_per_node": ("launch.tasks_per_node", int),
    "cpus_per_task": ("launch.cpus_per_task", int),
    "mem_mb": ("launch.mem_gb", lambda mb: max(1, -(-int(mb) // 1024))),
    "runtime": ("launch.time", int),
    "slurm_partition": ("launch.partition", str),
    "slurm_account": ("launch.account", str),
    "slurm_qos": ("launch.qos", str),
    "constraint": ("launch.constraint", str),
}


def launch_overrides(run, resources):
    """The train command's overrides besides its config file: when the run trains on SLURM, the
    job shape from the train rule's resources (the profile is the one place for site values)."""
    flat = {}
    if RUNS[run].launch.cluster == "slurm":
        for resource, (key, convert) in _LAUNCH_RESOURCES.items():
            value = getattr(resources, resource, None)
            if value not in (None, ""):
                flat[key] = convert(value)
    return as_overrides(flat)


def basis_key(receipts):
    """The basis store key, read from the precompute receipts (all shards name one store)."""
    keys = set()
    for path in receipts:
        try:
            with open(path) as fh:
                keys.add(json.load(fh)["key"])
        except FileNotFoundError:
            return "<KEY from the precompute receipts>"  # dry run: not computed yet
        except (KeyError, ValueError) as err:
            raise WorkflowError(f"basis receipt {path}: no key ({err})") from err
    if len(keys) != 1:
        raise WorkflowError(f"basis receipts {list(receipts)} name several stores: {sorted(keys)}")
    return keys.pop()


def basis_input(wildcards):
    """A run's basis manifest, when it reads the bases from the store (else none: computed)."""
    return [] if RUNS[wildcards.run].basis.use == "compute" else [BASIS_MANIFEST]


def all_targets():
    targets = [REPORT_HTML]
    for run in RUNS:
        targets.append(f"{run_dir(run)}/metrics.json")
        if CFG.workflow.profile_memory:
            targets.append(f"{run_dir(run)}/memory.json")
    return targets

