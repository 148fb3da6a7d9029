"""Structured configuration: the single source of truth for every stage.

Each section is a dataclass; ``load(path, overrides)`` merges a YAML file and ``key=value``
overrides onto the defaults and rejects unknown keys, wrong types and impossible values with a
:class:`ConfigError` that names the key. ``save(cfg, path)`` writes the resolved config, which
every stage puts beside its outputs.

Sections: ``data``, ``basis``, ``model``, ``train``, ``run``, ``launch``, ``eval``, ``workflow``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from se3t.io import write_text

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
    "QM9_TARGETS",
    "load",
    "save",
    "to_dict",
    "validate",
]

# The 12 QM9 properties, in the order of the original paper's table.
QM9_TARGETS = ("mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G", "Cv")


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or impossible; the message names it."""


@dataclass
class DataConfig:
    source: str = "qm9pack"  # qm9pack | figshare | a local directory or tar archive
    raw_dir: str = "resources/qm9"
    path: str = "results/data/qm9.zarr"
    limit: int | None = None  # keep only the first N molecules (a subset for demos and tests)
    graph: str = "bond"  # bond | radius
    cutoff: float = 5.0  # Å, for graph=radius
    targets: list[str] = field(default_factory=lambda: ["homo"])
    split_seed: int = 0
    # Full QM9: NVIDIA's recipe (100,000 train, 10 % test, the rest validation). A subset smaller
    # than n_train + test uses the fractions below instead.
    n_train: int = 100_000
    test_fraction: float = 0.1
    train_fraction: float = 0.8
    num_workers: int = 0
    figshare_url: str = "https://ndownloader.figshare.com/files/3195389"
    figshare_sha256: str | None = None
    uncharacterized_url: str = "https://ndownloader.figshare.com/files/3195404"
    uncharacterized_sha256: str | None = None
    retries: int = 5  # download attempts after the first, with exponential backoff
    timeout: float = 60.0  # seconds without data before a download attempt is given up
    processes: int = 2  # worker processes for bond perception in `se3t data build`
    strict: bool = False  # a bad molecule stops the build instead of being dropped and reported


@dataclass
class BasisConfig:
    cache: str = "cache"  # folder or fsspec URL shared by runs and teams
    max_degree: int = 3
    dtype: str = "float32"  # float32 | float16 | float64
    use: str = "auto"  # auto | store | compute: where training takes the bases from
    manifest: str | None = None  # basis manifest (results/basis/manifest.json) for use=store|auto
    shards: int = 2  # precompute jobs (`se3t basis precompute --shard I/N`) the workflow runs
    compressor: str = "blosc-lz4"  # none | zstd | blosc-lz4 | blosc-zstd | gzip (BENCHMARKS.md)
    compression_level: int | None = None  # None: the default (zstd 1, blosc-lz4 5, blosc-zstd 3)
    chunk_edges: int = 4096  # edge rows per Zarr chunk (whole molecules, zero-padded)
    chunks_per_shard: int = 8  # chunks per shard file: the unit written atomically and resumed
    read: str = "auto"  # auto | memory | chunks: how training reads the store (docs/basis.md)
    cache_chunks: int = 32  # decoded chunks kept in RAM by read=chunks
    buffer_chunks: int = 16  # chunk-aware shuffling window (chunks) for read=chunks


@dataclass
class ModelConfig:
    num_layers: int = 7
    max_degree: int = 3  # degrees 0..max_degree
    channels: int = 32
    heads: int = 8
    channels_div: int = 2
    norm: bool = True
    layer_norm: bool = True
    pooling: str = "max"  # max | mean
    fusion: str = "auto"  # auto (= full) | pairwise (reference) | per_output | per_input | full
    low_memory: bool = False
    # fused-kernel backend (docs/kernel.md): auto (cpp on CPUs, torch elsewhere) | torch | cpp |
    # triton (opt-in on GPUs); tile sizes: 0 = from the per-machine tuning cache
    kernel: str = "auto"
    kernel_tuning: bool = True  # timed trial at first use of a shape (else defaults/cache)
    kernel_chunk_edges: int = 0
    kernel_edge_block: int = 0
    kernel_k_tile: int = 0
    radial_hidden: int = 32
    node_features: int = 6  # one-hot H, C, N, O, F + atomic number
    edge_features: int = 4  # one-hot single, double, triple, aromatic (the length is added)
    out_dim: int = 1


@dataclass
class TrainConfig:
    epochs: int = 100
    max_steps: int | None = None
    batch_size: int = 240
    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 0.002
    min_lr: float = 0.00001
    momentum: float = 0.9
    weight_decay: float = 0.0
    scheduler: str = "cosine"  # cosine | constant
    warmup_epochs: float = 0.0
    grad_clip: float | None = None
    accumulate: int = 1
    precision: str = "fp32"  # fp32 | tf32 | fp16 | bf16
    seed: int = 0
    deterministic: bool = False
    eval_every: int = 1
    log_every: int = 10
    checkpoint_every: int = 0  # steps; 0: at every epoch end only
    device: str = "auto"  # auto | cpu | cuda
    tensorboard: bool = False
    resume: bool = True  # continue from {run.dir}/last.pt when it exists


@dataclass
class RunConfig:
    dir: str = "results/runs/default"
    name: str = "default"


@dataclass
class LaunchConfig:
    cluster: str = "local"  # slurm | local | debug
    nodes: int = 1
    gpus_per_node: int = 0  # 0: CPU training
    tasks_per_node: int = 1  # used when gpus_per_node is 0
    cpus_per_task: int = 2
    mem_gb: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: int = 60  # minutes
    constraint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    max_num_timeout: int = 3
    folder: str | None = None  # submitit logs; default: {run.dir}/submitit


@dataclass
class EvalConfig:
    split: str = "test"
    batch_size: int = 240
    profile_batch_sizes: list[int] = field(default_factory=lambda: [10, 50, 100, 240, 500, 1000])
    profile_modes: list[str] = field(default_factory=lambda: ["fp32", "amp", "amp+lowmem"])
    profile_paths: list[str] = field(default_factory=lambda: ["pairwise", "fused"])
    profile_steps: int = 3
    profile_warmup_steps: int = 1
    profile_basis: str = "step"  # step: computed in every step (NVIDIA's way) | precomputed
    profile_timeout: float = 600.0  # seconds per point before it is recorded as timeout
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


_CHOICES: dict[str, tuple[Any, ...]] = {
    "data.graph": ("bond", "radius"),
    "basis.dtype": ("float16", "float32", "float64"),
    "basis.use": ("auto", "store", "compute"),
    "basis.compressor": ("none", "zstd", "blosc-lz4", "blosc-zstd", "gzip"),
    "basis.read": ("auto", "memory", "chunks"),
    "model.pooling": ("max", "mean"),
    "model.fusion": ("auto", "pairwise", "per_output", "per_input", "full"),
    "model.kernel": ("auto", "torch", "cpp", "triton"),
    "train.optimizer": ("adam", "adamw", "sgd"),
    "train.scheduler": ("cosine", "constant"),
    "train.precision": ("fp32", "tf32", "fp16", "bf16"),
    "train.device": ("auto", "cpu", "cuda"),
    "launch.cluster": ("slurm", "local", "debug"),
    "eval.split": ("train", "val", "test"),
    "eval.profile_basis": ("step", "precomputed"),
}

_POSITIVE = (
    "data.cutoff",
    "data.timeout",
    "data.processes",
    "basis.shards",
    "basis.chunk_edges",
    "basis.chunks_per_shard",
    "basis.cache_chunks",
    "basis.buffer_chunks",
    "model.num_layers",
    "model.channels",
    "model.heads",
    "model.channels_div",
    "model.radial_hidden",
    "model.node_features",
    "model.out_dim",
    "train.batch_size",
    "train.lr",
    "train.accumulate",
    "train.eval_every",
    "launch.nodes",
    "launch.tasks_per_node",
    "launch.cpus_per_task",
    "launch.time",
    "eval.batch_size",
    "eval.profile_steps",
    "eval.profile_timeout",
)
_NON_NEGATIVE = (
    "model.max_degree",
    "model.kernel_chunk_edges",
    "model.kernel_edge_block",
    "model.kernel_k_tile",
    "basis.max_degree",
    "model.edge_features",
    "train.epochs",
    "train.min_lr",
    "train.weight_decay",
    "train.warmup_epochs",
    "train.log_every",
    "train.checkpoint_every",
    "launch.gpus_per_node",
    "launch.max_num_timeout",
    "data.num_workers",
    "data.retries",
    "eval.profile_steps",
    "eval.profile_warmup_steps",
)


def _get(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def validate(cfg: Config | DictConfig) -> None:
    """Check values that types alone cannot: choices, signs, fractions and QM9 target names."""
    for key, choices in _CHOICES.items():
        value = _get(cfg, key)
        if value not in choices:
            raise ConfigError(f"config key {key!r}: {value!r} is not one of {list(choices)}")
    for key in _POSITIVE:
        value = _get(cfg, key)
        if value is None or value <= 0:
            raise ConfigError(f"config key {key!r}: must be > 0, got {value!r}")
    for key in _NON_NEGATIVE:
        value = _get(cfg, key)
        if value is None or value < 0:
            raise ConfigError(f"config key {key!r}: must be >= 0, got {value!r}")
    for key in ("data.test_fraction", "data.train_fraction"):
        value = _get(cfg, key)
        if not 0.0 < value < 1.0:
            raise ConfigError(f"config key {key!r}: must lie in (0, 1), got {value!r}")
    if cfg.data.test_fraction + cfg.data.train_fraction >= 1.0:
        raise ConfigError(
            "config keys 'data.train_fraction' + 'data.test_fraction' must leave a validation "
            f"split, got {cfg.data.train_fraction} + {cfg.data.test_fraction}"
        )
    if cfg.data.limit is not None and cfg.data.limit <= 0:
        raise ConfigError(f"config key 'data.limit': must be > 0 or null, got {cfg.data.limit}")
    if cfg.train.max_steps is not None and cfg.train.max_steps <= 0:
        raise ConfigError(f"config key 'train.max_steps': must be > 0, got {cfg.train.max_steps}")
    if cfg.train.grad_clip is not None and cfg.train.grad_clip <= 0:
        raise ConfigError(f"config key 'train.grad_clip': must be > 0, got {cfg.train.grad_clip}")
    if not cfg.data.targets:
        raise ConfigError("config key 'data.targets': give at least one QM9 target")
    for target in cfg.data.targets:
        if target not in QM9_TARGETS:
            raise ConfigError(
                f"config key 'data.targets': {target!r} is not a QM9 target; "
                f"choose from {list(QM9_TARGETS)}"
            )
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


def _structured() -> DictConfig:
    schema = OmegaConf.structured(Config)
    OmegaConf.set_struct(schema, True)
    # free-form mappings take any key; everything else is closed
    for free in (schema.launch.extra, schema.workflow.runs):
        OmegaConf.set_struct(free, False)
    return schema


def _explain(err: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(err, "full_key", None) or "?"
    msg = getattr(err, "msg", None) or str(err)
    first = msg.splitlines()[0] if msg else type(err).__name__
    return ConfigError(f"{source}: config key {key!r}: {first}")


def load(
    path: str | os.PathLike | None = None,
    overrides: list[str] | tuple[str, ...] | dict[str, Any] | None = None,
) -> Config:
    """Merge defaults <- YAML file <- overrides and return a validated :class:`Config`.

    ``overrides`` are ``key=value`` strings in dotted form (``train.lr=1e-3``) or a mapping of
    dotted keys to values. Keys that the YAML file has but the schema lacks are errors; the
    top-level keys of a Snakemake config that are not sections are errors too, so typos never
    pass silently.
    """
    merged = _structured()
    if path is not None:
        path = Path(path)
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
            merged = OmegaConf.merge(merged, loaded)
        except OmegaConfBaseException as err:
            raise _explain(err, f"config file {str(path)!r}") from err
    if overrides:
        if isinstance(overrides, dict):
            items = [(str(k), v) for k, v in overrides.items()]
            dotlist = None
        else:
            items = None
            dotlist = list(overrides)
            for item in dotlist:
                if "=" not in item:
                    raise ConfigError(
                        f"override {item!r} is not of the form key=value (e.g. train.lr=0.001)"
                    )
        try:
            if dotlist is not None:
                merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(dotlist))
            else:
                for key, value in items:
                    _check_key(merged, key)
                    merged = OmegaConf.merge(merged, OmegaConf.create(_nest(key, value)))
        except OmegaConfBaseException as err:
            raise _explain(err, "override") from err
    try:
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise _explain(err, "config") from err
    validate(cfg)
    return cfg


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
        if i > 0 and ".".join(parts[:i]) in ("launch.extra", "workflow.runs"):
            return
        raise ConfigError(f"config key {dotted!r} is unknown ({part!r} is not a key there)")


def to_dict(cfg: Config | DictConfig) -> dict[str, Any]:
    """The config as plain Python containers (JSON- and YAML-ready)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def from_dict(data: dict[str, Any]) -> Config:
    """Rebuild and validate a config from :func:`to_dict`'s output (e.g. from a checkpoint)."""
    merged = _structured()
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
