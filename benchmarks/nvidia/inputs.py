"""Input graphs for the NVIDIA parity fixtures, from real QM9 molecules (run in se3t's venv).

    .venv/bin/python benchmarks/nvidia/inputs.py tests/interop/fixtures/inputs.pt

Builds the committed QM9 test molecules (tests/data/qm9/qm9pack) with se3t's data stage (bond
graphs, one-hot H C N O F + Z node features, one-hot bond types) and saves plain tensors:

- ``mixed``: one batch of molecules of different sizes: a 2-atom graph, hydrogen cyanide
  (3 atoms), a 9-atom and the largest test molecule. QM9 has no diatomic molecule, so the
  2-atom graph is the C#N bond of hydrogen cyanide (gdb 5) with its real coordinates;
- ``symmetric``: the same with water (gdb 3) instead of hydrogen cyanide: its two hydrogens
  tie in max pooling, where the gradient's route is decided by rounding in float32 (so the
  float64 fixture uses this batch, the float32 ones ``mixed``);
- ``train``: 30 batches of 8 molecules (seeded draw) for the training-trajectory fixture.

``benchmarks/nvidia/make_fixtures.py`` (NVIDIA's venv) reads this file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from se3t.data import MoleculeDataset, build_qm9, collate  # noqa: E402
from se3t.io import atomic_write  # noqa: E402

RAW = ROOT / "tests" / "data" / "qm9" / "qm9pack"
TRAIN_STEPS, TRAIN_BATCH = 30, 8


def plain(batch) -> dict:
    """A collated Batch as plain tensors (what torch.load(weights_only=True) reads anywhere)."""
    g = batch.graph
    return {
        "src": g.src,
        "dst": g.dst,
        "node_graph": g.node_graph,
        "num_nodes": g.num_nodes,
        "num_graphs": g.num_graphs,
        "pos": batch.pos,
        "node_feats": batch.node_feats,
        "edge_feats": batch.edge_feats,
        "y": batch.y,
        "mol_ids": batch.mol_ids,
    }


def two_atom(sample):
    """The first bond between two heavy atoms of ``sample``, as a 2-atom graph."""
    heavy = sample.species > 1
    for k in range(len(sample.src)):
        a, b = int(sample.src[k]), int(sample.dst[k])
        if heavy[a] and heavy[b]:
            keep = np.array([a, b])
            mask = np.isin(sample.src, keep) & np.isin(sample.dst, keep)
            remap = {a: 0, b: 1}
            return replace(
                sample,
                pos=np.asarray(sample.pos)[keep],
                species=np.asarray(sample.species)[keep],
                src=np.array([remap[int(s)] for s in sample.src[mask]], np.int32),
                dst=np.array([remap[int(d)] for d in sample.dst[mask]], np.int32),
                bond_type=np.asarray(sample.bond_type)[mask],
            )
    raise ValueError(f"molecule {sample.mol_id} has no heavy-atom bond")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("out", type=Path, help="output .pt file")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "qm9.zarr"
        build_qm9(RAW, store, processes=1, progress=False)
        ds = MoleculeDataset(store, split="all", targets=("homo",))
        samples = [ds[i] for i in range(len(ds))]
        by_id = {int(s.mol_id): s for s in samples}
        sizes = np.array([s.num_atoms for s in samples])
        water = next(s for s in samples if s.num_atoms == 3 and s.mol_id == 3)
        nine = samples[int(np.flatnonzero(sizes == 9)[0])]
        largest = samples[int(np.argmax(sizes))]
        mixed = [two_atom(by_id[5]), by_id[5], nine, largest]
        symmetric = [two_atom(by_id[5]), water, nine, largest]
        g = torch.Generator().manual_seed(0)
        train = []
        for _ in range(TRAIN_STEPS):
            idx = torch.randperm(len(samples), generator=g)[:TRAIN_BATCH].tolist()
            train.append(plain(collate([samples[i] for i in idx])))
        out = {
            "source": "tests/data/qm9/qm9pack built by se3t.data.build_qm9 (bond graphs)",
            "mixed": plain(collate(mixed)),
            "mixed_sizes": [int(s.num_atoms) for s in mixed],
            "symmetric": plain(collate(symmetric)),
            "train": train,
        }
    atomic_write(args.out, lambda tmp_out: torch.save(out, tmp_out))
    print(f"wrote {args.out}: mixed sizes {out['mixed_sizes']}, {len(train)} train batches")


if __name__ == "__main__":
    main()
