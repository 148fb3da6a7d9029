"""Parsing QM9's two formats: the traps of the real files, identical records, every bad input."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from se3t.data.parse import MoleculeError, parse_number
from se3t.data.sources.qm9 import (
    HARTREE_TO_EV,
    QM9_TARGETS,
    build_qm9,
    iter_csv,
    iter_xyz_archive,
    parse_qm9_xyz,
    read_uncharacterized,
)
from se3t.data.store import open_dataset
from se3t.errors import InputError

QM9 = Path(__file__).parent / "qm9"
ARCHIVE = QM9 / "figshare" / "dsgdb9nsd.xyz.tar.bz2"
CSV_DIR = QM9 / "qm9pack"


def _members() -> dict[str, str]:
    with tarfile.open(ARCHIVE) as tar:
        return {m.name: tar.extractfile(m).read().decode() for m in tar if m.isfile()}


@pytest.fixture(scope="module")
def members() -> dict[str, str]:
    return _members()


def _tar(path: Path, files: dict[str, str], mode: str = "w:bz2") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _build(raw, out, **kw):
    return build_qm9(raw, out, processes=1, progress=False, **kw)


# ----------------------------------------------------------------------------- the real traps


@pytest.mark.parametrize(
    "text,value",
    [
        ("2.1997*^-6", 2.1997e-6),
        ("-3.1*^2", -310.0),
        ("0.", 0.0),
        ("1.", 1.0),
        ("-0.5", -0.5),
        ("8.7582E-6", 8.7582e-6),
    ],
)
def test_mathematica_numbers(text, value):
    assert parse_number(text, "f", "x") == pytest.approx(value, rel=1e-12)


def test_committed_archive_has_the_real_traps(members):
    texts = list(members.values())
    assert any("*^" in t for t in texts)  # Mathematica exponents in coordinates and charges
    assert any("\t0.\t" in t for t in texts)  # bare-point numbers ("0.")
    assert 250 <= len(texts) <= 400


def test_methane_record(members):
    rec = parse_qm9_xyz(members["dsgdb9nsd_000001.xyz"], "dsgdb9nsd_000001.xyz")
    assert rec.mol_id == 1
    assert rec.species.tolist() == [6, 1, 1, 1, 1]
    np.testing.assert_allclose(rec.pos[0], [-0.0126981359, 1.0858041578, 0.0080009958])
    t = dict(zip(QM9_TARGETS, rec.targets, strict=True))
    assert t["homo"] == pytest.approx(-0.3877 * HARTREE_TO_EV)  # Hartree -> eV
    assert t["U0"] == pytest.approx(-40.47893 * HARTREE_TO_EV)
    assert t["mu"] == 0.0 and t["alpha"] == 13.21 and t["Cv"] == 6.469  # not converted


def test_exponent_coordinates_parse(members):
    hits = [
        (n, t)
        for n, t in members.items()
        if "*^" in t.splitlines()[2]
        or any("*^" in line.split("\t")[1] for line in t.splitlines()[2:5])
    ]
    assert hits
    name, text = hits[0]
    rec = parse_qm9_xyz(text, name)
    assert np.isfinite(rec.pos).all()
    assert (np.abs(rec.pos) < 1e-4).any()  # the tiny exponent coordinate made it through


def test_both_formats_give_identical_records():
    from_csv = {r.mol_id: r for f in sorted(CSV_DIR.glob("*.csv")) for r in iter_csv(f)}
    from_xyz = {r.mol_id: r for r in iter_xyz_archive(ARCHIVE)}
    assert all(not isinstance(r, MoleculeError) for r in [*from_csv.values(), *from_xyz.values()])
    assert from_csv.keys() == from_xyz.keys() and len(from_csv) >= 250
    for k, a in from_csv.items():
        b = from_xyz[k]
        np.testing.assert_array_equal(a.species, b.species)
        np.testing.assert_array_equal(a.pos, b.pos)
        np.testing.assert_array_equal(a.targets, b.targets)


def test_both_formats_build_the_same_store(tmp_path):
    a = _build(CSV_DIR, tmp_path / "a.zarr")
    b = _build(ARCHIVE, tmp_path / "b.zarr")
    assert a["fingerprint"] == b["fingerprint"]
    sa, sb = open_dataset(tmp_path / "a.zarr"), open_dataset(tmp_path / "b.zarr")
    for name, arr in sa.arrays().items():
        np.testing.assert_array_equal(arr, sb.arrays()[name], err_msg=name)
    homo = sa.targets[:, QM9_TARGETS.index("homo")]
    assert homo.min() > -11.5 and homo.max() < -3.0  # eV, around -5 to -8
    # the committed molecules whose bond orders RDKit's DetermineBonds cannot perceive
    assert a["report"]["bond_pruned"] >= 30 and a["report"]["bond_fallbacks"] == 0


# ----------------------------------------------------------------------------- bad molecules

GOOD = "dsgdb9nsd_000003.xyz"  # water: 3 atoms


def _mutate(members, how: str) -> str:
    lines = members[GOOD].splitlines()
    if how == "atom_count":
        lines[0] = "4"
    elif how == "not_a_number":
        lines[3] = lines[3].replace(lines[3].split("\t")[2], "1.2.3")
    elif how == "unknown_element":
        lines[3] = "Xx" + lines[3][1:]
    elif how == "non_finite_coordinate":
        lines[3] = lines[3].replace(lines[3].split("\t")[1], "NaN")
    elif how == "coincident_atoms":
        parts2, parts3 = lines[2].split("\t"), lines[3].split("\t")
        lines[3] = "\t".join([parts3[0], *parts2[1:4], parts3[4]])
    return "\n".join(lines) + "\n"


BAD = {
    "atom_count": "atom count",
    "not_a_number": "atom 2 y",
    "unknown_element": "atom 2 element",
    "non_finite_coordinate": "atom 2 coordinates",
    "coincident_atoms": "atoms 1 and 2 coordinates",
}


@pytest.mark.parametrize("reason", list(BAD))
def test_bad_xyz_molecule_is_named(members, reason):
    with pytest.raises(MoleculeError) as info:
        parse_qm9_xyz(_mutate(members, reason), "bad.tar:dsgdb9nsd_000003.xyz")
    err = info.value
    assert err.reason == reason
    assert "dsgdb9nsd_000003.xyz" in str(err) and BAD[reason] in str(err)


@pytest.mark.parametrize("reason", list(BAD))
def test_bad_molecule_dropped_with_report_line_or_strict_error(members, tmp_path, reason):
    files = dict(list(members.items())[:20])
    files[GOOD] = _mutate(members, reason)
    archive = _tar(tmp_path / "raw.tar.bz2", files)
    out = _build(archive, tmp_path / "s.zarr")
    report = out["report"]
    assert report["dropped"] == {reason: 1} and report["kept"] == len(files) - 1
    assert any(GOOD in line and BAD[reason] in line for line in report["dropped_examples"])
    assert 3 not in open_dataset(tmp_path / "s.zarr").mol_id.tolist()
    with pytest.raises(InputError, match=BAD[reason]):
        _build(archive, tmp_path / "strict.zarr", strict=True)
    assert not (tmp_path / "strict.zarr").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_plain_xyz_atom_count(tmp_path):
    text = "3\ncomment\nO 0 0 0\nH 0.96 0 0\n"
    with pytest.raises(MoleculeError, match="says 3 atoms"):
        parse_qm9_xyz(text, "w.xyz")
    rec = parse_qm9_xyz("2\n\nO 0 0 0\nH 0.96 0 0\n", "oh.xyz")
    assert rec.mol_id is None and rec.targets is None


def test_extra_atom_line_is_caught(members):
    lines = members[GOOD].splitlines()
    lines[0] = "2"  # one atom line too many for the count
    with pytest.raises(MoleculeError, match="says 2 atoms"):
        parse_qm9_xyz("\n".join(lines), GOOD)


# ----------------------------------------------------------------------------- bad files


def test_csv_missing_column_names_file_and_column(tmp_path):
    src = (CSV_DIR / "qm9_part2.csv").read_text().splitlines()
    header = src[0].split(",")
    drop = header.index("HOMO_au")
    bad = tmp_path / "qm9_part1.csv"
    rows = [",".join(h for i, h in enumerate(header) if i != drop)] + src[1:]
    bad.write_text("\n".join(rows) + "\n")
    with pytest.raises(InputError, match=r"qm9_part1.csv: missing column\(s\) 'HOMO_au'"):
        _build(tmp_path, tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()


def test_csv_bad_row_dropped_and_named(tmp_path):
    src = (CSV_DIR / "qm9_part2.csv").read_text().splitlines()
    src[3] = src[3].replace("'C'", "'Q'", 1)
    (tmp_path / "qm9_part1.csv").write_text("\n".join(src) + "\n")
    out = _build(tmp_path, tmp_path / "s.zarr")
    assert out["report"]["dropped"] == {"unknown_element": 1}
    assert "qm9_part1.csv: line 4" in out["report"]["dropped_examples"][0]


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_damaged_archive_names_the_archive(tmp_path, damage):
    data = ARCHIVE.read_bytes()
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        mid = len(data) // 2
        data = data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 64]) + data[mid + 64 :]
    bad = tmp_path / "raw" / "dsgdb9nsd.xyz.tar.bz2"
    bad.parent.mkdir()
    bad.write_bytes(data)
    out = tmp_path / "s.zarr"
    with pytest.raises(InputError, match="dsgdb9nsd.xyz.tar.bz2: archive is corrupt or truncated"):
        _build(bad.parent, out)
    assert not out.exists() and [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failed_rebuild_keeps_the_old_store(tmp_path):
    out = tmp_path / "s.zarr"
    first = _build(CSV_DIR, out)
    bad = tmp_path / "raw"
    bad.mkdir()
    (bad / "dsgdb9nsd.xyz.tar.bz2").write_bytes(ARCHIVE.read_bytes()[:5000])
    with pytest.raises(InputError):
        _build(bad, out)
    assert open_dataset(out).fingerprint == first["fingerprint"]


def test_nothing_usable_is_an_error(tmp_path, members):
    archive = _tar(tmp_path / "raw.tar", {GOOD: _mutate(members, "unknown_element")}, "w")
    with pytest.raises(InputError, match="no usable molecule"):
        _build(archive, tmp_path / "s.zarr")


def test_uncharacterized_and_duplicates_dropped(tmp_path, members):
    raw = tmp_path / "raw"
    raw.mkdir()
    files = dict(list(members.items())[:10])
    ids = sorted(int(n[10:16]) for n in files)
    _tar(raw / "dsgdb9nsd.xyz.tar.bz2", files)
    (raw / "uncharacterized.txt").write_text(
        " Indices of molecules that failed the consistency check\n"
        f"   {ids[2]}   C   C\n   {ids[5]}   O   O\n   999999   N   N\n"
    )
    assert read_uncharacterized(raw / "uncharacterized.txt") == {ids[2], ids[5], 999999}
    out = _build(raw, tmp_path / "s.zarr")
    assert out["report"]["uncharacterized"] == 2 and out["report"]["kept"] == 8
    assert set(open_dataset(tmp_path / "s.zarr").mol_id.tolist()) == set(ids) - {ids[2], ids[5]}
    # the same molecule twice (a second archive) is dropped as a duplicate
    _tar(raw / "extra.tar", {files_name: text for files_name, text in list(files.items())[:1]})
    out = _build(raw, tmp_path / "s2.zarr")
    assert out["report"]["dropped"] == {"duplicate_id": 1}


def test_read_uncharacterized_real_layout():
    # figshare's own file: prose header, '=' separators, a '#' column header, the rows, footer
    ids = read_uncharacterized(QM9 / "figshare" / "uncharacterized_excerpt.txt")
    assert ids == {58, 61, 80, 185, 186, 245, 3838, 133864, 133865, 133866}


def test_read_uncharacterized_without_ids_names_the_file(tmp_path):
    # e.g. an HTML error page saved under the name: never "0 molecules to drop" in silence
    bad = tmp_path / "uncharacterized.txt"
    bad.write_text("<html><body>Access denied</body></html>\n")
    with pytest.raises(InputError, match="uncharacterized.txt.*no molecule indices"):
        read_uncharacterized(bad)
