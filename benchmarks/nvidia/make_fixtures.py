"""Fixtures of NVIDIA's SE3Transformer for se3t's parity tests (runs in NVIDIA's venv, not CI).

    /work/nvidia-venv/bin/python benchmarks/nvidia/make_fixtures.py \
        --nvidia /work/nvidia/DGLPyTorch/DrugDiscovery/SE3Transformer \
        --inputs tests/interop/fixtures/inputs.pt --out tests/interop/fixtures

Imports NVIDIA's unmodified code from ``--nvidia`` (DeepLearningExamples, folder
DGLPyTorch/DrugDiscovery/SE3Transformer; nothing of it is copied) and, for every configuration
in ``CONFIGS``, builds NVIDIA's model with a fixed seed, runs it on the ``mixed`` batch of real
QM9 molecules from ``inputs.pt`` (``benchmarks/nvidia/inputs.py``) as a DGL graph, and saves
``<name>.pt``: NVIDIA's initial state dict, its output, the loss, the gradients of the loss
with respect to every parameter and to the inputs (positions, node and edge features), the
fuse level NVIDIA used in each convolution, and metadata (NVIDIA's commit, versions). Also:

- ``train_full.pt`` / ``train_full_fp64.pt``: 30 AdamW steps as in NVIDIA's
  ``runtime/training.py`` (L1 loss, lr 0.002, betas (0.9, 0.999), weight decay 0.1; FusedAdam's
  AdamW mode is ``torch.optim.AdamW``'s update, which runs on a CPU) on the ``train`` batches,
  in float32 and float64: the loss of every step, the final weights;
- ``shapes.pt``: NVIDIA's state-dict shapes at the paper's sizes for each fuse level.

The float64 fixture passes float64 bases: NVIDIA's ``get_basis`` casts to float32, so they are
computed with NVIDIA's own spherical-harmonics and Clebsch-Gordan functions and the same
einsum and stacking as its ``get_basis_script``, in float64.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

NVIDIA_COMMIT = "729963dd47e7c8bd462ad10bfac7a7b0b604e6dd"

SMALL = dict(num_layers=2, num_heads=2, channels_div=2)
POOLED = dict(
    fiber_in={0: 6},
    fiber_edge={0: 4},
    fiber_out={0: 12},
    num_degrees=3,
    num_channels=4,
    output_dim=1,
    pooling="max",
    norm=True,
    use_layer_norm=True,
    tensor_cores=False,
    low_memory=False,
    **SMALL,
)

# name -> (model class, NVIDIA keyword arguments, dtype); the float64 fixture runs on the
# ``symmetric`` batch (water's tied hydrogens), the others on ``mixed`` (inputs.py says why)
CONFIGS = {
    "pooled_partial": ("pooled", POOLED, "float32"),
    "pooled_full": ("pooled", {**POOLED, "tensor_cores": True}, "float32"),
    "pooled_none": ("pooled", {**POOLED, "low_memory": True}, "float32"),
    "pooled_full_lowmem": (
        "pooled",
        {**POOLED, "tensor_cores": True, "low_memory": True},
        "float32",
    ),
    "pooled_avg_plain": (
        "pooled",
        {**POOLED, "pooling": "avg", "norm": False, "use_layer_norm": False},
        "float32",
    ),
    "pooled_partial_fp64": ("pooled", POOLED, "float64"),
    "plain_degree1": (
        "plain",
        dict(
            fiber_in={0: 6},
            fiber_hidden={0: 4, 1: 4, 2: 4},
            fiber_out={1: 2},
            fiber_edge={0: 4},
            return_type=1,
            norm=True,
            use_layer_norm=True,
            **SMALL,
        ),
        "float32",
    ),
}
TRAIN = ("pooled", {**POOLED, "tensor_cores": True}, "float32")
PAPER = dict(
    fiber_in={0: 6},
    fiber_edge={0: 4},
    fiber_out={0: 128},
    num_degrees=4,
    num_channels=32,
    output_dim=1,
    num_layers=7,
    num_heads=8,
    channels_div=2,
    pooling="max",
    norm=True,
    use_layer_norm=True,
)


def nvidia(src: Path):
    """NVIDIA's modules, imported from its source folder."""
    sys.path.insert(0, str(src))
    import dgl
    from se3_transformer.model import SE3Transformer, SE3TransformerPooled
    from se3_transformer.model.basis import get_all_clebsch_gordon, get_spherical_harmonics
    from se3_transformer.model.fiber import Fiber
    from se3_transformer.model.layers.convolution import ConvSE3

    return dict(
        dgl=dgl,
        pooled=SE3TransformerPooled,
        plain=SE3Transformer,
        Fiber=Fiber,
        ConvSE3=ConvSE3,
        sh=get_spherical_harmonics,
        cg=get_all_clebsch_gordon,
    )


def build(nv, kind: str, kwargs: dict, dtype: torch.dtype, seed: int):
    Fiber = nv["Fiber"]
    args = {k: Fiber(v) if k.startswith("fiber_") else v for k, v in kwargs.items()}
    torch.manual_seed(seed)
    return nv[kind](**args).to(dtype)


def dgl_graph(nv, b: dict, dtype: torch.dtype):
    """The batch as NVIDIA's data loader gives it: a batched DGLGraph with ``rel_pos``, and
    the node/edge feature dicts; positions and features are leaves that require grad."""
    dgl = nv["dgl"]
    g = dgl.graph((b["src"], b["dst"]), num_nodes=b["num_nodes"])
    B = b["num_graphs"]
    g.set_batch_num_nodes(torch.bincount(b["node_graph"], minlength=B))
    g.set_batch_num_edges(torch.bincount(b["node_graph"][b["dst"]], minlength=B))
    # fresh leaves: never set requires_grad on the shared input tensors
    pos = b["pos"].detach().to(dtype, copy=True).requires_grad_()
    src, dst = g.edges()
    g.edata["rel_pos"] = pos[dst] - pos[src]
    node = b["node_feats"].detach().to(dtype, copy=True)[..., None].requires_grad_()
    edge = b["edge_feats"].detach().to(dtype, copy=True)[..., None].requires_grad_()
    return g, pos, {"0": node}, {"0": edge}


def basis64(nv, rel_pos: torch.Tensor, max_degree: int) -> dict:
    """NVIDIA's pairwise bases in float64 (its get_basis_script without the float32 cast)."""
    sh = nv["sh"](rel_pos.detach(), max_degree)
    cg = nv["cg"](max_degree, rel_pos.device)
    out, idx = {}, 0
    for d_in in range(max_degree + 1):
        for d_out in range(max_degree + 1):
            ks = [
                torch.einsum("n f, k l f -> n l k", sh[J], cg[idx][f])
                for f, J in enumerate(range(abs(d_in - d_out), d_in + d_out + 1))
            ]
            out[f"{d_in},{d_out}"] = torch.stack(ks, 2)
            idx += 1
    return out


def fuse_levels(nv, model) -> dict:
    return {
        name: m.used_fuse_level.name
        for name, m in model.named_modules()
        if isinstance(m, nv["ConvSE3"])
    }


def meta(name: str, kind: str, kwargs: dict, dtype: str) -> dict:
    import dgl
    import e3nn

    return {
        "name": name,
        "model": "SE3TransformerPooled" if kind == "pooled" else "SE3Transformer",
        "kwargs": kwargs,
        "dtype": dtype,
        "nvidia_commit": NVIDIA_COMMIT,
        "versions": {
            "torch": str(torch.__version__),
            "dgl": str(dgl.__version__),
            "e3nn": str(e3nn.__version__),
            "python": platform.python_version(),
        },
        "command": " ".join(sys.argv),
    }


def loss_of(kind: str, out, y):
    # smooth losses for gradient comparisons: MSE to the targets (pooled), mean square (plain)
    if kind == "pooled":
        return ((out - y.to(out.dtype)) ** 2).mean()
    return (out**2).mean()


def fixture(nv, name, kind, kwargs, dtype_name, batch) -> dict:
    dtype = getattr(torch, dtype_name)
    model = build(nv, kind, kwargs, dtype, seed=0)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    g, pos, node, edge = dgl_graph(nv, batch, dtype)
    max_degree = model.max_degree if kind == "plain" else model.transformer.max_degree
    basis = basis64(nv, g.edata["rel_pos"], max_degree) if dtype == torch.float64 else None
    out = model(g, node, edge, basis)
    loss = loss_of(kind, out, batch["y"][:, 0])
    loss.backward()
    grads = {
        k: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
        for k, p in model.named_parameters()
    }
    return {
        "meta": meta(name, kind, kwargs, dtype_name),
        "state_dict": state,
        "output": out.detach(),
        "loss": loss.detach(),
        "grads": grads,
        "input_grads": {
            "pos": pos.grad,
            "node_feats": node["0"].grad,
            "edge_feats": edge["0"].grad,
        },
        "fuse_levels": fuse_levels(nv, model),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }


def run_trajectory(nv, batches, dtype: torch.dtype):
    kind, kwargs, _ = TRAIN
    model = build(nv, kind, kwargs, torch.float32, seed=0).to(dtype)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(
        model.parameters(), lr=0.002, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1
    )
    loss_fn = torch.nn.L1Loss()
    losses = []
    for b in batches:
        g, _, node, edge = dgl_graph(nv, b, dtype)
        max_degree = model.transformer.max_degree
        basis = basis64(nv, g.edata["rel_pos"], max_degree) if dtype == torch.float64 else None
        loss = loss_fn(model(g, node, edge, basis), b["y"][:, 0].to(dtype))
        loss.backward()
        opt.step()
        model.zero_grad(set_to_none=True)
        losses.append(float(loss))
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, torch.tensor(losses, dtype=torch.float64), final


def trajectory(nv, batches, dtype_name: str) -> dict:
    """30 AdamW steps in ``dtype_name``; the float32 fixture also records the losses of the
    same run in float64 (NVIDIA's own rounding sensitivity: the tests compare float32 runs
    step by step only while NVIDIA's float32 and float64 runs agree)."""
    kind, kwargs, _ = TRAIN
    state, losses, final = run_trajectory(nv, batches, getattr(torch, dtype_name))
    info = meta(f"train_full{'_fp64' if dtype_name == 'float64' else ''}", kind, kwargs, dtype_name)
    info["optimizer"] = "AdamW lr=0.002 betas=(0.9, 0.999) eps=1e-8 weight_decay=0.1, L1 loss"
    out = {"meta": info, "state_dict": state, "losses": losses, "final_state_dict": final}
    if dtype_name == "float32":
        out["losses_fp64"] = run_trajectory(nv, batches, torch.float64)[1]
    return out


def shapes(nv) -> dict:
    out = {}
    for level, extra in (
        ("partial", {}),
        ("full", {"tensor_cores": True}),
        ("none", {"low_memory": True}),
    ):
        model = build(nv, "pooled", {**PAPER, **extra}, torch.float32, seed=0)
        out[level] = {
            "kwargs": {**PAPER, **extra},
            "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
            "fuse_levels": fuse_levels(nv, model),
        }
    return {"meta": meta("shapes", "pooled", PAPER, "float32"), "levels": out}


def save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nvidia", type=Path, required=True, help="NVIDIA's SE3Transformer folder")
    p.add_argument("--inputs", type=Path, required=True, help="inputs.pt (inputs.py)")
    p.add_argument("--out", type=Path, required=True, help="fixture folder")
    p.add_argument("--only", nargs="*", help="configuration names (default: all)")
    args = p.parse_args()
    head = subprocess.run(
        ["git", "-C", str(args.nvidia), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    if head and head != NVIDIA_COMMIT:
        sys.exit(f"{args.nvidia} is at {head}, the fixtures are pinned to {NVIDIA_COMMIT}")
    nv = nvidia(args.nvidia)
    inputs = torch.load(args.inputs, weights_only=True)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # deterministic reductions on any machine
    names = args.only or [*CONFIGS, "train_full", "train_full_fp64", "shapes"]
    for name in names:
        if name in ("train_full", "train_full_fp64"):
            dtype = "float64" if name.endswith("fp64") else "float32"
            save(trajectory(nv, inputs["train"], dtype), args.out / f"{name}.pt")
        elif name == "shapes":
            save(shapes(nv), args.out / "shapes.pt")
        else:
            kind, kwargs, dtype = CONFIGS[name]
            batch = "symmetric" if dtype == "float64" else "mixed"
            fx = fixture(nv, name, kind, kwargs, dtype, inputs[batch])
            fx["meta"]["batch"] = batch
            save(fx, args.out / f"{name}.pt")


if __name__ == "__main__":
    main()
