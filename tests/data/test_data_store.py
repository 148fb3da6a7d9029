"""The dataset store: layout, fingerprint, no-op rebuilds, atomic replacement, bad stores."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from se3t.data.sources.qm9 import QM9_TARGETS, build_qm9
from se3t.data.store import ARRAYS, fingerprint, open_dataset
from se3t.errors import InputError

CSV_DIR = Path(__file__).parent / "qm9" / "qm9pack"


def test_layout_and_attrs(qm9_store):
    s = open_dataset(qm9_store)
    m = len(s)
    assert m == 275
    for name, dtype in ARRAYS.items():
        assert getattr(s, name).dtype == dtype, name
    assert s.atom_offsets.shape == (m + 1,) and s.edge_offsets.shape == (m + 1,)
    assert s.targets.shape == (m, 12) and s.pos.shape == (s.atom_offsets[-1], 3)
    assert np.all(np.diff(s.mol_id) > 0)  # gdb order
    assert s.target_names == list(QM9_TARGETS)
    assert s.units["homo"] == "eV" and s.units["pos"] == "angstrom"
    report = s.parse_report
    assert report["read"] == report["kept"] == m and report["dropped_total"] == 0
    assert set(s.attrs["checksums"]) == {"qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv"}
    assert s.attrs["source"]["kind"] == "csv"
    assert fingerprint(qm9_store) == s.fingerprint and len(s.fingerprint) == 64
    s.verify()


def test_edges_are_local_and_within_their_molecule(qm9_store):
    s = open_dataset(qm9_store)
    n_atoms = np.diff(s.atom_offsets)
    per_edge_n = np.repeat(n_atoms, np.diff(s.edge_offsets))
    assert (s.src >= 0).all() and (s.src < per_edge_n).all()
    assert (s.dst >= 0).all() and (s.dst < per_edge_n).all()
    assert (s.src != s.dst).all()
    assert set(np.unique(s.bond_type).tolist()) <= {0, 1, 2, 3}
    # every molecule is connected and hydrogens have exactly one bond
    for r in range(len(s)):
        m = s.molecule(r)
        h = np.nonzero(m["species"] == 1)[0]
        deg = np.bincount(m["src"], minlength=len(m["species"]))
        assert (deg[h] == 1).all(), int(s.mol_id[r])


def test_matches_the_records(qm9_store):
    from se3t.data.sources.qm9 import iter_csv

    s = open_dataset(qm9_store)
    recs = {r.mol_id: r for f in sorted(CSV_DIR.glob("*.csv")) for r in iter_csv(f)}
    for r in (0, 100, len(s) - 1):
        m = s.molecule(r)
        rec = recs[int(m["mol_id"])]
        np.testing.assert_array_equal(m["species"], rec.species)
        np.testing.assert_array_equal(m["pos"], rec.pos.astype(np.float32))
        np.testing.assert_array_equal(m["targets"], rec.targets)


def test_rebuild_is_a_noop_and_settings_rebuild(tmp_path):
    out = tmp_path / "s.zarr"
    first = build_qm9(CSV_DIR, out, processes=1, progress=False)
    stamp = (out / "zarr.json").stat().st_mtime_ns
    again = build_qm9(CSV_DIR, out, processes=1, progress=False)
    assert again["skipped"] and (out / "zarr.json").stat().st_mtime_ns == stamp
    limited = build_qm9(CSV_DIR, out, limit=20, processes=1, progress=False)
    assert not limited["skipped"] and len(open_dataset(out)) == 20
    assert limited["fingerprint"] != first["fingerprint"]
    assert open_dataset(out).mol_id.tolist() == list(range(1, 21))
    assert [p.name for p in tmp_path.iterdir()] == ["s.zarr"]  # no temporary left behind


def test_changed_input_rebuilds(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for f in CSV_DIR.glob("*.csv"):
        (raw / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "s.zarr"
    build_qm9(raw, out, processes=1, progress=False)
    lines = (raw / "qm9_part3.csv").read_text().splitlines()
    (raw / "qm9_part3.csv").write_text("\n".join(lines[:-1]) + "\n")  # one molecule fewer
    again = build_qm9(raw, out, processes=1, progress=False)
    assert not again["skipped"] and len(open_dataset(out)) == 274


def test_parallel_build_equals_serial(tmp_path, monkeypatch):
    import se3t.data.sources.qm9.source as qm9_source

    monkeypatch.setattr(qm9_source, "CHUNK", 40)  # several chunks, so the worker pool runs
    a = build_qm9(CSV_DIR, tmp_path / "a.zarr", processes=1, progress=False)
    b = build_qm9(CSV_DIR, tmp_path / "b.zarr", processes=2, progress=False)
    assert a["fingerprint"] == b["fingerprint"]


def test_radius_graph_store(tmp_path):
    out = build_qm9(
        CSV_DIR,
        tmp_path / "r.zarr",
        graph="radius",
        cutoff=3.0,
        limit=30,
        processes=1,
        progress=False,
    )
    s = open_dataset(tmp_path / "r.zarr")
    assert s.graph == {"kind": "radius", "cutoff": 3.0}
    assert (s.bond_type == -1).any() and (s.bond_type >= 0).any()
    bond = build_qm9(CSV_DIR, tmp_path / "b.zarr", limit=30, processes=1, progress=False)
    assert bond["fingerprint"] != out["fingerprint"]
    for r in range(len(s)):
        m = s.molecule(r)
        d = np.linalg.norm(m["pos"][m["dst"]] - m["pos"][m["src"]], axis=1)
        assert (d < 3.0).all()
    from se3t.config import DataConfig
    from se3t.data import MoleculeDataset

    cfg = DataConfig(path=str(tmp_path / "r.zarr"), graph="radius", cutoff=3.0)
    assert len(MoleculeDataset.from_config(cfg, "all")) == 30


def test_not_a_store(tmp_path):
    with pytest.raises(InputError, match="not a se3t dataset store"):
        open_dataset(tmp_path / "missing.zarr")
    import zarr

    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(InputError, match="other.zarr: not a se3t dataset store"):
        open_dataset(tmp_path / "other.zarr")


def test_verify_detects_tampering(tmp_path):
    import zarr

    out = tmp_path / "s.zarr"
    build_qm9(CSV_DIR, out, limit=10, processes=1, progress=False)
    g = zarr.open_group(str(out), mode="r+")
    g["pos"][0, 0] = 123.0
    with pytest.raises(InputError, match="modified or is corrupt"):
        open_dataset(out).verify()


def test_missing_array_is_named(tmp_path):
    out = tmp_path / "s.zarr"
    build_qm9(CSV_DIR, out, limit=10, processes=1, progress=False)
    import shutil

    shutil.rmtree(out / "bond_type")
    with pytest.raises(InputError, match="array 'bond_type'"):
        open_dataset(out)


def test_attrs_are_plain_json(qm9_store):
    attrs = json.loads((Path(qm9_store) / "zarr.json").read_text())["attributes"]
    assert attrs["format"] == "se3t.qm9-dataset"
    assert os.path.basename(attrs["source"]["root"]) == "qm9pack"
