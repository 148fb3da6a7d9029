"""A folder of XYZ files plus a CSV of properties (se3t.data.sources.xyz_dir), on QM9 molecules
written out as plain XYZ files by the test; ids that do not match are an error."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from own_helpers import assert_same_dataset, end_to_end, perceived_rows

from se3t.config import DataConfig
from se3t.data import MoleculeDataset, open_dataset
from se3t.data.elements import symbol
from se3t.data.sources.own import build_molecules
from se3t.data.sources.qm9 import QM9_TARGETS
from se3t.errors import InputError

QM9_ELEMENTS = ["H", "C", "N", "O", "F"]


def write_folder(store, rows, folder, *, split=False):
    """One plain XYZ file per row (9 decimals) and properties.csv (file, 12 targets[, split])."""
    folder.mkdir(parents=True, exist_ok=True)
    xyz = folder / "xyz"
    xyz.mkdir(exist_ok=True)
    with open(folder / "properties.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", *QM9_TARGETS, *(["split"] if split else [])])
        for k, r in enumerate(rows):
            m = store.molecule(r)
            name = f"mol_{int(m['mol_id']):06d}.xyz"
            lines = [str(len(m["species"])), f"gdb {int(m['mol_id'])}"]
            lines += [
                f"{symbol(int(z))} {p[0]:.9f} {p[1]:.9f} {p[2]:.9f}"
                for z, p in zip(m["species"], m["pos"].astype(float), strict=True)
            ]
            (xyz / name).write_text("\n".join(lines) + "\n")
            extra = [("train", "train", "val", "test")[k % 4]] if split else []
            w.writerow([name, *(repr(float(v)) for v in m["targets"]), *extra])
    return xyz, folder / "properties.csv"


def _cfg(xyz, props, **kw) -> DataConfig:
    kw.setdefault("targets", list(QM9_TARGETS))
    kw.setdefault("id_column", "file")
    return DataConfig(source=str(xyz), properties=str(props), **kw)


def test_qm9_molecules_as_xyz_files_give_the_qm9_dataset(qm9_store, tmp_path):
    qm9 = open_dataset(qm9_store)
    rows = perceived_rows(qm9)[:40]
    xyz, props = write_folder(qm9, rows, tmp_path / "in")
    cfg = _cfg(xyz, props, elements=QM9_ELEMENTS)
    build_molecules(cfg, tmp_path / "own.zarr", progress=False)
    own = open_dataset(tmp_path / "own.zarr")
    eps = float(np.finfo(np.float32).eps)
    assert_same_dataset(qm9, own, rows, pos_atol=eps * 8, gdb_ids=False)
    assert own.ids[0] == f"mol_{int(qm9.mol_id[rows[0]]):06d}.xyz"


def test_ids_that_do_not_match_the_files(qm9_store, tmp_path):
    qm9 = open_dataset(qm9_store)
    xyz, props = write_folder(qm9, [0, 1, 2], tmp_path / "in")
    (xyz / "mol_000001.xyz").unlink()
    (xyz / "stray.xyz").write_text((xyz / "mol_000002.xyz").read_text())
    with pytest.raises(InputError) as err:
        build_molecules(_cfg(xyz, props), tmp_path / "o.zarr", progress=False)
    msg = str(err.value)
    assert "properties.csv: the CSV's ids do not match the files" in msg
    assert "line 2 (file='mol_000001.xyz')" in msg and "stray.xyz" in msg
    with pytest.raises(InputError, match="no column 'name'"):
        build_molecules(_cfg(xyz, props, id_column="name"), tmp_path / "o.zarr", progress=False)


def test_bad_coordinates_and_properties_are_dropped(qm9_store, tmp_path):
    qm9 = open_dataset(qm9_store)
    xyz, props = write_folder(qm9, [0, 1, 2, 3], tmp_path / "in")
    f = xyz / "mol_000002.xyz"
    lines = f.read_text().splitlines()
    lines[3] = lines[3].split()[0] + " 0.1 abc 0.3"
    f.write_text("\n".join(lines) + "\n")
    f = xyz / "mol_000003.xyz"
    lines = f.read_text().splitlines()
    f.write_text("\n".join([lines[0], lines[1], *lines[3:]]) + "\n")  # one atom line short
    f = xyz / "mol_000001.xyz"
    lines = f.read_text().splitlines()
    lines[2] = "Xx" + lines[2][1:]  # a symbol RDKit's periodic table does not know
    f.write_text("\n".join(lines) + "\n")
    text = props.read_text().splitlines()
    cells = text[4].split(",")
    cells[3] = "n/a"  # homo of mol 4: missing, kept as NaN
    cells[4] = "-0.3eV"  # lumo of mol 4: text, not a number
    text[4] = ",".join(cells)
    props.write_text("\n".join(text) + "\n")
    r = build_molecules(_cfg(xyz, props, targets=["homo"]), tmp_path / "o.zarr", progress=False)
    rep = r["report"]
    assert rep["kept"] == 1
    assert rep["dropped"] == {"atom_count": 1, "bad_coordinates": 1, "unknown_element": 1}
    assert "field 'atom 1 element': 'Xx' is not a chemical element" in str(rep)
    assert rep["missing_values"]["homo"] == 1 and "lumo" in rep["ignored_properties"]  # mol 4
    joined = "\n".join(rep["dropped_examples"])
    assert "record 1 (id mol_000002.xyz, file mol_000002.xyz): field 'atom 2 y'" in joined
    # lumo requested: its text value drops the molecule (here the last one: a build that
    # keeps nothing is an error with the drops by reason)
    with pytest.raises(InputError, match="no usable molecule.*'not_a_number': 1"):
        build_molecules(
            _cfg(xyz, props, targets=["homo", "lumo"]), tmp_path / "p.zarr", progress=False
        )
    assert not (tmp_path / "p.zarr").exists()


def test_column_split(qm9_store, tmp_path):
    qm9 = open_dataset(qm9_store)
    xyz, props = write_folder(qm9, list(range(20)), tmp_path / "in", split=True)
    cfg = _cfg(xyz, props, targets=["homo"], split_column="split")
    build_molecules(cfg, tmp_path / "o.zarr", progress=False)
    sets = {
        s: MoleculeDataset(tmp_path / "o.zarr", split=s, targets=["homo"], split_method="column")
        for s in ("train", "val", "test")
    }
    assert sets["train"].indices.tolist() == [k for k in range(20) if k % 4 in (0, 1)]
    assert sets["test"].indices.tolist() == [k for k in range(20) if k % 4 == 3]
    with pytest.raises(InputError, match="no scaffolds"):
        build_molecules(
            _cfg(xyz, props, targets=["homo"], graph="radius"),
            tmp_path / "r.zarr",
            progress=False,
        )
        MoleculeDataset(tmp_path / "r.zarr", targets=["homo"], split_method="scaffold")


@pytest.mark.slow
def test_end_to_end_radius_graph_column_split(qm9_store, tmp_path):
    qm9 = open_dataset(qm9_store)
    xyz, props = write_folder(qm9, list(range(40)), tmp_path / "in", split=True)
    out = end_to_end(
        tmp_path,
        [
            f"data.source={xyz}",
            f"data.properties={props}",
            "data.id_column=file",
            "data.targets=[homo]",
            "data.units.homo=eV",
            "data.graph=radius",
            "data.cutoff=4.0",
            "data.split=column",
            "data.split_column=split",
        ],
        sorted(xyz.glob("*.xyz"))[:5],
    )
    assert out["store"].encoding.edge_features == 0
    assert out["metrics"]["count"] == 10  # the rows labelled 'test'
    assert len(out["predictions"]) == 5
