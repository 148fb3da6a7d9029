"""``se3t.interop.dgl.from_dgl`` against real DGLGraphs (runs in NVIDIA's venv, not CI).

    /work/nvidia-venv/bin/python benchmarks/nvidia/dgl_interop.py \
        --nvidia /work/nvidia/DGLPyTorch/DrugDiscovery/SE3Transformer \
        --out tests/interop/fixtures/dgl_interop.pt

Builds the batches of ``tests/interop/fixtures/inputs.pt`` (real QM9 molecules) as NVIDIA's QM9
data module does: one ``DGLGraph`` per molecule with ``ndata['pos']``, ``ndata['attr']``,
``edata['edge_attr']``, batched with ``dgl.batch`` and ``edata['rel_pos'] = pos[dst] - pos[src]``.
Checks here that ``from_dgl`` gives back the same positions, features, edges and molecule
membership, and that the converted batch rebuilt as a DGL graph gives NVIDIA's model the same
outputs; saves the converted batches and NVIDIA's outputs on the DGL graphs (pooled model at
every fuse level, the fixtures' seeds and so their weights), which
``tests/interop/test_dgl_interop.py`` compares with se3t's model on the converted batches
(se3t itself needs a newer torch than NVIDIA's venv has). Exits non-zero on any mismatch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import make_fixtures as mf  # noqa: E402

from se3t.interop.dgl import from_dgl  # noqa: E402


def molecules(b: dict) -> list[dict]:
    """Split a collated batch of plain tensors back into molecules (local indices)."""
    out = []
    counts = torch.bincount(b["node_graph"], minlength=b["num_graphs"]).tolist()
    first = 0
    for n in counts:
        keep = (b["src"] >= first) & (b["src"] < first + n)
        out.append(
            {
                "pos": b["pos"][first : first + n],
                "attr": b["node_feats"][first : first + n],
                "src": b["src"][keep] - first,
                "dst": b["dst"][keep] - first,
                "edge_attr": b["edge_feats"][keep],
            }
        )
        first += n
    return out


def qm9_dgl(dgl, b: dict):
    """NVIDIA's QM9 layout: per-molecule DGLGraphs, dgl.batch, rel_pos added after batching."""
    graphs = []
    for m in molecules(b):
        g = dgl.graph((m["src"], m["dst"]), num_nodes=len(m["pos"]))
        g.ndata["pos"], g.ndata["attr"] = m["pos"], m["attr"]
        g.edata["edge_attr"] = m["edge_attr"]
        graphs.append(g)
    g = dgl.batch(graphs)
    src, dst = g.edges()
    g.edata["rel_pos"] = g.ndata["pos"][dst] - g.ndata["pos"][src]
    return g


def nvidia_out(model, g) -> torch.Tensor:
    node = {"0": g.ndata["attr"][:, :, None]}
    edge = {"0": g.edata["edge_attr"][:, :, None]}
    with torch.no_grad():
        return model(g, node, edge)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nvidia", type=Path, required=True, help="NVIDIA's SE3Transformer folder")
    p.add_argument(
        "--inputs", type=Path, default=ROOT / "tests" / "interop" / "fixtures" / "inputs.pt"
    )
    p.add_argument("--out", type=Path, required=True, help="fixture file to write")
    args = p.parse_args()
    nv = mf.nvidia(args.nvidia)
    dgl = nv["dgl"]
    inputs = torch.load(args.inputs, weights_only=True)
    failures = []
    fields = ("pos", "node_feats", "edge_feats", "src", "dst", "node_graph")
    out = {"meta": mf.meta("dgl_interop", "pooled", {}, "float32"), "batches": {}, "outputs": {}}
    for batch_name in ("mixed", "symmetric"):
        b = inputs[batch_name]
        g = qm9_dgl(dgl, b)
        batch = from_dgl(g)
        conv = {
            "pos": batch.pos,
            "node_feats": batch.node_feats,
            "edge_feats": batch.edge_feats,
            "src": batch.graph.src,
            "dst": batch.graph.dst,
            "node_graph": batch.graph.node_graph,
            "num_nodes": batch.graph.num_nodes,
            "num_graphs": batch.graph.num_graphs,
        }
        same = all(torch.equal(conv[k], b[k]) for k in fields)
        out["batches"][batch_name] = conv
        for name in ("pooled_partial", "pooled_full", "pooled_none"):
            kind, kwargs, _ = mf.CONFIGS[name]
            ref = mf.build(nv, kind, kwargs, torch.float32, seed=0).eval()
            want = nvidia_out(ref, g)
            again = nvidia_out(ref, qm9_dgl(dgl, conv))
            ok = same and torch.equal(again, want)
            print(
                f"{batch_name} {name}: from_dgl fields equal {same}, NVIDIA on the round trip "
                f"{'identical' if torch.equal(again, want) else 'DIFFERENT'}"
            )
            out["outputs"][f"{batch_name}/{name}"] = want
            if not ok:
                failures.append(f"{batch_name}/{name}")
    if failures:
        sys.exit(f"mismatches: {failures}")
    mf.save(out, args.out)


if __name__ == "__main__":
    main()
