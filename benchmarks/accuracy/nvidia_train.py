"""NVIDIA's training loop re-created around NVIDIA's unmodified model (run in NVIDIA's venv).

    /work/nvidia-venv/bin/python benchmarks/accuracy/nvidia_train.py init --nvidia $NV --out w.pth
    /work/nvidia-venv/bin/python benchmarks/accuracy/nvidia_train.py train --nvidia $NV \
        --data work/nvidia_data.pt --init w.pth --steps 1000 --out work/runs/nvidia-s0

NVIDIA's ``runtime/training.py`` needs CUDA and apex (which does not build on a CPU); this is its
loop, statement for statement, on the CPU:

- model: NVIDIA's ``SE3TransformerPooled`` imported from its folder, with ``training.py``'s QM9
  arguments (7 layers, degrees 0..3, 32 channels, 8 heads, channels_div 2, max pooling, norm,
  layer norm, ``fiber_out = 4 * 32``, ``tensor_cores=True`` as on the A100 its published runs
  used, hence fuse level FULL; bases computed in the forward pass, its default);
- optimizer: apex ``FusedAdam`` in its default AdamW mode = ``torch.optim.AdamW`` (lr 0.002,
  betas (0.9, 0.999), eps 1e-8, weight decay 0.1);
- schedule: ``QM9LRSchedulerCallback``: ``CosineAnnealingWarmRestarts(T_0=epochs,
  eta_min=min_lr or lr / 10)``, stepped at every epoch's end;
- loss: ``nn.L1Loss()`` on targets standardized with the training split's mean and
  ``torch.std`` (unbiased), as its ``QM9DataModule``; no clipping, no accumulation, fp32;
- validation: its ``QM9MetricCallback``: MAE of the standardized predictions times the std.

What is not NVIDIA's: the molecules and batch order come from ``--data`` (written by
``run.py`` from se3t's dataset store and se3t's sampler), so both implementations see the same
graphs in the same order; DGL graphs are built from them as NVIDIA's collate builds them.
Writes ``metrics.jsonl`` records like ``se3t train``'s (``kind`` step / val, ``time``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "nvidia"))
import make_fixtures  # noqa: E402  (NVIDIA's fixtures: its modules and model arguments)

# NVIDIA's QM9 model, fused as on its A100 runs (tensor cores: fuse level FULL)
PAPER = {**make_fixtures.PAPER, "tensor_cores": True, "low_memory": False}


def collate(nv, d: dict, idx: list[int]):
    """NVIDIA's ``QM9DataModule._collate`` on molecules ``idx`` of the flat arrays ``d``:
    a batched DGLGraph with ``rel_pos = pos[dst] - pos[src]``, the feature dicts, raw targets."""
    dgl = nv["dgl"]
    ao, eo = d["atom_off"], d["edge_off"]
    n_at = torch.stack([ao[i + 1] - ao[i] for i in idx])
    n_ed = torch.stack([eo[i + 1] - eo[i] for i in idx])
    atoms = torch.cat([torch.arange(ao[i], ao[i + 1]) for i in idx])
    edges = torch.cat([torch.arange(eo[i], eo[i + 1]) for i in idx])
    shift = torch.repeat_interleave(torch.cumsum(n_at, 0) - n_at, n_ed)
    src, dst = d["src"][edges] + shift, d["dst"][edges] + shift
    g = dgl.graph((src, dst), num_nodes=int(n_at.sum()))
    g.set_batch_num_nodes(n_at)
    g.set_batch_num_edges(n_ed)
    pos = d["pos"][atoms]
    g.edata["rel_pos"] = pos[dst] - pos[src]
    node = {"0": d["node_feats"][atoms][..., None]}
    edge = {"0": d["edge_feats"][edges][..., None]}
    return g, node, edge, d["y"][torch.tensor(idx)]


def build(nv, seed: int):
    Fiber = nv["Fiber"]
    torch.manual_seed(seed)
    args = {k: Fiber(v) if k.startswith("fiber_") else v for k, v in PAPER.items()}
    return nv["pooled"](**args)


@torch.no_grad()
def validate(nv, model, d, val_idx, mean, std, bs) -> float:
    model.eval()
    err, n = 0.0, 0
    for k in range(0, len(val_idx), bs):
        g, node, edge, y = collate(nv, d, val_idx[k : k + bs])
        pred = model(g, node, edge)
        err += float((pred - (y - mean) / std).abs().sum())
        n += len(y)
    model.train()
    return err / n * float(std)


def train(a, nv) -> None:
    torch.set_num_threads(a.threads)
    d = torch.load(a.data, weights_only=True)
    model = build(nv, 0)
    model.load_state_dict(torch.load(a.init, weights_only=True)["state_dict"])
    if a.perturb:  # a roundoff-sized change of the start: how fast do trajectories part?
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for prm in model.parameters():
                prm.mul_(1 + a.perturb * torch.randn(prm.shape, generator=gen))
    train_y = d["y"][d["train"]]
    mean, std = train_y.mean(), train_y.std()  # QM9DataModule: torch's unbiased std
    batches = d["orders"][str(a.seed)]
    per_epoch = int(d["steps_per_epoch"])
    val_idx = d["val"].tolist()
    opt = torch.optim.AdamW(
        model.parameters(), lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1
    )
    min_lr = a.min_lr if a.min_lr else a.lr / 10.0
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, a.epochs, eta_min=min_lr)
    loss_fn = torch.nn.L1Loss()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    fh = open(out / "metrics.jsonl", "a")  # noqa: SIM115

    def write(rec):
        fh.write(json.dumps({**rec, "time": time.time()}) + "\n")
        fh.flush()

    def val(step):
        t0 = time.perf_counter()
        mae = validate(nv, model, d, val_idx, mean, std, a.eval_batch)
        write(
            {
                "kind": "val",
                "step": step,
                "val_mae": {"homo": mae},
                "eval_s": time.perf_counter() - t0,
            }
        )

    model.train()
    val(0)
    window, n = 0.0, 0
    for step in range(a.steps):
        g, node, edge, y = collate(nv, d, batches[step].tolist())
        pred = model(g, node, edge)
        loss = loss_fn(pred, (y - mean) / std)
        loss.backward()
        opt.step()
        model.zero_grad(set_to_none=True)
        lr = opt.param_groups[0]["lr"]
        if (step + 1) % per_epoch == 0:
            sched.step()  # QM9LRSchedulerCallback.on_epoch_end
        window += float(loss) * len(y)
        n += len(y)
        if not math.isfinite(float(loss)):
            raise SystemExit(f"non-finite loss at step {step + 1}")
        if (step + 1) % a.log_every == 0:
            write({"kind": "step", "step": step + 1, "loss": window / n, "lr": lr})
            window, n = 0.0, 0
        if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
            val(step + 1)
    fh.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("mode", choices=["init", "train"])
    p.add_argument("--nvidia", type=Path, required=True, help="NVIDIA's SE3Transformer folder")
    p.add_argument("--out", required=True, help="init: the .pth to write; train: run folder")
    p.add_argument("--init-seed", type=int, default=0)
    p.add_argument("--data", type=Path)
    p.add_argument("--init", type=Path)
    p.add_argument("--seed", type=int, default=0, help="batch order (se3t's train.seed)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.002)
    p.add_argument("--min-lr", type=float, default=None)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-batch", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--perturb",
        type=float,
        default=0.0,
        help="scale every initial weight by (1 + PERTURB * N(0, 1)) (seeded): a roundoff-sized "
        "perturbation (1e-7 is fp32's) shows how fast two runs of the same code part",
    )
    a = p.parse_args()
    import make_fixtures as mf

    nv = mf.nvidia(a.nvidia)
    if a.mode == "init":
        model = build(nv, a.init_seed)
        torch.save({"state_dict": model.state_dict()}, a.out)
        print(f"wrote NVIDIA's initial weights (seed {a.init_seed}) to {a.out}")
    else:
        train(a, nv)


if __name__ == "__main__":
    main()
