#!/usr/bin/env python
"""Extract a few hundred real QM9 molecules from qm9pack into ``tests/data/qm9/`` in two formats.

Writes, from the CSV files that the PyPI package qm9pack ships (located without importing it:
its ``__init__`` needs ``pkg_resources``):

- ``tests/data/qm9/qm9pack/qm9_part{1,2,3}.csv``: the selected rows, byte for byte as qm9pack
  has them (same header, same number text), each row in the part file it came from;
- ``tests/data/qm9/figshare/dsgdb9nsd.xyz.tar.bz2``: the same molecules as QM9-format XYZ files
  (``dsgdb9nsd_NNNNNN.xyz``) in a tar.bz2 like figshare's, with figshare's layout: atom count;
  ``gdb ID A B C mu alpha homo lumo gap r2 zpve U0 U H G Cv``; ``El x y z mulliken`` per atom;
  harmonic frequencies; SMILES (GDB and relaxed); InChI (GDB and relaxed); tab separated. Numbers
  keep qm9pack's text except that exponents are written Mathematica style (``2.1997*^-6``), as
  in the original archive, the trap that RDKit's XYZ reader and ``float`` reject.

Selection (deterministic): the first 150 molecules (gdb 1-150, the smallest), the first 25 whose
coordinates carry an exponent, the first 40 of part 1 whose bond orders RDKit cannot perceive
with total charge 0, and 60 drawn at random (seed 0) from all of QM9.

Run: ``.venv/bin/python scripts/extract_test_molecules.py`` (about 30 s).
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import os
import random
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "qm9"
PARTS = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
N_FIRST, N_EXPONENT, N_NO_ORDERS, N_RANDOM = 150, 25, 40, 60


def qm9pack_dir() -> Path:
    dist = importlib.metadata.distribution("qm9pack")
    return Path(dist.locate_file("qm9pack/data"))


def read_part(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        return header, list(reader)


def bond_orders_fail(elements: list[str], xyz: list[list[float]]) -> bool:
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdDetermineBonds

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.RWMol()
    conf = Chem.Conformer(len(elements))
    for i, (el, p) in enumerate(zip(elements, xyz, strict=True)):
        mol.AddAtom(Chem.Atom(el))
        conf.SetAtomPosition(i, p)
    mol.AddConformer(conf)
    try:
        rdDetermineBonds.DetermineBonds(mol, charge=0)
    except Exception:
        return True
    return False


def parse_list(text: str) -> list[str]:
    return [t for t in text.replace("[", " ").replace("]", " ").replace("'", " ").split(",")]


def mathematica(number: str) -> str:
    """qm9pack's ``2.1997E-6`` back to the archive's ``2.1997*^-6``."""
    return number.strip().replace("E", "*^").replace("e", "*^")


def to_xyz(row: dict[str, str]) -> str:
    elements = [e.strip() for e in parse_list(row["Elements"])]
    coords = [c.strip() for c in parse_list(row["XYZ_Ang"])]
    charges = [c.strip() for c in parse_list(row["Mulliken_pop"])]
    freqs = [f.strip() for f in parse_list(row["Harmonic_Freq_cmi"])]
    n = int(row["N_atoms"])
    assert len(elements) == n and len(coords) == 3 * n and len(charges) == n, row["XYZ_file"]
    props = [
        "RotA_GHz",
        "RotB_GHz",
        "RotC_GHz",
        "Dipole_debye",
        "Polarizability_bohr3",
        "HOMO_au",
        "LUMO_au",
        "HOMO_LUMO_gap_au",
        "R2_bohr2",
        "ZPVE_au",
        "InternalEnergy_0K_au",
        "InternalEnergy_298K_au",
        "Enthalphy_298K_au",
        "GibbsFreeEnergy_298K_au",
        "Heatcapacity_Cv_cal_mol_K",
    ]
    lines = [str(n), "gdb " + row["Index"] + "\t" + "\t".join(mathematica(row[p]) for p in props)]
    lines[1] += "\t"
    for i, el in enumerate(elements):
        xyz = "\t".join(mathematica(c) for c in coords[3 * i : 3 * i + 3])
        lines.append(f"{el}\t{xyz}\t{mathematica(charges[i])}")
    lines.append("\t".join(mathematica(f) for f in freqs))
    lines.append(f"{row['SMILES']}\t{row['SMILES']}")
    lines.append(f"{row['InChi']}\t{row['InChi']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    src = qm9pack_dir()
    parts = {name: read_part(src / name) for name in PARTS}
    header = parts[PARTS[0]][0]
    all_rows = [(name, r) for name in PARTS for r in parts[name][1]]
    idx = header.index("Index")
    picked: dict[int, tuple[str, list[str]]] = {}

    for name, r in all_rows[:N_FIRST]:
        picked[int(r[idx])] = (name, r)
    exp = [(n, r) for n, r in all_rows if "E" in r[header.index("XYZ_Ang")]]
    for name, r in exp[:N_EXPONENT]:
        picked[int(r[idx])] = (name, r)
    found = 0
    for r in parts[PARTS[0]][1][N_FIRST:]:
        name = PARTS[0]
        row = dict(zip(header, r, strict=True))
        els = [e.strip() for e in parse_list(row["Elements"])]
        c = [float(x) for x in parse_list(row["XYZ_Ang"])]
        if bond_orders_fail(els, [c[3 * i : 3 * i + 3] for i in range(len(els))]):
            picked[int(r[idx])] = (name, r)
            found += 1
            if found == N_NO_ORDERS:
                break
    rng = random.Random(0)
    for name, r in rng.sample(all_rows, N_RANDOM):
        picked[int(r[idx])] = (name, r)

    (OUT / "qm9pack").mkdir(parents=True, exist_ok=True)
    (OUT / "figshare").mkdir(parents=True, exist_ok=True)
    for name in PARTS:
        rows = [r for gdb, (n, r) in sorted(picked.items()) if n == name]
        with open(OUT / "qm9pack" / name, "w", newline="") as fh:
            fh.write(",".join(header) + "\n")
            for r in rows:
                fh.write(_csv_line(header, r) + "\n")
    tar_path = OUT / "figshare" / "dsgdb9nsd.xyz.tar.bz2"
    tmp = tar_path.with_suffix(".tmp")
    with tarfile.open(tmp, "w:bz2") as tar:
        for gdb, (_, r) in sorted(picked.items()):
            data = to_xyz(dict(zip(header, r, strict=True))).encode()
            info = tarfile.TarInfo(f"dsgdb9nsd_{gdb:06d}.xyz")
            info.size = len(data)
            info.mtime = 1_400_000_000  # fixed: the archive is reproducible byte for byte
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, tar_path)
    print(f"{len(picked)} molecules -> {OUT}")


def _csv_line(header: list[str], row: list[str]) -> str:
    # qm9pack quotes the text columns and leaves the numbers bare; reproduce that exactly
    quoted = {
        "XYZ_file",
        "SMILES",
        "InChi",
        "Stoichiometry",
        "Elements",
        "XYZ_Ang",
        "Mulliken_pop",
        "Harmonic_Freq_cmi",
    }
    return ",".join(f'"{v}"' if h in quoted else v for h, v in zip(header, row, strict=True))


if __name__ == "__main__":
    main()
