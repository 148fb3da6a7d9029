"""Extended XYZ input (se3t.data.sources.extxyz, read with ASE): QM9 molecules written as
extended XYZ give QM9's dataset; missing properties are masked; bad frames are named."""

from __future__ import annotations

import numpy as np
import pytest
from own_helpers import assert_same_dataset, end_to_end, perceived_rows, rdkit_sdf, write_extxyz

from se3t.config import DataConfig
from se3t.data import MoleculeDataset, open_dataset
from se3t.data.sources.own import build_molecules
from se3t.data.sources.qm9 import QM9_TARGETS
from se3t.errors import InputError

QM9_ELEMENTS = ["H", "C", "N", "O", "F"]


def _cfg(source, **kw) -> DataConfig:
    return DataConfig(source=str(source), targets=kw.pop("targets", list(QM9_TARGETS)), **kw)


def test_qm9_molecules_as_extxyz_give_the_qm9_dataset(qm9_store, tmp_path):
    qm9 = open_dataset(qm9_store)
    rows = perceived_rows(qm9)[:80]
    path = write_extxyz(qm9, rows, tmp_path / "qm9.extxyz")
    cfg = _cfg(path, id_column="gdb", elements=QM9_ELEMENTS)
    result = build_molecules(cfg, tmp_path / "own.zarr", progress=False)
    own = open_dataset(tmp_path / "own.zarr")
    # ASE writes 8 decimals: float32 positions come back within their own rounding
    assert_same_dataset(qm9, own, rows, pos_atol=float(np.finfo(np.float32).eps) * 8)
    assert own.ids == [str(int(qm9.mol_id[r])) for r in rows]
    assert result["report"]["missing_values"] == dict.fromkeys(QM9_TARGETS, 0)


def test_the_encoding_defaults_to_the_elements_present(qm9_store, tmp_path):
    qm9 = open_dataset(qm9_store)
    rows = [r for r in perceived_rows(qm9) if 9 not in qm9.molecule(r)["species"]][:20]
    path = write_extxyz(qm9, rows, tmp_path / "noF.extxyz")
    build_molecules(_cfg(path, targets=["homo"]), tmp_path / "own.zarr", progress=False)
    enc = open_dataset(tmp_path / "own.zarr").encoding
    assert enc.elements == (1, 6, 7, 8) and enc.node_features == 5


def _with_missing(qm9, rows, path, drop_every=3):
    """Extended XYZ of QM9 rows where every third molecule lacks 'lumo' (absent key) and every
    fifth has 'gap' = nan."""
    from ase.io import read, write

    write_extxyz(qm9, rows, path)
    frames = read(str(path), index=":")
    for k, a in enumerate(frames):
        if k % drop_every == 0:
            a.info.pop("lumo")
        if k % 5 == 0:
            a.info["gap"] = float("nan")
    write(str(path), frames, format="extxyz")
    return path


def test_missing_values_are_nan_masked_and_counted(qm9_store, tmp_path):
    qm9 = open_dataset(qm9_store)
    rows = perceived_rows(qm9)[:60]
    path = _with_missing(qm9, rows, tmp_path / "m.extxyz")
    cfg = _cfg(path, targets=["lumo", "gap"], id_column="gdb")
    report = build_molecules(cfg, tmp_path / "m.zarr", progress=False)["report"]
    assert report["missing_values"]["lumo"] == 20 and report["missing_values"]["gap"] == 12
    ds = MoleculeDataset(tmp_path / "m.zarr", split="train", targets=["lumo", "gap"])
    lumo = ds.store.targets[ds.indices, 0]
    # statistics of the present values only
    assert float(ds.mean[0]) == pytest.approx(np.nanmean(lumo), rel=1e-6)
    assert np.isnan(ds.store.targets[:, 0]).sum() == 20


def test_malformed_frame_is_an_error_naming_file_and_record(qm9_store, tmp_path):
    qm9 = open_dataset(qm9_store)
    path = write_extxyz(qm9, [0, 1, 2], tmp_path / "bad.extxyz")
    lines = path.read_text().splitlines()
    n0 = int(lines[0])
    start = n0 + 2  # frame 1 starts here
    lines[start + 3] = lines[start + 3].replace(lines[start + 3].split()[2], "1.2.3", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"bad.extxyz: record 1 \(frame 2\).*coordinates"):
        build_molecules(_cfg(path), tmp_path / "b.zarr", progress=False)
    assert not (tmp_path / "b.zarr").exists()


def test_coincident_one_atom_and_unknown_element(qm9_store, tmp_path):
    from ase import Atoms
    from ase.io import read, write

    qm9 = open_dataset(qm9_store)
    path = write_extxyz(qm9, [0, 1, 2, 3], tmp_path / "x.extxyz")
    frames = read(str(path), index=":")
    frames[1].positions[2] = frames[1].positions[1]  # two atoms at one point
    frames[2] = Atoms("C", positions=[[0.0, 0.0, 0.0]], info=dict(frames[2].info))  # one atom
    frames[3].numbers[0] = 0  # 'X': ASE's dummy atom, not an element
    write(str(path), frames, format="extxyz")
    r = build_molecules(_cfg(path, targets=["homo"]), tmp_path / "x.zarr", progress=False)
    rep = r["report"]
    assert rep["kept"] == 1
    assert rep["dropped"] == {"coincident_atoms": 1, "one_atom": 1, "unknown_element": 1}
    text = "\n".join(rep["dropped_examples"])
    assert "x.extxyz: record 1 (id 1): field 'atoms 2 and 3 coordinates'" in text
    assert "record 3 (id 3): field 'atom 1 element'" in text


def test_drug_sized_molecules_with_perceived_bonds_and_radius_graph(tmp_path):
    """Real docked EGFR ligands (up to 76 atoms, Br, I) written as extended XYZ: bonds are
    perceived from 3D; the radius graph has no bond features and bounded in-degree."""
    from ase import Atoms
    from ase.io import write
    from rdkit import Chem

    sup = Chem.SDMolSupplier(str(rdkit_sdf("egfr")), removeHs=False)
    mols = [m for m in (sup[k] for k in range(len(sup))) if m.GetNumAtoms() >= 70][:3]
    assert len(mols) == 3
    frames = []
    for m in mols:
        a = Atoms(
            numbers=[x.GetAtomicNum() for x in m.GetAtoms()],
            positions=m.GetConformer().GetPositions(),
        )
        a.info["name"] = m.GetProp("_Name")
        a.info["energy_opls"] = float(m.GetProp("r_mmffld_Potential_Energy-OPLS_2005"))
        frames.append(a)
    path = tmp_path / "egfr.extxyz"
    write(str(path), frames, format="extxyz")
    cfg = _cfg(path, targets=["energy_opls"], id_column="name")
    build_molecules(cfg, tmp_path / "b.zarr", progress=False)
    bond = open_dataset(tmp_path / "b.zarr")
    assert bond.parse_report["atoms_max"] >= 70
    # the perceived bonds are the file's (the SDF's bond block) for these well-formed poses
    for k, m in enumerate(mols):
        pairs = {tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))) for b in m.GetBonds()}
        mol = bond.molecule(k)
        got = {(int(i), int(j)) for i, j in zip(mol["src"], mol["dst"], strict=True) if i < j}
        assert got == pairs
    cfg = _cfg(path, targets=["energy_opls"], graph="radius", cutoff=5.0, max_neighbors=12)
    build_molecules(cfg, tmp_path / "r.zarr", progress=False)
    radius = open_dataset(tmp_path / "r.zarr")
    assert radius.encoding.edge_features == 0 and (radius.bond_type == -1).all()
    for k in range(3):
        dst = radius.molecule(k)["dst"]
        assert np.bincount(dst).max() == 12


@pytest.mark.slow
def test_end_to_end_with_missing_values(qm9_store, tmp_path):
    qm9 = open_dataset(qm9_store)
    rows = perceived_rows(qm9)[:60]
    path = _with_missing(qm9, rows, tmp_path / "m.extxyz")
    out = end_to_end(
        tmp_path,
        [
            f"data.source={path}",
            "data.targets=[lumo,gap]",
            "data.id_column=gdb",
            "data.units.lumo=eV",
            "data.units.gap=eV",
        ],
        [path],
    )
    m = out["metrics"]["metrics"]
    n = out["metrics"]["count"]
    assert m["lumo"]["count"] + m["lumo"]["missing"] == n and m["gap"]["unit"] == "eV"
    assert np.isfinite([m["lumo"]["mae"], m["gap"]["mae"]]).all()
    pred = out["predictions"]
    assert len(pred) == 2 * 60 and pred["id"].astype(str).tolist()[::2] == out["store"].ids
    assert np.isfinite(pred["prediction_mev"].astype(float)).all()  # eV targets: also meV
