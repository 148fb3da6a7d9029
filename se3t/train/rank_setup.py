"""What one training rank sets up before its first step: its device, the process-wide
determinism and precision switches, the model (fresh, initialized, or checked against the
checkpoint it resumes) with its DDP wrapper, and its batch sampler."""

from __future__ import annotations

import os

import torch

from se3t.errors import InputError
from se3t.models import build
from se3t.train import distributed as D
from se3t.train.checkpoint import check_model_state
from se3t.train.init import initial_weights
from se3t.train.sampler import ChunkResumableBatchSampler, ResumableBatchSampler
from se3t.train.step import set_matmul_precision

__all__ = [
    "build_sampler",
    "rank_device",
    "rank_model",
    "sampler_kind",
    "set_determinism",
    "wrapped",
]


def rank_device(name: str, env: D.DistEnv) -> torch.device:
    """The device of ``train.device`` for this rank (its local GPU, made current)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("config key 'train.device': cuda requested but no CUDA device")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        local = env.local_rank % max(1, torch.cuda.device_count())
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def set_determinism(t) -> None:
    """``train.deterministic``, the matmul precision of ``train.precision`` and the seed."""
    if t.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    set_matmul_precision(t.precision)
    torch.manual_seed(t.seed)


def rank_model(cfg, resume_path, resume_state, init_weights: bool) -> torch.nn.Module:
    """The model of ``cfg``: checked against the checkpoint it resumes, else given its initial
    weights where ``init_weights`` (``train.init_weights``)."""
    model = build(cfg.model)
    if resume_state is not None:
        check_model_state(model, resume_state["model"], str(resume_path))
    elif init_weights:
        model.load_state_dict(initial_weights(cfg, model))
    return model


def wrapped(model: torch.nn.Module, env: D.DistEnv, device: torch.device) -> torch.nn.Module:
    """The model DDP-wrapped when the run is distributed, else itself."""
    if not env.distributed:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def sampler_kind(basis_store) -> str:
    """``chunks`` when the basis store is read chunk by chunk on any rank (``read=auto``
    decides per process, from its free memory: the ranks must agree), else ``random``."""
    chunks = torch.tensor([int(basis_store is not None and basis_store.read == "chunks")])
    D.all_reduce_(chunks, op="max")
    return "chunks" if int(chunks) else "random"


def build_sampler(kind: str, basis_store, train_set, cfg, env: D.DistEnv):
    t = cfg.train
    if kind == "chunks":
        # the store is read chunk by chunk: batches drawn chunk-window by chunk-window
        # (se3t.basis.sampler: the effect on sampling is documented there)
        return ChunkResumableBatchSampler(
            basis_store,
            train_set.indices,
            t.batch_size,
            buffer_chunks=cfg.basis.buffer_chunks,
            seed=t.seed,
            rank=env.rank,
            world_size=env.world_size,
        )
    return ResumableBatchSampler(
        len(train_set),
        t.batch_size,
        shuffle=True,
        seed=t.seed,
        rank=env.rank,
        world_size=env.world_size,
    )
