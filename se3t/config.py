"""Structured configuration: the single source of truth for every stage.

Each section is a dataclass; ``load(path, overrides)`` merges a YAML file and ``key=value``
overrides onto the defaults and rejects unknown keys, wrong types and impossible values with a
:class:`ConfigError` that names the key. ``save(cfg, path)`` writes the resolved config, which
every stage puts beside its outputs.

Sections: ``data``, ``basis``, ``model``, ``train``, ``run``, ``launch``, ``eval``, ``workflow``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from se3t.choices import (
    QM9_TARGETS,
    BasisDtype,
    BasisRead,
    BasisUse,
    Cluster,
    Compressor,
    DataFormat,
    Device,
    Fusion,
    Graph,
    Kernel,
    NanPolicy,
    Optimizer,
    Pooling,
    Precision,
    ProfileBasis,
    RadialSharing,
    Scheduler,
    SelfInteraction,
    Split,
    SplitMethod,
)
from se3t.errors import InputError
from se3t.io import write_text
from se3t.location import Location

__all__ = [
    "BasisConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "LaunchConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "WorkflowConfig",
    "data_format",
    "load",
    "save",
    "secret_storage_problem",
    "to_dict",
    "validate",
]


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or impossible; the message names it."""


@dataclass(frozen=True)
class Rule:
    """The range a numeric field must lie in, kept on the field (``metadata["rule"]``) and
    checked by :func:`validate`; ``optional`` lets ``None`` (YAML ``null``) through."""

    text: str  # "be > 0", read after "must "
    test: Callable[[Any], bool]
    optional: bool = False

    def problem(self, value: Any) -> str | None:
        if value is None and self.optional:
            return None
        if isinstance(value, float) and not math.isfinite(value):  # inf passes `v >= 0`
            return f"must be a finite number, got {value!r}"
        if value is not None and self.test(value):
            return None
        return f"must {self.text}{' or null' if self.optional else ''}, got {value!r}"


def positive(default: Any, *, optional: bool = False) -> Any:
    """A field whose value must be > 0 (or ``None`` when ``optional``)."""
    return field(default=default, metadata={"rule": Rule("be > 0", lambda v: v > 0, optional)})


def non_negative(default: Any) -> Any:
    """A field whose value must be >= 0."""
    return field(default=default, metadata={"rule": Rule("be >= 0", lambda v: v >= 0)})


def fraction(default: float) -> Any:
    """A field whose value must lie strictly between 0 and 1."""
    return field(default=default, metadata={"rule": Rule("lie in (0, 1)", lambda v: 0 < v < 1)})


@dataclass
class DataConfig:
    source: str = "qm9pack"  # qm9pack | figshare | a local directory or tar archive
    raw_dir: str = "resources/qm9"
    path: str = "results/data/qm9.zarr"
    limit: int | None = positive(
        None, optional=True
    )  # keep only the first N molecules (a subset for demos and tests)
    graph: Graph = Graph.BOND
    cutoff: float = positive(5.0)  # Å, for graph=radius
    targets: list[str] = field(default_factory=lambda: ["homo"])
    split_seed: int = 0
    # Full QM9: NVIDIA's recipe (100,000 train, 10 % test, the rest validation). A subset smaller
    # than n_train + test uses the fractions below instead.
    n_train: int = 100_000
    test_fraction: float = fraction(0.1)
    train_fraction: float = fraction(0.8)
    num_workers: int = non_negative(0)
    figshare_url: str = "https://ndownloader.figshare.com/files/3195389"
    figshare_sha256: str | None = None
    uncharacterized_url: str = "https://ndownloader.figshare.com/files/3195404"
    uncharacterized_sha256: str | None = None
    retries: int = non_negative(5)  # download attempts after the first, with exponential backoff
    timeout: float = positive(60.0)  # seconds without data before a download attempt is given up
    processes: int = positive(2)  # worker processes for bond perception in `se3t data build`
    strict: bool = False  # a bad molecule stops the build instead of being dropped and reported
    # ---- users' own molecules (docs/data.md, "Training on your own molecules") ----
    format: DataFormat = DataFormat.AUTO  # auto: from data.source (see data_format)
    properties: str | None = None  # CSV of ids and properties for format=xyz_dir
    id_column: str | None = None  # id: CSV column, SD property or extxyz info key (else index)
    smiles_column: str = "smiles"  # format=smiles
    units: dict[str, str] = field(default_factory=dict)  # target -> unit, recorded in the store
    elements: list[str] = field(default_factory=list)  # one-hot elements besides those present
    split: SplitMethod = SplitMethod.RANDOM  # random (split_seed) | column | scaffold
    split_column: str | None = None  # input column / SD property / info key with train|val|test
    max_neighbors: int | None = positive(None, optional=True)  # radius graph: nearest N per atom
    conformer_seed: int = 42  # format=smiles: ETKDG random seed (embedding is deterministic)
    mmff_iterations: int = positive(2000)  # format=smiles: MMFF94 steps after ETKDG


@dataclass
class BasisConfig:
    cache: str = "cache"  # folder or s3://bucket/prefix shared by runs, teams and sites
    # s3 caches: the verified local copy training reads (docs/basis.md, "sharing across sites")
    local_cache: str = "cache"
    # s3 caches: s3fs options such as endpoint_url (MinIO, Ceph); never credentials
    storage_options: dict[str, Any] = field(default_factory=dict)
    max_degree: int = non_negative(3)
    dtype: BasisDtype = BasisDtype.FLOAT32
    use: BasisUse = BasisUse.AUTO  # where training takes the bases from
    manifest: str | None = None  # basis manifest (results/basis/manifest.json) for use=store|auto
    shards: int = positive(
        2
    )  # precompute jobs (`se3t basis precompute --shard I/N`) the workflow runs
    compressor: Compressor = Compressor.BLOSC_LZ4
    compression_level: int | None = None  # None: the default (zstd 1, blosc-lz4 5, blosc-zstd 3)
    chunk_edges: int = positive(4096)  # edge rows per Zarr chunk (whole molecules, zero-padded)
    chunks_per_shard: int = positive(
        8
    )  # chunks per shard file: the unit written atomically and resumed
    read: BasisRead = BasisRead.AUTO
    cache_chunks: int = positive(32)  # decoded chunks kept in RAM by read=chunks
    buffer_chunks: int = positive(16)  # chunk-aware shuffling window (chunks) for read=chunks


@dataclass
class ModelConfig:
    num_layers: int = positive(7)
    max_degree: int = non_negative(3)  # degrees 0..max_degree
    channels: int = positive(32)
    heads: int = positive(8)
    channels_div: int = positive(2)
    norm: bool = True
    layer_norm: bool = True
    pooling: Pooling = Pooling.MAX
    fusion: Fusion = Fusion.AUTO  # auto is full; pairwise is the reference
    # NVIDIA's function by default: the one its published QM9 runs trained (docs/model.md)
    radial_sharing: RadialSharing = RadialSharing.NVIDIA_FULL
    self_interaction: SelfInteraction = SelfInteraction.EDGE
    low_memory: bool = False
    # fused-kernel backend (docs/kernel.md): auto (cpp on CPUs, torch elsewhere) | torch | cpp |
    # triton (opt-in on GPUs); tile sizes: 0 = from the per-machine tuning cache
    kernel: Kernel = Kernel.AUTO
    kernel_tuning: bool = True  # timed trial at first use of a shape (else defaults/cache)
    kernel_chunk_edges: int = non_negative(0)
    kernel_edge_block: int = non_negative(0)
    kernel_k_tile: int = non_negative(0)
    kernel_k_tile_backward: int = non_negative(0)
    radial_hidden: int = positive(32)
    # the input widths are set from the dataset's encoding when training starts (QM9's below)
    node_features: int = positive(6)  # one-hot H, C, N, O, F + atomic number
    # one-hot single, double, triple, aromatic (the length is added); 0 for a radius graph of
    # users' molecules, which has no bond types
    edge_features: int = non_negative(4)
    out_dim: int = positive(1)


@dataclass
class TrainConfig:
    epochs: int = non_negative(100)
    max_steps: int | None = positive(None, optional=True)
    batch_size: int = positive(240)
    optimizer: Optimizer = Optimizer.ADAM
    lr: float = positive(0.002)
    min_lr: float = non_negative(0.00001)
    momentum: float = 0.9
    weight_decay: float = non_negative(0.0)
    scheduler: Scheduler = Scheduler.COSINE
    warmup_epochs: float = non_negative(0.0)
    grad_clip: float | None = positive(None, optional=True)
    accumulate: int = positive(1)
    precision: Precision = Precision.FP32
    seed: int = 0
    deterministic: bool = False
    eval_every: int = positive(1)
    # validation every N optimizer steps as well (and once before the first step); 0: epochs only
    eval_every_steps: int = non_negative(0)
    log_every: int = non_negative(10)
    checkpoint_every: int = non_negative(0)  # steps; 0: at every epoch end only
    device: Device = Device.AUTO
    tensorboard: bool = False
    resume: bool = True  # continue from {run.dir}/last.pt when it exists
    # a fresh run starts from these weights: a se3t checkpoint or run folder, or NVIDIA's
    # checkpoint/state dict with its sidecar YAML (se3t.train.init; docs/training.md)
    init_weights: str | None = None
    init_nvidia_config: str | None = None  # NVIDIA's sidecar (default: init_weights as .yaml)
    # seconds a rank waits in a collective (all-reduce, barrier, rendezvous) for the others
    # before it fails: a rank that died or hangs ends the job instead of holding it to its limit
    collective_timeout: float = positive(300.0)
    # on a non-finite loss or gradient: stop before saving, or skip the step (train.guards)
    nan_policy: NanPolicy = NanPolicy.STOP


@dataclass
class RunConfig:
    dir: str = "results/runs/default"
    name: str = "default"


@dataclass
class LaunchConfig:
    cluster: Cluster = Cluster.LOCAL
    nodes: int = positive(1)
    gpus_per_node: int = non_negative(0)  # 0: CPU training
    tasks_per_node: int = positive(1)  # used when gpus_per_node is 0
    cpus_per_task: int = positive(2)
    mem_gb: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: int = positive(60)  # minutes
    constraint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    max_num_timeout: int = non_negative(3)
    folder: str | None = None  # submitit logs; default: {run.dir}/submitit


@dataclass
class EvalConfig:
    split: Split = Split.TEST
    batch_size: int = positive(240)
    profile_batch_sizes: list[int] = field(default_factory=lambda: [10, 50, 100, 240, 500, 1000])
    # the profile's grid, crossed: train.precision x model.fusion x model.low_memory values
    profile_precision: list[Precision] = field(default_factory=lambda: [Precision.FP32])
    profile_fusion: list[Fusion] = field(default_factory=lambda: [Fusion.PAIRWISE, Fusion.FULL])
    profile_low_memory: list[bool] = field(default_factory=lambda: [False])
    profile_steps: int = positive(3)
    profile_warmup_steps: int = non_negative(1)
    profile_basis: ProfileBasis = ProfileBasis.STEP
    profile_timeout: float = positive(600.0)  # seconds per point before it is recorded as timeout
    profile_memory_limit_gb: float | None = None  # cap per point (CUDA fraction, CPU RLIMIT_DATA)


@dataclass
class WorkflowConfig:
    # name -> overrides ("train.seed": 1, "data.targets": ["lumo"], ...) applied to this config;
    # empty means one run called "default" with the config as it is
    runs: dict[str, Any] = field(default_factory=dict)
    results: str = "results"  # runs go to {results}/runs/{run}, the report to {results}/report.html
    logs: str = "logs"  # one log per rule and job: {logs}/{rule}/...
    profile_memory: bool = True  # run `se3t profile` for every run (memory/throughput plots)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    basis: BasisConfig = field(default_factory=BasisConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    workflow: WorkflowConfig = field(default_factory=WorkflowConfig)


# option names that carry credentials (s3fs, botocore, fsspec): refused in basis.storage_options
_SECRET_OPTIONS = (
    "key",
    "secret",
    "token",
    "password",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "access_key",
    "secret_key",
)


def _secret_storage_option(options: Any, prefix: str = "") -> str | None:
    """The dotted name of the first option in ``options`` that holds a credential, else None."""
    for k, v in dict(options or {}).items():
        if str(k).lower() in _SECRET_OPTIONS:
            return f"{prefix}{k}"
        if isinstance(v, dict | DictConfig):
            found = _secret_storage_option(v, f"{prefix}{k}.")
            if found:
                return found
    return None


def secret_storage_problem(options: Any) -> str | None:
    """The one-line refusal of ``basis.storage_options`` holding a credential, else None (the
    config check and the object-store client raise it; the value is never quoted)."""
    secret = _secret_storage_option(options)
    if secret is None:
        return None
    return (
        f"config key 'basis.storage_options.{secret}': credentials are never taken from the "
        "config (it is saved beside every output); set AWS_ACCESS_KEY_ID / "
        "AWS_SECRET_ACCESS_KEY or AWS_PROFILE instead"
    )


def validate(cfg: Config | DictConfig) -> None:
    """Check what types alone cannot: each field's own rule (its choices, sign or range), then
    the rules that tie fields together (splits, distinct targets, QM9 target names, channels
    per head). Users' target names are checked against their input by the data stage."""
    for key, kind, rule in _field_rules():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if rule is not None:
            problem = rule.problem(value)
        elif get_origin(kind) is list:  # a list of choices: each element is one
            problems = (_choice_problem(get_args(kind)[0], v) for v in value)
            problem = next((p for p in problems if p), None)
        else:
            problem = _choice_problem(kind, value)
        if problem:
            raise ConfigError(f"config key {key!r}: {problem}")
    if cfg.data.test_fraction + cfg.data.train_fraction >= 1.0:
        raise ConfigError(
            "config keys 'data.train_fraction' + 'data.test_fraction' must leave a validation "
            f"split, got {cfg.data.train_fraction} + {cfg.data.test_fraction}"
        )
    if not cfg.data.targets:
        raise ConfigError("config key 'data.targets': give at least one target")
    if len(set(cfg.data.targets)) != len(cfg.data.targets):
        raise ConfigError(f"config key 'data.targets': {list(cfg.data.targets)} has duplicates")
    # QM9 has its 12 properties; users' datasets name their own (checked against the input)
    for target in cfg.data.targets if data_format(cfg.data) == DataFormat.QM9 else ():
        if target not in QM9_TARGETS:
            raise ConfigError(
                f"config key 'data.targets': {target!r} is not a QM9 target; "
                f"choose from {list(QM9_TARGETS)}"
            )
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        try:
            if value is not None:
                Location.parse(value)
        except InputError as err:
            raise ConfigError(f"config key {key!r}: {err}") from None
    if problem := secret_storage_problem(cfg.basis.storage_options):
        raise ConfigError(problem)
    if cfg.model.channels % cfg.model.channels_div:
        raise ConfigError(
            f"config key 'model.channels_div': {cfg.model.channels_div} does not divide "
            f"model.channels={cfg.model.channels}"
        )
    if (cfg.model.channels // cfg.model.channels_div) % cfg.model.heads:
        raise ConfigError(
            f"config key 'model.heads': {cfg.model.heads} does not divide "
            f"model.channels / model.channels_div = {cfg.model.channels // cfg.model.channels_div}"
        )


# the settings that name a folder or a URL: checked here, read through Location.from_config
PATH_KEYS = ("data.path", "basis.cache", "basis.local_cache", "basis.manifest")


@cache
def _field_rules() -> tuple[tuple[str, Any, Rule | None], ...]:
    """``(dotted key, type, rule)`` of every field that has a rule or an enum type."""
    out = []
    for section in fields(Config):
        cls = get_type_hints(Config)[section.name]
        hints = get_type_hints(cls)
        for f in fields(cls):
            kind = hints[f.name]
            element = get_args(kind)[0] if get_origin(kind) is list else None
            if "rule" in f.metadata or _is_choice(kind) or _is_choice(element):
                out.append((f"{section.name}.{f.name}", kind, f.metadata.get("rule")))
    return tuple(out)


def _is_choice(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, Enum)


def _choice_problem(kind: type[Enum], value: Any) -> str | None:
    values = [m.value for m in kind]
    return None if value in values else f"{value!r} is not one of {values}"


def data_format(data: DataConfig | DictConfig) -> DataFormat:
    """``data.format``, with ``auto`` resolved from ``data.source``: qm9pack, figshare or a QM9
    folder/tar -> qm9; ``.extxyz``/``.xyz`` -> extxyz; ``.sdf``/``.sd`` -> sdf; ``.csv`` ->
    smiles; a folder with ``data.properties`` -> xyz_dir."""
    if data.format != DataFormat.AUTO:
        return DataFormat(data.format)
    source = str(data.source)
    suffix = Path(source).suffix.lower()
    if source in ("qm9pack", "figshare"):
        return DataFormat.QM9
    if suffix in (".extxyz", ".xyz"):
        return DataFormat.EXTXYZ
    if suffix in (".sdf", ".sd"):
        return DataFormat.SDF
    if suffix == ".csv":
        return DataFormat.SMILES
    return DataFormat.XYZ_DIR if data.properties else DataFormat.QM9


def _structured() -> DictConfig:
    schema = OmegaConf.structured(Config)
    OmegaConf.set_struct(schema, True)
    # free-form mappings take any key; everything else is closed
    for free in (
        schema.launch.extra,
        schema.workflow.runs,
        schema.basis.storage_options,
        schema.data.units,
    ):
        OmegaConf.set_struct(free, False)
    return schema


def _explain(err: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(err, "full_key", None) or "?"
    msg = getattr(err, "msg", None) or str(err)
    first = msg.splitlines()[0] if msg else type(err).__name__
    if key in RETIRED:
        return ConfigError(f"{source}: config key {key!r} was replaced by {RETIRED[key]}")
    kind = {k: t for k, t, _ in _field_rules()}.get(re.sub(r"\[\d+\]$", "", str(key)))
    if get_origin(kind) is list:
        (kind,) = get_args(kind)
    if _is_choice(kind):  # OmegaConf lists the members' Python names; say the YAML values
        first = _choice_problem(kind, getattr(err, "value", None)) or first
    return ConfigError(f"{source}: config key {key!r}: {first}")


def load(
    path: str | os.PathLike | None = None,
    overrides: list[str] | tuple[str, ...] | dict[str, Any] | None = None,
    *,
    values: dict[str, Any] | None = None,
) -> Config:
    """Merge defaults <- YAML file <- overrides <- values and return a validated :class:`Config`.

    ``overrides`` are ``key=value`` strings in dotted form (``train.lr=1e-3``, values parsed as
    YAML) or a mapping of dotted keys to values; ``values`` is such a mapping applied last (the
    CLI's aliases, set verbatim). Keys that the YAML file has but the schema lacks are errors;
    the top-level keys of a Snakemake config that are not sections are errors too, so typos
    never pass silently.
    """
    merged = _structured()
    if path is not None:
        merged = _merge_file(merged, Path(path))
    if isinstance(overrides, dict):
        merged = _merge_values(merged, overrides)
    elif overrides:
        merged = _merge_dotlist(merged, list(overrides))
    if values:
        merged = _merge_values(merged, values)
    try:
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise _explain(err, "config") from err
    validate(cfg)
    return cfg


def _merge_file(merged: DictConfig, path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        loaded = OmegaConf.load(path)
    except Exception as err:  # yaml errors carry the line; keep them
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from err
    if loaded is None:
        loaded = OmegaConf.create({})
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
    try:
        return OmegaConf.merge(merged, loaded)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise _explain(err, f"config file {str(path)!r}") from err


def _merge_dotlist(merged: DictConfig, dotlist: list[str]) -> DictConfig:
    for item in dotlist:
        if "=" not in item:
            raise ConfigError(
                f"override {item!r} is not of the form key=value (e.g. train.lr=0.001)"
            )
    try:
        return OmegaConf.merge(merged, OmegaConf.from_dotlist(dotlist))  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise _explain(err, "override") from err


def _merge_values(merged: DictConfig, values: dict[str, Any]) -> DictConfig:
    try:
        for key, value in values.items():
            _check_key(merged, str(key))
            merged = OmegaConf.merge(merged, OmegaConf.create(_nest(str(key), value)))  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise _explain(err, "override") from err
    return merged


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def _check_key(node: DictConfig, dotted: str) -> None:
    parts = dotted.split(".")
    cur: Any = node
    for i, part in enumerate(parts):
        if isinstance(cur, DictConfig) and part in cur:
            cur = cur[part]
            continue
        # free-form mappings (launch.extra, workflow.runs) accept any key below them
        if i > 0 and ".".join(parts[:i]) in (
            "launch.extra",
            "workflow.runs",
            "basis.storage_options",
            "data.units",
        ):
            return
        raise ConfigError(f"config key {dotted!r} is unknown ({part!r} is not a key there)")


def to_dict(cfg: Config | DictConfig) -> dict[str, Any]:
    """The config as plain Python containers (JSON- and YAML-ready; choices as their values)."""
    return _plain(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True))


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node.value if isinstance(node, Enum) else node


# keys of earlier versions, with what replaced them: a stored config (a checkpoint's) drops them,
# since none changes what a run computes; a config file that has one is told what to write
RETIRED = {
    "eval.profile_modes": "eval.profile_precision and eval.profile_low_memory",
    "eval.profile_paths": "eval.profile_fusion",
}


def from_dict(data: dict[str, Any]) -> Config:
    """Rebuild and validate a config from :func:`to_dict`'s output (e.g. from a checkpoint)."""
    merged = _structured()
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for key in RETIRED:
        section, name = key.split(".")
        if isinstance(data.get(section), dict):
            data[section].pop(name, None)
    try:
        merged = OmegaConf.merge(merged, OmegaConf.create(data))
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise _explain(err, "stored config") from err
    validate(cfg)
    return cfg


def save(cfg: Config | DictConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML atomically (temporary file in the same folder, rename)."""
    text = OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg)))
    return write_text(path, text)
