"""The choices of se3t, each one enum defined once.

The config's fields (:mod:`se3t.config`) are typed with these enums, so a YAML value is checked
against the members when the config is loaded, and code compares against members rather than
spelling the strings again. They are :class:`enum.StrEnum`: a member equals its value
(``Fusion.FULL == "full"``), formats as it, and goes into JSON and YAML as that plain string.
This module imports nothing of se3t, so the maths, the layers and the config can all use it.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "BasisDtype",
    "BasisRead",
    "BasisUse",
    "Cluster",
    "Compressor",
    "DataFormat",
    "Device",
    "Evaluation",
    "Fusion",
    "Graph",
    "Kernel",
    "NanPolicy",
    "NvidiaFuseLevel",
    "Optimizer",
    "Pooling",
    "Precision",
    "ProfileBasis",
    "QM9_TARGETS",
    "RadialSharing",
    "Scheduler",
    "SelfInteraction",
    "Split",
    "SplitMethod",
]


class Graph(StrEnum):
    """Which edges a molecule's graph has (``data.graph``)."""

    BOND = "bond"  # covalent bonds perceived by RDKit, with one-hot bond types
    RADIUS = "radius"  # every atom pair closer than data.cutoff


class BasisDtype(StrEnum):
    """The floating-point type the basis store holds (``basis.dtype``)."""

    FLOAT16 = "float16"
    FLOAT32 = "float32"
    FLOAT64 = "float64"


class BasisUse(StrEnum):
    """Where training takes the bases from (``basis.use``)."""

    AUTO = "auto"  # the store of basis.manifest when it exists, else computed
    STORE = "store"  # the store of basis.manifest; an error when it is missing
    COMPUTE = "compute"  # computed in the forward pass


class Compressor(StrEnum):
    """The basis store's chunk codec (``basis.compressor``; speeds in BENCHMARKS.md)."""

    NONE = "none"
    ZSTD = "zstd"
    BLOSC_LZ4 = "blosc-lz4"
    BLOSC_ZSTD = "blosc-zstd"
    GZIP = "gzip"


class BasisRead(StrEnum):
    """How training reads the basis store (``basis.read``; docs/basis.md)."""

    AUTO = "auto"  # memory when the store takes under a third of the free RAM, else chunks
    MEMORY = "memory"
    CHUNKS = "chunks"


class Pooling(StrEnum):
    """How node features become one vector per molecule (``model.pooling``)."""

    MAX = "max"
    MEAN = "mean"


class Fusion(StrEnum):
    """How a TFN convolution groups its ``d_in x d_out`` sub-convolutions.

    Each group has ONE radial profile (shared hidden layers, one last layer whose rows hold
    every pair's radial weights) and runs as one edge-chunked fused op
    (:func:`se3t.nn.kernel.fused_tfn`) that never materializes the radial output of the whole
    graph.

    - ``PAIRWISE``: one group per pair, computed with plain autograd (radial output, basis
      contraction, bmm). The reference that every fused level is tested against; memory
      O(E * C_o * C_i * num_freq) per pair is kept for backward.
    - ``PER_OUTPUT``: one group per output degree (all input degrees fused).
    - ``PER_INPUT``: one group per input degree (all output degrees fused).
    - ``FULL``: one group for the whole layer: one radial MLP, one GEMM per edge chunk.

    NVIDIA's layout (features concatenated along channels) needs equal channel counts across
    the fused degrees; se3t's contraction keeps a separate block per degree, so every level is
    valid for any fibers. ``AUTO`` therefore resolves to ``FULL``, the fastest and leanest.
    Levels differ in the model they define only by which pairs share radial hidden layers;
    :func:`pairwise_reference` builds the pairwise convolution with identical outputs.
    """

    AUTO = "auto"
    PAIRWISE = "pairwise"
    PER_OUTPUT = "per_output"
    PER_INPUT = "per_input"
    FULL = "full"


class Kernel(StrEnum):
    """Which implementation evaluates the fused TFN groups (``model.kernel``; docs/kernel.md).

    - ``AUTO``: ``cpp`` on the CPU in float32/float64 when the kernel builds, else ``torch``
      (the Triton kernel stays opt-in until it is measured faster on a GPU).
    - ``TORCH``: the chunked torch evaluations (the readable reference; any dtype and device).
    - ``CPP``: the C++ kernel compiled at first use (se3t.nn.kernel_cpu); CPU, float32/float64.
    - ``TRITON``: the Triton kernel (se3t.nn.kernel_triton); CUDA, or Triton's interpreter.
    """

    AUTO = "auto"
    TORCH = "torch"
    CPP = "cpp"
    TRITON = "triton"


class Evaluation(StrEnum):
    """What evaluates one fused TFN group: the names under which the evaluations register in
    :mod:`se3t.nn.evaluations` (a :class:`Kernel` is what the config asks for, an
    ``Evaluation`` what ran; :attr:`se3t.nn.kernel.KernelState.ran` counts them by name).

    - ``CPP``: the C++ kernel (se3t.nn.kernel_cpu).
    - ``TRITON``: the Triton kernel (se3t.nn.kernel_triton).
    - ``TORCH_CONCAT``: torch, input degrees concatenated (one channel count across them).
    - ``TORCH_PAIRS``: torch, one bmm per degree pair (any fibers).
    - ``PAIRWISE``: plain autograd on the whole radial output, the reference of ``Fusion.PAIRWISE``.
    """

    CPP = "cpp"
    TRITON = "triton"
    TORCH_CONCAT = "torch-concat"
    TORCH_PAIRS = "torch-pairs"
    PAIRWISE = "pairwise"


class NvidiaFuseLevel(StrEnum):
    """NVIDIA's ``ConvSE3FuseLevel``, lowest first: its SE3Transformer picks ``none`` with
    ``low_memory``, ``full`` with ``tensor_cores``, else ``partial``; each convolution then
    downgrades on its own (:func:`se3t.nn.conv.nvidia_fusion`)."""

    NONE = "none"
    PARTIAL = "partial"
    FULL = "full"

    @property
    def rank(self) -> int:
        return list(NvidiaFuseLevel).index(self)


class RadialSharing(StrEnum):
    """Which degree pairs share a radial MLP (``model.radial_sharing``; docs/model.md)."""

    FUSION = "fusion"  # the groups of model.fusion, in every layer
    # NVIDIA's per-layer choice at its maximum fuse level: with tensor_cores (its published
    # QM9 runs), its default (a CPU), low_memory; applies when model.fusion is auto
    NVIDIA_FULL = "nvidia_full"
    NVIDIA_PARTIAL = "nvidia_partial"
    NVIDIA_NONE = "nvidia_none"

    @property
    def fuse_level(self) -> NvidiaFuseLevel | None:
        """NVIDIA's maximum fuse level of this choice; None for ``fusion``."""
        return _FUSE_LEVEL.get(self)


_FUSE_LEVEL = {
    RadialSharing.NVIDIA_FULL: NvidiaFuseLevel.FULL,
    RadialSharing.NVIDIA_PARTIAL: NvidiaFuseLevel.PARTIAL,
    RadialSharing.NVIDIA_NONE: NvidiaFuseLevel.NONE,
}


class SelfInteraction(StrEnum):
    """Where the final convolution adds its self-interaction (``model.self_interaction``)."""

    EDGE = "edge"  # to every incoming edge's message, before the sum (NVIDIA: x in-degree)
    NODE = "node"  # once per atom


class Optimizer(StrEnum):
    """``train.optimizer``."""

    ADAM = "adam"
    ADAMW = "adamw"
    SGD = "sgd"


class Scheduler(StrEnum):
    """The learning-rate schedule after warm-up (``train.scheduler``)."""

    COSINE = "cosine"  # cosine decay to train.min_lr
    CONSTANT = "constant"


class NanPolicy(StrEnum):
    """What training does on a non-finite loss or gradient (``train.nan_policy``)."""

    STOP = "stop"  # fail before anything is saved over the last good checkpoint
    SKIP = "skip"  # drop the step, as AMP's scaler drops an overflowing one


class Precision(StrEnum):
    """The training step's arithmetic (``train.precision``)."""

    FP32 = "fp32"
    TF32 = "tf32"  # fp32 storage, TF32 matrix products on CUDA
    FP16 = "fp16"  # autocast with loss scaling
    BF16 = "bf16"  # autocast


class Device(StrEnum):
    """Where training runs (``train.device``)."""

    AUTO = "auto"  # CUDA when available
    CPU = "cpu"
    CUDA = "cuda"


class Cluster(StrEnum):
    """Where ``se3t launch`` submits (``launch.cluster``; submitit's executors)."""

    SLURM = "slurm"
    LOCAL = "local"  # subprocesses on this machine
    DEBUG = "debug"  # in this process, for tests


class Split(StrEnum):
    """A dataset split (``eval.split``)."""

    TRAIN = "train"
    VAL = "val"
    TEST = "test"


class ProfileBasis(StrEnum):
    """Where a profiled training step takes its bases from (``eval.profile_basis``)."""

    STEP = "step"  # computed in every step (NVIDIA's benchmark)
    PRECOMPUTED = "precomputed"  # computed once before timing, as if read from the store


class DataFormat(StrEnum):
    """The input format of the dataset build (``data.format``; docs/data.md)."""

    AUTO = "auto"  # from data.source (see se3t.config.data_format)
    QM9 = "qm9"  # qm9pack CSVs, figshare's archive, a QM9 folder or tar
    EXTXYZ = "extxyz"  # extended XYZ, read with ASE
    SDF = "sdf"  # SDF V2000/V3000, read with RDKit
    XYZ_DIR = "xyz_dir"  # a folder of XYZ files plus a CSV of properties (data.properties)
    SMILES = "smiles"  # a CSV of SMILES, conformers by ETKDG + MMFF


# The QM9 format's 12 properties, in the order of the original paper's table. They live beside
# the format because the config refuses any other target for it as it loads (the QM9 source
# reads them from here); users' formats name their own targets, checked against the input.
QM9_TARGETS = ("mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G", "Cv")


class SplitMethod(StrEnum):
    """How the dataset is cut into train/val/test (``data.split``)."""

    RANDOM = "random"  # seeded by data.split_seed
    COLUMN = "column"  # the input's data.split_column
    SCAFFOLD = "scaffold"  # Bemis-Murcko scaffolds, never two splits for one scaffold
