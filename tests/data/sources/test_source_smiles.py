"""A CSV of SMILES (se3t.data.sources.smiles): deterministic ETKDG + MMFF conformers, parallel;
failures reported; scaffold split. SMILES of real molecules: the c-Met ligands of RDKit's
cmet_ligands.sdf (drug-sized, with their measured binding free energies) and QM9's own."""

from __future__ import annotations

import csv
import tarfile
from pathlib import Path

import numpy as np
import pytest
from own_helpers import end_to_end, rdkit_sdf

from se3t.config import DataConfig
from se3t.data import MoleculeDataset, open_dataset
from se3t.data.sources.own import build_molecules
from se3t.data.sources.smiles import embed
from se3t.data.splits import scaffold_split
from se3t.errors import InputError

XYZ_TAR = Path(__file__).parents[1] / "qm9" / "figshare" / "dsgdb9nsd.xyz.tar.bz2"


def cmet_csv(path: Path, extra_rows=()) -> Path:
    from rdkit import Chem

    sup = Chem.SDMolSupplier(str(rdkit_sdf("cmet")))
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "smiles", "dG"])
        for m in sup:
            w.writerow([m.GetProp("_Name"), Chem.MolToSmiles(m), m.GetProp("r_exp_dg")])
        for row in extra_rows:
            w.writerow(row)
    return path


def qm9_smiles(n: int) -> list[tuple[str, str]]:
    """(gdb id, GDB-17 SMILES) of the first n committed QM9 molecules (XYZ files' SMILES line)."""
    out = []
    with tarfile.open(XYZ_TAR) as tar:
        for info in tar:
            lines = tar.extractfile(info).read().decode().splitlines()
            out.append((lines[1].split()[1], lines[int(lines[0]) + 3].split()[0]))
            if len(out) == n:
                break
    return out


def test_embedding_is_deterministic_and_independent_of_workers(tmp_path):
    mols = qm9_smiles(24)
    path = tmp_path / "qm9.csv"
    path.write_text("gdb,smiles\n" + "".join(f"{i},{s}\n" for i, s in mols))
    stores = []
    for processes in (1, 2):
        cfg = DataConfig(source=str(path), targets=["x"], id_column="gdb", processes=processes)
        cfg.targets = []  # no property: the id column only
        with pytest.raises(InputError, match="field 'x'"):
            build_molecules(
                DataConfig(source=str(path), targets=["x"], processes=processes),
                tmp_path / "x.zarr",
                progress=False,
            )
        del cfg
    # the same SMILES, with a property, in one and in two worker processes
    path.write_text("gdb,smiles,n\n" + "".join(f"{i},{s},{k}\n" for k, (i, s) in enumerate(mols)))
    for processes in (1, 2):
        cfg = DataConfig(source=str(path), targets=["n"], id_column="gdb", processes=processes)
        build_molecules(cfg, tmp_path / f"p{processes}.zarr", progress=False)
        stores.append(open_dataset(tmp_path / f"p{processes}.zarr"))
    # bit-identical: same seed, one thread per molecule
    np.testing.assert_array_equal(stores[0].pos, stores[1].pos)
    assert stores[0].fingerprint == stores[1].fingerprint
    conf = stores[0].attrs["conformers"]
    assert conf["seed"] == 42 and conf["method"].startswith("ETKDGv3 + MMFF94")
    assert stores[0].parse_report["force_fields"] == {"MMFF94": 24}
    # another seed: another conformer (for a molecule with rotatable bonds)
    a = embed("CCCCO", 42, 200)["pos"]
    b = embed("CCCCO", 7, 200)["pos"]
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_unparsable_smiles_are_reported_not_dropped_silently(tmp_path):
    path = cmet_csv(tmp_path / "c.csv", [("broken", "C1CC(", "-7.0"), ("empty", "", "-7.1")])
    cfg = DataConfig(
        source=str(path), targets=["dG"], id_column="name", processes=2, mmff_iterations=200
    )
    result = build_molecules(cfg, tmp_path / "c.zarr", progress=False)
    r = result["report"]
    assert (r["read"], r["kept"], r["dropped"]) == (26, 24, {"bad_smiles": 2})
    assert r["atoms_max"] >= 70  # hydrogens added: drug-sized molecules
    text = "\n".join(r["dropped_examples"])
    assert "c.csv: record 24 (line 26, id broken): field 'smiles': 'C1CC(' is not a SMILES" in text
    store = open_dataset(tmp_path / "c.zarr")
    assert store.encoding.bonds == "file" and len(set(store.attrs["scaffold"])) > 1
    with pytest.raises(InputError, match=r"record 24 \(line 26, id broken\)"):
        build_molecules(
            DataConfig(
                source=str(path), targets=["dG"], id_column="name", strict=True, mmff_iterations=1
            ),
            tmp_path / "s.zarr",
            progress=False,
        )


def test_scaffold_split_keeps_each_scaffold_in_one_split():
    scaffolds = ["a"] * 5 + ["b"] * 3 + ["c"] * 2 + ["", "d", "e", "f", "g", "h", "i"]
    s = scaffold_split(scaffolds, test_fraction=0.2, train_fraction=0.6)
    rows = np.concatenate([s["train"], s["val"], s["test"]])
    assert sorted(rows.tolist()) == list(range(len(scaffolds)))
    owner = {}
    for name, idx in s.items():
        for r in idx.tolist():
            assert owner.setdefault(scaffolds[r], name) == name
    # the largest scaffolds fill train first: 'a' (5) and 'b' (3) hold 8 of 17 <= 0.6 * 17
    assert s["train"].tolist()[:8] == list(range(8))


@pytest.mark.slow
def test_end_to_end_smiles_scaffold_split(tmp_path):
    path = cmet_csv(tmp_path / "cmet.csv")
    out = end_to_end(
        tmp_path,
        [
            f"data.source={path}",
            "data.id_column=name",
            "data.targets=[dG]",
            "data.units.dG=kcal/mol",
            "data.split=scaffold",
            "data.mmff_iterations=200",
        ],
        [path],
    )
    store = out["store"]
    train = MoleculeDataset(store, split="train", targets=["dG"], split_method="scaffold")
    test = MoleculeDataset(store, split="test", targets=["dG"], split_method="scaffold")
    sc = store.attrs["scaffold"]
    assert not {sc[r] for r in train.indices} & {sc[r] for r in test.indices}
    assert out["metrics"]["count"] == len(test)
    pred = out["predictions"]
    assert pred["id"].tolist() == store.ids and set(pred["unit"]) == {"kcal/mol"}
