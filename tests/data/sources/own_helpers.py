"""Shared helpers of the tests of users' own molecules (se3t.data.sources).

Real molecules only: the committed QM9 molecules (written out here as extended XYZ, SDF and XYZ
files by the tests themselves) and the SDF files with 3D coordinates that ship inside the RDKit
wheel (cmet_ligands.sdf: 24 c-Met ligands up to 71 atoms with measured binding free energies;
egfr.sdf: 365 docked EGFR ligands up to 76 atoms, with Br and I).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from se3t.data.sources.qm9 import QM9_TARGETS


def rdkit_sdf(name: str) -> Path:
    from rdkit import RDConfig

    paths = {
        "cmet": Path(RDConfig.RDContribDir) / "FreeWilson" / "data" / "cmet_ligands.sdf",
        "egfr": Path(RDConfig.RDContribDir) / "PBF" / "testData" / "egfr.sdf",
    }
    assert paths[name].is_file(), f"the RDKit wheel no longer ships {paths[name]}"
    return paths[name]


def perceived_rows(store) -> list[int]:
    """Rows of a QM9 store whose bonds were perceived without the single-bond fallback (their
    bonds, written to an SDF and sanitized back, are the perceived ones)."""
    bad = set(store.parse_report.get("bond_fallback_ids", []))
    return [r for r in range(len(store)) if int(store.mol_id[r]) not in bad]


def write_extxyz(store, rows, path: Path) -> Path:
    """QM9 store rows as one extended XYZ file: the gdb id and the 12 targets in atoms.info."""
    from ase import Atoms
    from ase.io import write

    frames = []
    for r in rows:
        m = store.molecule(r)
        info = {"gdb": int(m["mol_id"])}
        info.update({t: float(v) for t, v in zip(QM9_TARGETS, m["targets"], strict=True)})
        frames.append(Atoms(numbers=m["species"].astype(int), positions=m["pos"].astype(float)))
        frames[-1].info.update(info)
    write(str(path), frames, format="extxyz")
    return path


def write_sdf(store, rows, path: Path, *, v3000: bool = False) -> Path:
    """QM9 store rows as SDF records: the stored bonds (kekulized by RDKit on writing), the gdb
    id as title, the 12 targets as SD properties written with all their digits."""
    from rdkit import Chem

    kinds = (Chem.BondType.SINGLE, Chem.BondType.DOUBLE, Chem.BondType.TRIPLE)
    blocks = []
    for r in rows:
        m = store.molecule(r)
        mol = Chem.RWMol()
        for z in m["species"].tolist():
            mol.AddAtom(Chem.Atom(int(z)))
        for i, j, t in zip(m["src"], m["dst"], m["bond_type"], strict=True):
            if i < j:
                mol.AddBond(int(i), int(j), Chem.BondType.AROMATIC if t == 3 else kinds[t])
        conf = Chem.Conformer(len(m["species"]))
        for k, p in enumerate(m["pos"].astype(float).tolist()):
            conf.SetAtomPosition(k, p)
        mol.AddConformer(conf, assignId=True)
        mol = mol.GetMol()
        Chem.SanitizeMol(mol)
        mol.SetProp("_Name", str(int(m["mol_id"])))
        for t, v in zip(QM9_TARGETS, m["targets"], strict=True):
            mol.SetProp(t, repr(float(v)))
        block = Chem.MolToMolBlock(mol, forceV3000=v3000)
        props = "".join(f">  <{t}>\n{mol.GetProp(t)}\n\n" for t in QM9_TARGETS)
        blocks.append(block + props + "$$$$\n")
    path.write_text("".join(blocks))
    return path


def assert_same_dataset(qm9, own, rows, *, pos_atol: float, gdb_ids: bool = True) -> None:
    """``own`` (a store built by se3t.data.sources) holds QM9 store ``qm9``'s ``rows``: same
    species, graphs, bond types, targets (all 12, exactly), node/edge features, ids; positions
    within ``pos_atol`` Å (the precision the format writes); with ``gdb_ids`` the ids are the gdb
    indices."""
    from se3t.data import MoleculeDataset, collate

    assert len(own) == len(rows)
    assert own.target_names == list(QM9_TARGETS)
    assert own.encoding.node_features == qm9.encoding.node_features
    for k, r in enumerate(rows):
        a, b = qm9.molecule(r), own.molecule(k)
        np.testing.assert_array_equal(a["species"], b["species"])
        np.testing.assert_array_equal(a["src"], b["src"])
        np.testing.assert_array_equal(a["dst"], b["dst"])
        np.testing.assert_array_equal(a["bond_type"], b["bond_type"])
        np.testing.assert_array_equal(a["targets"], b["targets"])
        np.testing.assert_allclose(a["pos"], b["pos"], rtol=0, atol=pos_atol)
        assert int(a["mol_id"]) == int(b["mol_id"]) or not gdb_ids
    # the features the model sees
    ds_a = MoleculeDataset(qm9, split="all", targets=list(QM9_TARGETS))
    ds_b = MoleculeDataset(own, split="all", targets=list(QM9_TARGETS))
    ba = collate([ds_a[r] for r in rows])
    bb = collate([ds_b[k] for k in range(len(rows))])
    assert torch_equal(ba.node_feats, bb.node_feats) and torch_equal(ba.edge_feats, bb.edge_feats)


def torch_equal(x, y) -> bool:
    import torch

    return x.shape == y.shape and bool(torch.equal(x, y))


# tiny model: the end-to-end runs check the plumbing, not accuracy
TINY = [
    "model.num_layers=1",
    "model.channels=8",
    "model.heads=2",
    "model.max_degree=1",
    "basis.max_degree=1",
    "train.epochs=2",
    "train.batch_size=8",
    "eval.batch_size=16",
    "train.log_every=1",
    "basis.chunk_edges=512",
    "basis.chunks_per_shard=2",
]


def run_cli(*argv: str) -> str:
    """``se3t ARGV`` in a fresh process, as the workflow runs each stage; returns its stdout.
    (In one process, torch's inference tensors cached by the fused kernel's workspace during
    evaluate/predict would break a later training step: se3t.nn.kernel._scratch.)"""
    proc = subprocess.run(
        [sys.executable, "-m", "se3t.cli", *map(str, argv)], capture_output=True, text=True
    )
    assert proc.returncode == 0, (
        f"se3t {' '.join(map(str, argv))} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    )
    return proc.stdout


def end_to_end(tmp_path: Path, overrides: list[str], predict_files: list[Path]) -> dict:
    """data build -> basis precompute/finalize -> train (2 epochs, bases from the store) ->
    evaluate -> predict, all through the CLI; returns the build report, metrics and the
    predictions frame."""
    import pandas as pd

    from se3t.data import open_dataset

    data = tmp_path / "data.zarr"
    run = tmp_path / "run"
    common = [f"data.path={data}", f"data.raw_dir={tmp_path / 'raw'}", *TINY, *overrides]
    run_cli("data", "fetch", "--quiet", *common)
    run_cli("data", "build", "--quiet", "--raw", tmp_path / "raw", *common)
    cache, manifest = tmp_path / "cache", tmp_path / "basis.json"
    run_cli("basis", "precompute", "--dataset", data, "--cache", cache, "--quiet", *common)
    key = _key(data, common)
    run_cli("basis", "finalize", key, "--cache", cache, "--manifest", manifest, "--quiet")
    run_cli(
        "train",
        "--no-progress",
        *common,
        f"run.dir={run}",
        "basis.use=store",
        f"basis.manifest={manifest}",
    )
    run_cli("evaluate", run, "--quiet")
    out = tmp_path / "pred.csv"
    run_cli("predict", run, *predict_files, "--out", out)
    return {
        "report": open_dataset(data).parse_report,
        "metrics": json.loads((run / "metrics.json").read_text()),
        "predictions": pd.read_csv(out, keep_default_na=False),
        "store": open_dataset(data),
        "run": run,
    }


def _key(data: Path, common: list[str]) -> str:
    return run_cli("basis", "key", "--dataset", data, *common).strip()
