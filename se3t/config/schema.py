"""The configuration's schema: one dataclass per section, each field with its type, default
and (for numbers) its range, and :class:`ConfigError`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from se3t.choices import (
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

__all__ = [
    "BasisConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "LaunchConfig",
    "ModelConfig",
    "Rule",
    "RunConfig",
    "TrainConfig",
    "WorkflowConfig",
    "fraction",
    "non_negative",
    "positive",
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
