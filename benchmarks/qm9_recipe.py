"""NVIDIA's full-QM9 recipe (QM9 homo, the paper model) in one call with a time budget.

    # here (se3t's venv): the dataset store, compressed to what training needs (~30 MB)
    .venv/bin/python benchmarks/qm9_recipe.py pack --store results/data/qm9.zarr \
        --out results/qm9_pack.npz
    # there (a GPU machine with torch alone; benchmarks/gpu.sh --qm9 runs this)
    python benchmarks/qm9_recipe.py train --pack results/qm9_pack.npz --device cuda \
        --budget-s 420 --out results/qm9_recipe

``pack`` reads a se3t dataset store and writes one ``.npz``: per atom the node features (one-hot
H C N O F + Z) and positions, per edge the local source/destination and the bond one-hot, the
molecule offsets, the ``homo`` target (eV) and se3t's split of the store (for full QM9, NVIDIA's:
100,000 train, 10 % test, the rest validation; ``data.*`` of config/config.yaml).

``train`` needs only torch (and e3nn for the spherical harmonics) besides se3t's model code: no
Zarr, OmegaConf or RDKit. It trains se3t's default model (the paper's: 7 layers, degrees 0..3,
32 channels, 8 heads; NVIDIA's function) with NVIDIA's recipe as config/config.yaml holds it:
AdamW (lr 0.002, betas (0.9, 0.999), weight decay 0.1), L1 loss on the standardized target,
batch 240, AMP (fp16 autocast with loss scaling; TF32 matmuls) on a GPU, no clipping, and the
cosine schedule from lr to min_lr = lr / 10 stepped per epoch (NVIDIA's
CosineAnnealingWarmRestarts over its epochs), compressed to the epochs that fit the budget:
the first epoch is timed, and the schedule spans the epochs that fit in ``--budget-s`` (the
first included) minus the test evaluation. Bases are computed in each forward pass on the
device (NVIDIA's default). Writes ``result.json`` and ``table.md``: test and validation MAE
(meV), epochs done, training molecules per millisecond.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LR, MIN_LR, WEIGHT_DECAY, BATCH = 0.002, 0.0002, 0.1, 240


# ------------------------------------------------------------------------------------ pack
def pack(a) -> None:
    from se3t.config import load
    from se3t.data import MoleculeDataset
    from se3t.io import atomic_write

    over = [f"data.path={a.store}", "data.targets=[homo]"]
    cfg = load(ROOT / "config" / "config.yaml", over + list(a.overrides))
    splits = {s: MoleculeDataset.from_config(cfg.data, s) for s in ("train", "val", "test")}
    st = splits["train"].store
    enc = st.encoding
    ao, eo = np.asarray(st.atom_offsets), np.asarray(st.edge_offsets)
    arrays = {
        "pos": np.asarray(st.pos, np.float32),
        "node_feats": enc.node_features_of(np.asarray(st.species)).astype(np.uint8),
        "edge_feats": enc.edge_features_of(np.asarray(st.bond_type)).astype(np.uint8),
        # the store's edges hold atom indices local to their molecule (QM9: < 29)
        "src": np.asarray(st.src).astype(np.int16),
        "dst": np.asarray(st.dst).astype(np.int16),
        "atom_offsets": ao.astype(np.int64),
        "edge_offsets": eo.astype(np.int64),
        "homo": splits["train"].store.targets[:, st.target_names.index("homo")].astype(np.float32),
        **{s: d.indices.astype(np.int32) for s, d in splits.items()},
    }

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    atomic_write(Path(a.out), write)
    size = Path(a.out).stat().st_size
    counts = ", ".join(f"{s} {len(d)}" for s, d in splits.items())
    print(f"wrote {a.out}: {len(ao) - 1} molecules ({counts}), {size / 2**20:.1f} MiB")


# ------------------------------------------------------------------------------------ train
class Data:
    """The packed dataset as device tensors, collated by index without Python loops."""

    def __init__(self, path: Path, device):
        import torch

        z = np.load(path)
        t = {k: torch.from_numpy(np.ascontiguousarray(z[k])) for k in z.files}
        self.device = device
        self.pos = t["pos"].to(device)
        self.node = t["node_feats"].float().to(device)
        self.edge = t["edge_feats"].float().to(device)
        self.src, self.dst = t["src"].long().to(device), t["dst"].long().to(device)
        self.ao, self.eo = t["atom_offsets"].to(device), t["edge_offsets"].to(device)
        self.homo = t["homo"].to(device)
        self.split = {s: t[s].long() for s in ("train", "val", "test")}
        y = self.homo[self.split["train"].to(device)]
        self.mean, self.std = y.mean(), y.std()  # NVIDIA's QM9DataModule: unbiased std

    def batch(self, idx):
        import torch

        from se3t.graph import Batch, Graph

        idx = idx.to(self.device)
        na, ne = self.ao[idx + 1] - self.ao[idx], self.eo[idx + 1] - self.eo[idx]
        b = len(idx)
        first = torch.cumsum(na, 0) - na  # each molecule's first node in the batch
        atoms = _ranges(self.ao[idx], na)
        edges = _ranges(self.eo[idx], ne)
        shift = torch.repeat_interleave(first, ne)
        graph = Graph(
            self.src[edges] + shift,
            self.dst[edges] + shift,
            torch.repeat_interleave(torch.arange(b, device=self.device), na),
            int(na.sum()),
            b,
        )
        y = ((self.homo[idx] - self.mean) / self.std)[:, None]
        return Batch(graph, self.pos[atoms], self.node[atoms], self.edge[edges], y=y)


def _ranges(start, count):
    """Concatenated ``arange(start[i], start[i] + count[i])``."""
    import torch

    total = int(count.sum())
    base = torch.repeat_interleave(start - (torch.cumsum(count, 0) - count), count)
    return base + torch.arange(total, device=start.device)


def model():
    from se3t.models.transformer import SE3TransformerPooled

    # se3t's default ModelConfig (the paper model, NVIDIA's function: radial_sharing
    # nvidia_full, self_interaction edge), built without the config package
    return SE3TransformerPooled(
        node_features=6,
        edge_features=4,
        num_layers=7,
        max_degree=3,
        channels=32,
        num_heads=8,
        channels_div=2,
        pooling="max",
        nvidia_fuse_level="full",
        self_interaction_per_edge=True,
    )


def evaluate(net, data, split: str, bs: int, amp) -> float:
    import torch

    net.eval()
    idx = data.split[split]
    err, n = 0.0, 0
    with torch.no_grad():
        for k in range(0, len(idx), bs):
            b = data.batch(idx[k : k + bs])
            with amp():
                pred = net(b)
            err += float((pred.float() - b.y).abs().sum())
            n += b.num_graphs
    net.train()
    return err / max(n, 1) * float(data.std)


def train(a) -> None:
    import contextlib

    import torch

    t_start = time.perf_counter()
    device = torch.device(a.device)
    torch.manual_seed(a.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    fp16 = a.precision == "fp16"

    def amp():
        if not fp16:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.float16)

    data = Data(Path(a.pack), device)
    net = model().to(device)
    opt = torch.optim.AdamW(
        net.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WEIGHT_DECAY
    )
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)
    train_idx = data.split["train"]
    g = torch.Generator().manual_seed(a.seed)
    epochs_planned, epoch_times, mols, train_s = None, [], 0, 0.0
    sched, epoch, losses = None, 0, []
    n_test = len(data.split["test"]) + len(data.split["val"])
    while epochs_planned is None or epoch < epochs_planned:
        t0 = time.perf_counter()
        order = train_idx[torch.randperm(len(train_idx), generator=g)]
        steps = 0
        for k in range(0, len(order), a.batch_size):
            b = data.batch(order[k : k + a.batch_size])
            with amp():
                pred = net(b)
            loss = (pred.float() - b.y).abs().mean()  # nn.L1Loss on the standardized target
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            steps += 1
            mols += b.num_graphs
            if a.max_steps and steps >= a.max_steps:
                break
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        epoch_times.append(dt)
        train_s += dt
        losses.append(float(loss.detach()))
        if epochs_planned is None:
            # the budget's epochs: time left after the setup and epoch 1, less the evaluation
            # (two forward passes over val + test ~ a third of an epoch of their size)
            spent = time.perf_counter() - t_start
            per_mol = dt / min(len(order), steps * a.batch_size)
            eval_s = n_test * per_mol / 3 * 1.5
            epochs_planned = max(1, 1 + int((a.budget_s - spent - eval_s) // dt))
            epochs_planned = min(epochs_planned, a.epochs)
            # NVIDIA's CosineAnnealingWarmRestarts(T_0=epochs) stepped per epoch, over the epochs
            # that fit (epoch 1 ran at lr, as it does there)
            sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
                opt, epochs_planned, eta_min=MIN_LR
            )
        sched.step()
        epoch += 1
        print(
            f"epoch {epoch}/{epochs_planned}: {dt:.1f} s, loss {losses[-1]:.4f}, "
            f"lr next {opt.param_groups[0]['lr']:.2e}",
            flush=True,
        )
    t_eval = time.perf_counter()
    test = evaluate(net, data, "test", a.eval_batch, amp)
    val = evaluate(net, data, "val", a.eval_batch, amp)
    eval_s = time.perf_counter() - t_eval
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    res = {
        "device": name or platform.machine(),
        "torch": torch.__version__,
        "precision": a.precision,
        "batch_size": a.batch_size,
        "budget_s": a.budget_s,
        "epochs_done": epoch,
        "epochs_recipe": a.epochs,
        "steps_per_epoch": math.ceil(len(train_idx) / a.batch_size),
        "train_molecules": len(train_idx),
        "train_s": train_s,
        "epoch_s": epoch_times,
        "mol_per_ms": mols / train_s / 1000,
        "test_mae_mev": 1000 * test,
        "val_mae_mev": 1000 * val,
        "eval_s": eval_s,
        "total_s": time.perf_counter() - t_start,
        "last_loss": losses[-1],
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(res, indent=1) + "\n")
    table = (
        "| device | precision | batch | epochs (of 100) | train mol/ms | test MAE homo (meV) "
        "| val MAE (meV) | total s |\n|---|---|---:|---:|---:|---:|---:|---:|\n"
        f"| {res['device']} | {a.precision} | {a.batch_size} | {epoch} | "
        f"{res['mol_per_ms']:.3f} | {res['test_mae_mev']:.1f} | {res['val_mae_mev']:.1f} | "
        f"{res['total_s']:.0f} |\n"
    )
    (out / "table.md").write_text(table)
    print(table)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("pack", help="a dataset store -> the compressed .npz training reads")
    pk.add_argument("--store", required=True)
    pk.add_argument("--out", required=True)
    pk.add_argument("overrides", nargs="*", help="data.* config overrides (e.g. a split)")
    tr = sub.add_parser("train", help="NVIDIA's recipe within --budget-s seconds")
    tr.add_argument("--pack", required=True)
    tr.add_argument("--device", default="cuda")
    tr.add_argument("--precision", choices=["fp16", "fp32"], default="fp16")
    tr.add_argument("--budget-s", type=float, default=420.0)
    tr.add_argument("--epochs", type=int, default=100, help="the recipe's length (an upper bound)")
    tr.add_argument("--batch-size", type=int, default=BATCH)
    tr.add_argument("--eval-batch", type=int, default=480)
    tr.add_argument("--max-steps", type=int, default=0, help="steps per epoch (0: all; smoke)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--out", required=True)
    a = p.parse_args()
    pack(a) if a.cmd == "pack" else train(a)


if __name__ == "__main__":
    main()
