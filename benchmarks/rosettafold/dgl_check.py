"""se3t's RoseTTAFold wrapper on real DGLGraphs (runs in the vendored code's venv, not CI).

    /work/nvidia-venv/bin/python benchmarks/rosettafold/dgl_check.py \
        --source rfdiffusion /path/to/RFdiffusion

CI has no DGL (its wheels stop at torch 2.2), so the tests pass the wrapper a stand-in with a
DGLGraph's API. This check builds the project's own graphs with its ``make_full_graph`` /
``make_topk_graph`` (real ``dgl.DGLGraph`` objects) and se3t's with se3t's builders, and runs,
per block and graph, in float64:

- se3t's wrapper on the DGLGraph and on its own graph: outputs and every gradient (node, vector
  and edge inputs, every parameter) must be equal to 1e-12 relative;
- the vendored wrapper on the DGLGraph: se3t's outputs and input gradients must match it to
  1e-12 relative (the fixtures' float64 threshold).

Exits non-zero on any mismatch. The venv's torch (2.2) lacks two device-argument forms that se3t
uses (``torch.is_autocast_enabled(device)``, ``torch.get_autocast_dtype(device)``, torch 2.4);
they are provided here from the older per-device functions, for this check only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE)]

import make_fixtures as mf  # noqa: E402

if not hasattr(torch, "get_autocast_dtype"):  # torch < 2.4: the per-device forms
    _enabled = torch.is_autocast_enabled

    def _is_autocast_enabled(device_type: str | None = None) -> bool:
        return _enabled() if device_type in (None, "cuda") else torch.is_autocast_cpu_enabled()

    def _get_autocast_dtype(device_type: str) -> torch.dtype:
        if device_type == "cuda":
            return torch.get_autocast_gpu_dtype()
        return torch.get_autocast_cpu_dtype()

    torch.is_autocast_enabled = _is_autocast_enabled
    torch.get_autocast_dtype = _get_autocast_dtype

from se3t.interop import rosettafold  # noqa: E402

TOL = 1e-12


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-300))


def run(model, G, node, l1, edge, src: dict | None = None) -> dict:
    """Outputs and input gradients of one forward and backward pass of a fixed random linear
    functional of the outputs. ``src``: ``model`` is the vendored wrapper; its block is called
    with float64 bases as the fixtures do (its ``get_basis`` casts them to float32)."""
    node, l1, edge = (t.clone().requires_grad_() for t in (node, l1, edge))
    model.zero_grad(set_to_none=True)
    if src is None:
        out = model(G, node, l1, edge)
    else:
        basis = mf.basis64(src, G.edata["rel_pos"], model.se3.max_degree)
        out = model.se3(G, {"0": node, "1": l1}, {"0": edge}, basis)
    g = torch.Generator().manual_seed(mf.SEEDS["loss"])
    loss = sum((v * torch.randn(v.shape, generator=g, dtype=v.dtype)).sum() for v in out.values())
    loss.backward()
    res = {f"out {k}": v.detach() for k, v in out.items()}
    res |= {"grad node": node.grad, "grad l1": l1.grad, "grad edge": edge.grad}
    return res


def check(source: str, name: str, graph: str, L: int, src: dict) -> list[str]:
    kwargs, options = mf.BLOCKS[source][name]
    dt = torch.float64
    xyz = mf.backbone(L).to(dt)
    pair = mf.pair_features(L, kwargs["num_edge_features"], dt)
    ca, idx = xyz[None, :, 1, :], torch.arange(L)[None]
    Gd, edge_d = mf.graph_of(src, source, graph, L, ca, pair)
    make = rosettafold.make_full_graph if graph == "full" else rosettafold.make_topk_graph
    extra = {} if graph == "full" else {"top_k": mf.TOP_K, "variant": source}
    Gs, edge_s = make(ca, pair, idx, **extra)
    node = mf.hash_uniform((L, kwargs["l0_in_features"], 1), mf.SEEDS["node"]).to(dt)
    atoms = [0, 1, 2] if kwargs["l1_in_features"] == 3 else [0, 2]  # as the fixtures'
    l1 = xyz[:, atoms, :] - xyz[:, 1:2, :]
    ours = rosettafold.SE3TransformerWrapper(**kwargs, variant=source, **(options or {}))
    ours = ours.to(dt).train()
    mf.set_weights(ours, dt)
    theirs = src["wrapper"](**kwargs).to(dt).train()
    mf.set_weights(theirs, dt)

    on_dgl = run(ours, Gd, node, l1, edge_d)
    on_dgl |= {f"param {k}": p.grad for k, p in ours.named_parameters()}
    on_own = run(ours, Gs, node, l1, edge_s)
    on_own |= {f"param {k}": p.grad for k, p in ours.named_parameters()}
    vendored = run(theirs, Gd, node, l1, edge_d, src)
    bad = []
    for key, ref in on_own.items():
        if (err := rel(on_dgl[key], ref)) > TOL:
            bad.append(f"{name} L={L} {graph}: {key} on the DGLGraph vs own graph {err:.1e}")
    for key, ref in vendored.items():
        if (err := rel(on_dgl[key], ref)) > TOL:
            bad.append(f"{name} L={L} {graph}: {key} vs the vendored code {err:.1e}")
    across = max(rel(on_dgl[k], v) for k, v in on_own.items())
    worst = max(rel(on_dgl[k], v) for k, v in vendored.items())
    print(
        f"{name} L={L} {graph} ({Gd.num_edges()} edges, {type(Gd).__name__}): {len(on_own)} "
        f"tensors, DGLGraph vs own graph {across:.1e}, vs the vendored code {worst:.1e}"
    )
    return bad


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--source",
        nargs=2,
        metavar=("PROJECT", "CHECKOUT"),
        required=True,
        help="rfdiffusion|rf2 and the project's checkout (RFAA has no DGL builders here)",
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[64])
    a = p.parse_args()
    source, root = a.source[0], Path(a.source[1])
    if source not in ("rfdiffusion", "rf2"):
        p.error(f"--source: rfdiffusion or rf2, got {source!r}")
    src = mf.load_source(source, root)
    bad = []
    for name in mf.BLOCKS[source]:
        for L in a.sizes:
            for graph in ("full", "topk"):
                bad += check(source, name, graph, L, src)
    for line in bad:
        print("MISMATCH", line, file=sys.stderr)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
