#!/usr/bin/env python
"""Full-QM9 build: time ``se3t data fetch --source qm9pack`` + ``se3t data build``, print the
parse report, and (``--check-smiles``) compare every perceived molecule with QM9's SMILES.

    .venv/bin/python benchmarks/build_qm9.py --work /work/qm9_full --fresh --check-smiles

The SMILES check rebuilds each molecule's bonds exactly as the build does
(``se3t.data.bonds.perceive``) and compares heavy-atom canonical SMILES, stereo aside, with the
SMILES column of qm9pack; it counts agreement per perception path (ok / pruned / fallback).
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import multiprocessing
import shutil
import subprocess
import sys
import time
from pathlib import Path

SE3T = str(Path(sys.executable).with_name("se3t"))


def _run(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - t0


def _check(task):
    from rdkit import Chem, RDLogger

    from se3t.data.bonds import perceive

    RDLogger.DisableLog("rdApp.*")
    species, pos, smiles = task
    mol, how = perceive(species, pos)
    got = Chem.MolToSmiles(Chem.RemoveAllHs(mol, sanitize=False), isomericSmiles=False)
    want = Chem.MolToSmiles(Chem.MolFromSmiles(smiles), isomericSmiles=False)
    return how, got == want


def _tasks(raw: Path):
    from se3t.data.sources.qm9 import iter_csv

    for part in sorted(raw.glob("qm9_part*.csv")):
        with open(part, newline="") as fh:
            smiles = {int(row["Index"]): row["SMILES"] for row in csv.DictReader(fh)}
        for rec in iter_csv(part):
            yield rec.species, rec.pos, smiles[rec.mol_id]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="results/qm9_full", help="folder for raw/ and qm9.zarr")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="fetch into an emptied raw/ and rebuild the store (replaced atomically when done)",
    )
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--check-smiles", action="store_true")
    args = p.parse_args()
    work = Path(args.work)
    raw, store = work / "raw", work / "qm9.zarr"
    if args.fresh:
        shutil.rmtree(raw, ignore_errors=True)
    t_fetch = _run([SE3T, "data", "fetch", "--source", "qm9pack", "--out", str(raw), "--quiet"])
    t_build = _run(
        [
            SE3T,
            "data",
            "build",
            "--raw",
            str(raw),
            "--out",
            str(store),
            "--processes",
            str(args.processes),
            "--quiet",
        ]
        + (["--force"] if args.fresh else [])
    )
    from se3t.data.store import open_dataset

    s = open_dataset(store)
    report = {k: v for k, v in s.parse_report.items() if not k.endswith("_ids")}
    homo = s.targets[:, s.target_names.index("homo")]
    print(f"fetch {t_fetch:.1f} s, build {t_build:.1f} s, total {t_fetch + t_build:.1f} s")
    print(
        f"{len(s)} molecules, {len(s.species)} atoms, {len(s.src)} directed edges; "
        f"homo {homo.min():.2f} .. {homo.max():.2f} eV (mean {homo.mean():.3f})"
    )
    print("parse report:", json.dumps(report))
    if args.check_smiles:
        stats: collections.Counter = collections.Counter()
        t0 = time.perf_counter()
        with multiprocessing.Pool(args.processes) as pool:
            for how, same in pool.imap_unordered(_check, _tasks(raw), chunksize=500):
                stats[how] += 1
                stats[f"{how}_same"] += same
        agree = {h: f"{stats[h + '_same']}/{stats[h]}" for h in ("ok", "pruned", "fallback")}
        print(f"SMILES check ({time.perf_counter() - t0:.0f} s):", agree)


if __name__ == "__main__":
    main()
