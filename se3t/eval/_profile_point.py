"""One point of ``se3t profile``, run in its own process: ``python -m se3t.eval._profile_point
SPEC.json RESULT.json``.

The spec (written by :mod:`se3t.eval.profiling`) holds the resolved config, mode, path, batch size,
steps, device, basis placement and an optional memory limit. The result is one point record of
``memory.json``. An out-of-memory failure is caught and written as ``status="oom"``; any other
failure as ``status="error"`` with its message, so the parent never has to parse a traceback.
"""

from __future__ import annotations

import contextlib
import gc
import json
import resource
import sys
import time
from pathlib import Path


def _limit_memory(limit: int | None, device: str) -> None:
    if not limit or device.startswith("cuda"):
        return
    # RLIMIT_DATA covers heap and private anonymous mappings (Linux >= 4.7): exceeding it makes
    # malloc/mmap fail, which torch reports as an allocation error, i.e. a real CPU OOM.
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _is_oom(err: BaseException) -> bool:
    import torch

    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "cannot allocate" in text
    )


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS, like CUDA's
    ``reset_peak_memory_stats``: the warm-up step's one-off allocations (lazy tables, the first
    autograd graph) then do not mask what the timed steps need. Linux >= 4.0; False elsewhere."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _rss() -> int:
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else _peak_rss()


def _peak_rss() -> int:
    """Peak RSS since the last reset (VmHWM), else since the process started (ru_maxrss)."""
    kib = _status_kib("VmHWM")
    if kib is None:
        kib = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # Linux: KiB
    return kib * 1024


def run(spec: dict) -> dict:
    import numpy as np
    import torch

    from se3t.config import from_dict
    from se3t.data import QM9Dataset, collate
    from se3t.eval.profiling import PATHS, parse_mode
    from se3t.models import build

    mode, path, b = spec["mode"], spec["path"], int(spec["batch_size"])
    point = {
        "mode": mode,
        "path": path,
        "batch_size": b,
        "status": "ok",
        "peak_memory_bytes": None,
        "baseline_memory_bytes": None,
        "mol_per_s": None,
        "step_time_s": None,
        "num_atoms": None,
        "num_edges": None,
        "error": None,
        "wall_s": 0.0,
    }
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    torch.manual_seed(int(spec.get("seed", 0)))
    precision, low_memory = parse_mode(mode)
    if precision == "amp":
        precision = "fp16" if cuda else "bf16"
    if cuda:
        torch.cuda.set_device(device)
        allow_tf32 = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        torch.backends.cudnn.allow_tf32 = allow_tf32
        if spec.get("memory_limit"):
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(
                min(1.0, spec["memory_limit"] / total), device
            )

    cfg = from_dict(spec["config"])
    cfg.model.fusion = PATHS[path]
    cfg.model.low_memory = low_memory
    cfg.model.out_dim = len(cfg.data.targets)

    data = QM9Dataset.from_config(cfg.data, "train")
    if len(data) == 0:
        raise RuntimeError(f"the training split of {cfg.data.path} has no molecules")
    rows = np.random.default_rng(int(spec.get("seed", 0))).permutation(len(data))
    rows = np.resize(rows, b)  # cycles through the split when it is smaller than the batch
    batch = collate([data[int(i)] for i in rows])
    point["num_atoms"] = int(batch.graph.num_nodes)
    point["num_edges"] = int(batch.graph.num_edges)

    try:
        model = build(cfg.model).to(device)
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
        scaler = torch.amp.GradScaler("cuda", enabled=cuda and precision == "fp16")
        autocast = (
            torch.autocast(
                device.type, dtype={"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
            )
            if precision in ("fp16", "bf16")
            else contextlib.nullcontext()
        )
        batch = batch.to(device)
        basis = None
        if spec.get("basis") == "precomputed":
            from se3t.so3.basis import compute_basis_flat

            with torch.no_grad():
                basis = compute_basis_flat(batch.edge_vec, cfg.model.max_degree)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                out = model(batch, basis=basis)  # [B, T]
                loss = torch.nn.functional.l1_loss(out.float(), batch.y.float())
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

        def sync() -> None:
            if cuda:
                torch.cuda.synchronize(device)

        for _ in range(int(spec.get("warmup_steps", 1))):
            step()
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            point["baseline_memory_bytes"] = int(torch.cuda.memory_allocated(device))
        else:
            gc.collect()
            point["peak_reset"] = _reset_peak_rss()
            point["baseline_memory_bytes"] = _rss()
        steps = int(spec["steps"])
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        elapsed = time.perf_counter() - t0
        point["peak_memory_bytes"] = (
            int(torch.cuda.max_memory_allocated(device)) if cuda else _peak_rss()
        )
        point["step_time_s"] = elapsed / steps
        point["mol_per_s"] = b * steps / elapsed
        # the fused kernel's backend and the tiles it ran with on this machine (docs/kernel.md)
        point["kernel"] = f"{cfg.model.kernel}: {model.transformer.tuner.report()}"
    except Exception as err:  # noqa: BLE001 - every failure becomes a record
        point["status"] = "oom" if _is_oom(err) else "error"
        point["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        if not cuda:
            point["peak_memory_bytes"] = _peak_rss()
    return point


def main(argv: list[str]) -> int:
    spec_file, result_file = argv
    spec = json.loads(Path(spec_file).read_text())
    _limit_memory(spec.get("memory_limit"), spec["device"])
    try:
        point = run(spec)
    except Exception as err:  # noqa: BLE001 - setup failures (data, config) are records too
        point = {
            "mode": spec["mode"],
            "path": spec["path"],
            "batch_size": int(spec["batch_size"]),
            "status": "oom" if _is_oom(err) else "error",
            "peak_memory_bytes": None,
            "baseline_memory_bytes": None,
            "mol_per_s": None,
            "step_time_s": None,
            "num_atoms": None,
            "num_edges": None,
            "error": f"{type(err).__name__}: {err}",
            "wall_s": 0.0,
        }
    tmp = Path(result_file).with_suffix(".tmp")
    tmp.write_text(json.dumps(point))
    tmp.replace(result_file)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
