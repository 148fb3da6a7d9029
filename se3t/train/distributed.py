"""Data-parallel process groups: read the launcher's environment, initialize, reduce.

Launchers and what they set:

- ``torchrun``: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``.
- submitit: :func:`submitit.helpers.TorchDistributedEnvironment` ``.export()`` writes the same
  variables in each task (``se3t.train.launch`` calls it), so it looks like torchrun.
- ``srun`` (one task per GPU or per CPU process): ``SLURM_PROCID``, ``SLURM_NTASKS``,
  ``SLURM_LOCALID``, ``SLURM_JOB_NODELIST``; the master is the node list's first host and the
  port is derived from the job id, so every task agrees without talking.

One process with none of these is world size 1 and needs no process group. On several nodes
the rendezvous address is the first node of the allocation (submitit and the ``srun`` path both
take it from ``SLURM_JOB_NODELIST``), never ``localhost``: a rank that is told to meet on
``localhost`` while the world spans hosts would wait for peers that never come, so a world
larger than one without ``MASTER_ADDR`` is an error.

Every collective (the rendezvous, all-reduce, barrier) fails after ``timeout_s`` (the config's
``train.collective_timeout``) when a peer does not take part: a rank that died or hangs ends the
job with an error instead of holding every other rank until the job's time limit.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from se3t.errors import InputError

log = logging.getLogger(__name__)
__all__ = ["DistEnv", "all_reduce_", "barrier", "detect", "init", "shutdown"]


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    source: str = "single"  # single | torchrun | slurm

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _first_host(nodelist: str) -> str:
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return out.stdout.split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return nodelist.split(",")[0].split("[")[0]


def detect(environ: dict[str, str] | None = None) -> DistEnv:
    """The process's place in the job, from the environment (see the module docstring)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        if int(env["WORLD_SIZE"]) > 1 and not env.get("MASTER_ADDR"):
            raise InputError(
                f"environment: RANK and WORLD_SIZE={env['WORLD_SIZE']} are set but "
                "MASTER_ADDR is not: the ranks cannot know where to meet"
            )
        return DistEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)),
            source="env (torchrun or submitit)",
        )
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        job = int(env.get("SLURM_JOB_ID", "0"))
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(env["SLURM_NTASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            master_addr=_first_host(nodelist),
            master_port=20000 + job % 20000,
            source="slurm",
        )
    return DistEnv()


def init(env: DistEnv, device: torch.device, timeout_s: float = 300) -> None:
    """Join the process group: NCCL on CUDA devices, gloo on CPU. Collectives of the group
    (and the rendezvous) fail after ``timeout_s`` seconds without their peers."""
    if not env.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    # every rank says where it runs and where it meets the others (the job's task logs): on a
    # real cluster the hosts differ and the rendezvous is the allocation's first node
    log.info(
        "rank %d of %d (local rank %d) on host %s, device %s: %s rendezvous at %s:%d, "
        "collective timeout %g s",
        env.rank,
        env.world_size,
        env.local_rank,
        socket.gethostname(),
        device,
        backend,
        env.master_addr,
        env.master_port,
        timeout_s,
    )
    dist.init_process_group(
        backend,
        init_method=f"tcp://{env.master_addr}:{env.master_port}",
        rank=env.rank,
        world_size=env.world_size,
        timeout=timedelta(seconds=timeout_s),
        **({"device_id": device} if device.type == "cuda" else {}),
    )


# Seconds given to gloo's worker threads, before the process group goes, to finish releasing the
# last collective's tensors. A worker drops a finished all-reduce (and with it the Python
# tensors it held, which needs the GIL) a moment after the caller's wait() returns; if the
# group is destroyed meanwhile, its destructor joins that worker while holding the GIL, and
# both wait for ever (seen on a loaded machine: rank 1 of a finished 2-node job hung in
# ~ProcessGroupGloo, its worker in PyEval_AcquireThread). Sleeping releases the GIL.
_DRAIN_S = 0.5


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        time.sleep(_DRAIN_S)
        dist.destroy_process_group()


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce when a process group exists (sum or max); identity otherwise."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return t


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
