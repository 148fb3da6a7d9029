"""Fixtures of the RoseTTAFold family's SE(3)-Transformer blocks for se3t's parity tests.

Runs the vendored code in its own environment (DGL and the torch it supports; not CI):

    /work/nvidia-venv/bin/python benchmarks/rosettafold/make_fixtures.py \
        --source rfdiffusion /path/to/RFdiffusion --out tests/interop/fixtures/rosettafold
    /work/nvidia-venv/bin/python benchmarks/rosettafold/make_fixtures.py \
        --source rf2 /path/to/RoseTTAFold2 --out tests/interop/fixtures/rosettafold
    /work/nvidia-venv/bin/python benchmarks/rosettafold/make_fixtures.py \
        --source rfaa /path/to/RoseTTAFold-All-Atom --out tests/interop/fixtures/rosettafold

Imports the project's unmodified code from its checkout (nothing of it is copied): its
``SE3TransformerWrapper`` (RFAA: its ``SE3Transformer`` with the wrapper's arguments, as its
wrapper module imports half of RFAA) and its ``make_full_graph`` / ``make_topk_graph``. For
every block in ``BLOCKS`` of that source, at every protein size and graph of ``RUNS`` (full:
``L (L - 1)`` edges; top-k: 64 nearest plus sequence neighbours), it builds the block, sets every
weight from :func:`se3t.testing.hash_uniform` (bit-identical on any torch, so weights are not
stored), builds the graph from a stored backbone and pair features regenerated the same way,
runs one forward and one backward pass of a hashed linear functional of the outputs in float32,
and again in float64 on the same float32-rounded weights and inputs (the exact function of the
float32 run's inputs), and saves ``<block>_L<L>_<graph>.pt``: the backbone, the seeds, per dtype
the outputs and the gradients with respect to the node, degree-1 and edge inputs and every
weight (tensors over ``DIGEST_LIMIT`` values as :func:`se3t.testing.digest` probes), the
vendored state-dict keys and shapes, the fuse level of every convolution, the edge count and
order checksum, and metadata (the source's commit, versions, command).

The float64 runs pass float64 bases to the block's ``SE3Transformer`` (its ``get_basis`` casts
to float32), computed with the project's own spherical-harmonics and Clebsch-Gordan functions
and the einsum and stacking of its ``get_basis_script``. The blocks run in ``train()`` mode:
RF2 and RFAA switch to an edge-chunked convolution in ``eval()`` above 65,536 and 4,096 edges
(the same sums, chunk by chunk, with the basis cast to float32).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from se3t.testing import digest, hash_uniform  # noqa: E402  (pure torch, runs on torch 2.2)

# the wrappers' keyword arguments, from each project's inference configuration
RFD_MAIN = dict(  # RFdiffusion config/inference/base.yaml SE3_param_full (main blocks)
    num_layers=1,
    num_channels=32,
    num_degrees=2,
    n_heads=4,
    div=4,
    l0_in_features=8,
    l0_out_features=8,
    l1_in_features=3,
    l1_out_features=2,
    num_edge_features=32,
)
RFD_REFINER = dict(  # SE3_param_topk (the structure refiner)
    num_layers=1,
    num_channels=32,
    num_degrees=2,
    n_heads=4,
    div=4,
    l0_in_features=64,
    l0_out_features=64,
    l1_in_features=3,
    l1_out_features=2,
    num_edge_features=64,
)
RF2_MAIN = dict(  # RoseTTAFold2 network/predict.py SE3_param_full
    num_layers=1,
    num_channels=48,
    num_degrees=2,
    n_heads=4,
    div=4,
    l0_in_features=32,
    l0_out_features=32,
    l1_in_features=2,
    l1_out_features=2,
    num_edge_features=32,
)
RFAA_REFINER = dict(  # RoseTTAFold All-Atom rf2aa/config/inference/base.yaml SE3_ref_param
    num_layers=2,
    num_channels=32,
    num_degrees=2,
    n_heads=4,
    div=4,
    l0_in_features=64,
    l0_out_features=64,
    l1_in_features=3,
    l1_out_features=2,
    num_edge_features=64,
)

# source -> block name -> (wrapper kwargs, extra SE3Transformer options (RFAA only))
BLOCKS = {
    "rfdiffusion": {"rfd_main": (RFD_MAIN, None), "rfd_refiner": (RFD_REFINER, None)},
    "rf2": {"rf2_main": (RF2_MAIN, None)},
    "rfaa": {
        "rfaa_refiner": (RFAA_REFINER, None),
        # the final convolution with RFAA's mean over incoming edges (its wrappers end with a
        # linear layer; SE3Transformer(final_layer="conv", sum_over_edge=False) is the option)
        "rfaa_conv_mean": (RFAA_REFINER, dict(final_layer="conv", sum_over_edge=False)),
    },
}
RUNS = [(64, "full"), (64, "topk"), (256, "full"), (256, "topk")]
TOP_K = 64
# tensors over this many values are stored as digest probes (fixture size: ~100 kB a file)
DIGEST_LIMIT = 256
SEEDS = dict(node=11, pair=12, weights=13, loss=14, backbone=15)


def load_source(source: str, root: Path) -> dict:
    """The project's wrapper/model class and graph builders, imported from its checkout."""
    if source == "rfdiffusion":
        sys.path[:0] = [str(root), str(root / "env" / "SE3Transformer")]
        from rfdiffusion import util_module
        from rfdiffusion.SE3_network import SE3TransformerWrapper
        from se3_transformer.model import basis
        from se3_transformer.model.layers.convolution import ConvSE3
    elif source == "rf2":
        sys.path[:0] = [str(root / "network"), str(root / "SE3Transformer")]
        import util_module
        from SE3_network import SE3TransformerWrapper
        from se3_transformer.model import basis
        from se3_transformer.model.layers.convolution import ConvSE3
    elif source == "rfaa":
        sys.path[:0] = [str(root)]
        from rf2aa.SE3Transformer.se3_transformer.model import basis
        from rf2aa.SE3Transformer.se3_transformer.model.fiber import Fiber
        from rf2aa.SE3Transformer.se3_transformer.model.layers.convolution import ConvSE3
        from rf2aa.SE3Transformer.se3_transformer.model.transformer import SE3Transformer

        SE3TransformerWrapper = None
        util_module = None
        return dict(
            se3=SE3Transformer, Fiber=Fiber, basis=basis, ConvSE3=ConvSE3, util=None, wrapper=None
        )
    else:
        raise SystemExit(f"unknown source {source!r}")
    return dict(wrapper=SE3TransformerWrapper, util=util_module, basis=basis, ConvSE3=ConvSE3)


class RFAAWrapper(torch.nn.Module):
    """RFAA's SE3TransformerWrapper without its package's model imports (icecream, loss
    modules): the same fibers and SE3Transformer arguments, and its forward."""

    def __init__(
        self,
        src,
        options,
        *,
        num_layers,
        num_channels,
        num_degrees,
        n_heads,
        div,
        l0_in_features,
        l0_out_features,
        l1_in_features,
        l1_out_features,
        num_edge_features,
    ):
        super().__init__()
        Fiber = src["Fiber"]
        self.l1_in = l1_in_features
        fiber_in = {0: l0_in_features, **({1: l1_in_features} if l1_in_features else {})}
        fiber_out = {0: l0_out_features, **({1: l1_out_features} if l1_out_features else {})}
        kwargs = dict(populate_edge="arcsin", final_layer="lin", use_layer_norm=True)
        kwargs.update(options or {})
        self.se3 = src["se3"](
            num_layers=num_layers,
            fiber_in=Fiber(fiber_in),
            fiber_hidden=Fiber.create(num_degrees, num_channels),
            fiber_out=Fiber(fiber_out),
            num_heads=n_heads,
            channels_div=div,
            fiber_edge=Fiber({0: num_edge_features}),
            **kwargs,
        )

    def forward(self, G, type_0_features, type_1_features=None, edge_features=None):
        node = {"0": type_0_features}
        if self.l1_in > 0:
            node["1"] = type_1_features
        return self.se3(G, node, {"0": edge_features})


def rfaa_graph(G_src, G_dst, num_nodes, rel_pos):
    import dgl

    G = dgl.graph((G_src, G_dst), num_nodes=num_nodes)
    G.edata["rel_pos"] = rel_pos
    return G


def backbone(L: int) -> torch.Tensor:
    """``[L, 3, 3]`` N, CA, C: a random walk of CA atoms 3.8 A apart (a compact chain, so
    top-k graphs differ from full ones), N and C about 1.45 and 1.52 A from CA."""
    g = torch.Generator().manual_seed(SEEDS["backbone"] * 1000 + L)
    steps = torch.randn(L, 3, generator=g, dtype=torch.float64)
    steps = 3.8 * steps / steps.norm(dim=1, keepdim=True)
    ca = torch.cumsum(steps, 0)
    ca = ca - ca.mean(0)
    off = torch.randn(L, 2, 3, generator=g, dtype=torch.float64)
    off = off / off.norm(dim=2, keepdim=True) * torch.tensor([1.45, 1.52], dtype=off.dtype)[:, None]
    return torch.stack([ca + off[:, 0], ca, ca + off[:, 1]], dim=1)


def pair_features(L: int, F: int, dtype) -> torch.Tensor:
    """``[1, L, L, F]`` pair features, not symmetric, from exact float64 products and sums of
    hashed factors (bit-identical on any torch)."""
    a = hash_uniform((L, F), SEEDS["pair"] * 10 + 0)
    b = hash_uniform((L, F), SEEDS["pair"] * 10 + 1)
    c = hash_uniform((L, F), SEEDS["pair"] * 10 + 2)
    return (a[:, None, :] * b[None, :, :] + c[:, None, :]).to(dtype)[None]


def set_weights(model: torch.nn.Module, dtype) -> dict:
    """Every weight from the hash, by its state-dict key's rank in sorted order, rounded to
    float32."""
    sd = model.state_dict()
    new = {}
    for k, key in enumerate(sorted(sd)):
        shape = tuple(sd[key].shape)
        u = hash_uniform(shape, SEEDS["weights"] * 100000 + k)
        if len(shape) >= 2:
            v = u * (3.0 / shape[-1]) ** 0.5
        elif key.endswith("weight"):
            v = 1.0 + 0.25 * u
        else:
            v = 0.25 * u
        new[key] = v.float().to(dtype)
    model.load_state_dict(new)
    return {k: list(v.shape) for k, v in sd.items()}


def basis64(src, rel_pos: torch.Tensor, max_degree: int) -> dict:
    """The project's pairwise bases in float64 (its get_basis_script without the float32
    cast), with its fused bases added."""
    sh = src["basis"].get_spherical_harmonics(rel_pos.detach(), max_degree)
    cg = src["basis"].get_all_clebsch_gordon(max_degree, rel_pos.device)
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


def edge_checksum(src: torch.Tensor, dst: torch.Tensor, L: int) -> int:
    key = src.long() * L + dst.long() + 1
    return int((key * (torch.arange(key.numel()) + 1)).sum())


def graph_of(src, source: str, graph: str, L: int, ca: torch.Tensor, pair: torch.Tensor):
    """The project's residue graph (RFAA: RFdiffusion's rule, see below) and edge features."""
    idx = torch.arange(L)[None]
    if source != "rfaa":
        make = src["util"].make_full_graph if graph == "full" else src["util"].make_topk_graph
        return make(ca, pair, idx, top_k=TOP_K)
    # RFAA's builders take other arguments (nlocal, topk_incl_local); its blocks are
    # compared on RFdiffusion's graphs, rebuilt here with torch ops on the same rule
    sep = idx[:, None, :] - idx[:, :, None]
    if graph == "full":
        b, i, j = torch.where(sep.abs() > 0)
    else:
        eye = torch.eye(L)[None]
        D = torch.cdist(ca, ca) + eye * 999.9
        sepf = sep.abs() + eye * 999.9
        D = D + sepf * 1e-6
        _, E_idx = torch.topk(D, min(TOP_K, L), largest=False)
        top = torch.zeros((1, L, L)).scatter_(2, E_idx, 1.0)
        b, i, j = torch.where(torch.logical_or(top > 0.0, sepf < 32))
    G = rfaa_graph(b * L + i, b * L + j, L, (ca[b, j] - ca[b, i]).detach())
    return G, pair[b, i, j][..., None]


def run_dtype(src, source, name, G, edge32, xyz32, dtype) -> dict:
    """One forward and backward pass in ``dtype`` on the float32-rounded weights and inputs."""
    import dgl

    kwargs, options = BLOCKS[source][name]
    model = RFAAWrapper(src, options, **kwargs) if source == "rfaa" else src["wrapper"](**kwargs)
    model = model.to(dtype).train()  # train(): the unchunked convolution path everywhere
    keys = set_weights(model, dtype)
    L = xyz32.shape[0]
    s, d = G.edges()
    G = dgl.graph((s, d), num_nodes=G.num_nodes())
    ca = xyz32[:, 1, :].to(dtype)
    G.edata["rel_pos"] = ca[d] - ca[s]
    node = hash_uniform((L, kwargs["l0_in_features"], 1), SEEDS["node"]).float().to(dtype)
    node.requires_grad_()
    edge = edge32.detach().to(dtype).requires_grad_()
    nl1 = kwargs["l1_in_features"]
    atoms = [0, 1, 2] if nl1 == 3 else [0, 2]  # RFdiffusion, RFAA: N, CA, C; RF2: N, C
    l1 = (xyz32[:, atoms, :] - xyz32[:, 1:2, :]).to(dtype).requires_grad_()
    if dtype == torch.float64:
        se3 = model.se3
        basis = basis64(src, G.edata["rel_pos"], se3.max_degree)
        nodes = {"0": node, "1": l1} if nl1 else {"0": node}
        out = se3(G, nodes, {"0": edge}, basis)
    else:
        out = model(G, node, l1, edge)
    loss = sum(
        (v * hash_uniform(v.shape, SEEDS["loss"] * 10 + int(d)).to(dtype)).sum()
        for d, v in out.items()
    )
    loss.backward()
    grads = {
        k: digest(p.grad if p.grad is not None else torch.zeros_like(p), DIGEST_LIMIT)
        for k, p in model.named_parameters()
    }
    return {
        "param_shapes": keys,
        "output": {d: digest(v, DIGEST_LIMIT) for d, v in out.items()},
        "loss": loss.detach(),
        "input_grads": {
            k: digest(v.grad, DIGEST_LIMIT) for k, v in (("node", node), ("l1", l1), ("edge", edge))
        },
        "param_grads": grads,
        "fuse_levels": {
            n: m.used_fuse_level.name
            for n, m in model.named_modules()
            if isinstance(m, src["ConvSE3"])
        },
    }


def run(src, source: str, name: str, L: int, graph: str) -> dict:
    """The block in float32 and in float64 on the same float32-rounded weights, inputs and
    graph (built once, in float32): the float64 result is the exact function of the float32
    run's inputs, against which both implementations' float32 rounding is measured."""
    kwargs, options = BLOCKS[source][name]
    xyz32 = backbone(L).float()
    pair = pair_features(L, kwargs["num_edge_features"], torch.float32)
    G, edge32 = graph_of(src, source, graph, L, xyz32[None, :, 1, :], pair)
    s, d = G.edges()
    return {
        "meta": meta(source, name, kwargs, options, L, graph),
        "xyz": xyz32,
        "seeds": dict(SEEDS),
        "edges": {"num_edges": int(s.numel()), "checksum": edge_checksum(s, d, L)},
        "float32": run_dtype(src, source, name, G, edge32, xyz32, torch.float32),
        "float64": run_dtype(src, source, name, G, edge32, xyz32, torch.float64),
    }


def commit(root: Path) -> str:
    out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True)
    return out.stdout.decode().strip()


ROOT: Path | None = None


def meta(source, name, kwargs, options, L, graph) -> dict:
    import dgl
    import e3nn

    return {
        "source": source,
        "commit": commit(ROOT),
        "block": name,
        "kwargs": kwargs,
        "options": options or {},
        "L": L,
        "graph": graph,
        "top_k": TOP_K,
        "digest_limit": DIGEST_LIMIT,
        "versions": {
            "torch": str(torch.__version__),
            "dgl": str(dgl.__version__),
            "e3nn": str(e3nn.__version__),
            "python": platform.python_version(),
        },
        "command": " ".join(sys.argv),
    }


def save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)", flush=True)


def main() -> None:
    global ROOT
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--source",
        nargs=2,
        metavar=("NAME", "PATH"),
        required=True,
        help="rfdiffusion|rf2|rfaa and the project's checkout",
    )
    p.add_argument("--out", type=Path, required=True, help="fixture folder")
    p.add_argument("--only", nargs="*", help="block names (default: all of the source)")
    args = p.parse_args()
    source, ROOT = args.source[0], Path(args.source[1])
    src = load_source(source, ROOT)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # deterministic reductions on any machine
    for name in args.only or list(BLOCKS[source]):
        for L, graph in RUNS:
            save(run(src, source, name, L, graph), args.out / f"{name}_L{L}_{graph}.pt")


if __name__ == "__main__":
    main()
