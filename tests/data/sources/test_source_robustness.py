"""No input ends in a traceback: every reader (SDF, extended XYZ, XYZ folder + CSV, SMILES CSV,
QM9 XYZ and qm9pack CSV) fed corrupted and random bytes either reads the file (molecules and
per-record errors, each naming the file) or raises se3t's own InputError naming the file.
Also the encodings users' files come in: Latin-1 titles, UTF-16, a BOM."""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from se3t.config import DataConfig
from se3t.data.parse import MoleculeError
from se3t.data.sources import Molecule
from se3t.data.sources.extxyz import iter_extxyz
from se3t.data.sources.own import build_molecules
from se3t.data.sources.qm9 import iter_csv
from se3t.data.sources.qm9 import iter_xyz_dir as iter_qm9_xyz_dir
from se3t.data.sources.sdf import iter_sdf
from se3t.data.sources.smiles import iter_smiles
from se3t.data.sources.xyz_dir import iter_xyz_dir
from se3t.errors import InputError

REPO = Path(__file__).resolve().parents[3]
CMET = REPO / "examples" / "molecules" / "cmet_ligands.sdf"
QM9 = REPO / "tests" / "data" / "qm9"


def _sdf() -> bytes:
    return b"$$$$\n".join(CMET.read_bytes().split(b"$$$$\n")[:2]) + b"$$$$\n"


def _qm9_xyz() -> bytes:
    with tarfile.open(QM9 / "figshare" / "dsgdb9nsd.xyz.tar.bz2") as tar:
        member = next(m for m in tar if m.name.endswith(".xyz"))
        return tar.extractfile(member).read()


def _qm9pack_csv() -> bytes:
    lines = (QM9 / "qm9pack" / "qm9_part1.csv").read_bytes().split(b"\n")
    return b"\n".join(lines[:3]) + b"\n"


EXTXYZ = b"""3
Properties=species:S:1:pos:R:3 energy=-1.5 name=water
O 0.0 0.0 0.0
H 0.96 0.0 0.0
H -0.24 0.93 0.0
2
Properties=species:S:1:pos:R:3 energy=-2.5 name=h2
H 0.0 0.0 0.0
H 0.74 0.0 0.0
"""
PLAIN_XYZ = b"3\nwater\nO 0.0 0.0 0.0\nH 0.96 0.0 0.0\nH -0.24 0.93 0.0\n"
PROPS_CSV = b"id,energy\nw.xyz,-1.5\n"
SMILES_CSV = b"smiles,id,y\nCCO,ethanol,1.0\nC,methane,2.0\n"


def _read(fn, *paths: Path) -> None:
    """Consume a reader: every item is a molecule (or record) or a per-record error naming
    the file; a whole-file problem is an InputError naming one of ``paths``."""
    names = [str(p) for p in paths] + [p.name for p in paths]
    try:
        items = list(fn())
    except InputError as err:
        text = str(err)
        assert any(n in text for n in names), f"InputError names no file: {text}"
        assert "\n" not in text.strip(), f"not one line: {text!r}"
        return
    for item in items:
        if isinstance(item, MoleculeError):
            assert any(n in str(item) for n in names), f"record error names no file: {item}"
        else:
            assert isinstance(item, Molecule) or hasattr(item, "species"), type(item)


def _mutate(valid: bytes, draw) -> bytes:
    """``valid`` with a random slice replaced by random bytes, or truncated, or bytes
    inserted: corrupted files that still look much like the format."""
    how = draw(st.sampled_from(["replace", "truncate", "insert", "random"]))
    if how == "random":
        return draw(st.binary(max_size=600))
    i = draw(st.integers(0, len(valid)))
    if how == "truncate":
        return valid[:i]
    junk = draw(st.binary(min_size=1, max_size=40))
    j = i if how == "insert" else min(len(valid), i + draw(st.integers(1, 40)))
    return valid[:i] + junk + valid[j:]


CASES = {
    "sdf": _sdf,
    "extxyz": lambda: EXTXYZ,
    "xyz_folder": lambda: PLAIN_XYZ,
    "xyz_folder_csv": lambda: PROPS_CSV,
    "smiles_csv": lambda: SMILES_CSV,
    "qm9_xyz": _qm9_xyz,
    "qm9pack_csv": _qm9pack_csv,
}

_PROFILE = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.parametrize("case", sorted(CASES))
@_PROFILE
@given(data=st.data())
def test_every_reader_reads_or_names_the_file(case, data, tmp_path_factory):
    logging.getLogger("se3t.data").setLevel(logging.ERROR)
    tmp = tmp_path_factory.mktemp(case)
    content = _mutate(CASES[case](), data.draw)
    if case == "sdf":
        f = tmp / "in.sdf"
        f.write_bytes(content)
        _read(lambda: iter_sdf(f), f)
    elif case == "extxyz":
        f = tmp / "in.extxyz"
        f.write_bytes(content)
        _read(lambda: iter_extxyz(f, "name"), f)
    elif case in ("xyz_folder", "xyz_folder_csv"):
        (tmp / "xyz").mkdir()
        xyz, csv = tmp / "xyz" / "w.xyz", tmp / "props.csv"
        xyz.write_bytes(content if case == "xyz_folder" else PLAIN_XYZ)
        csv.write_bytes(content if case == "xyz_folder_csv" else PROPS_CSV)
        _read(lambda: iter_xyz_dir(tmp / "xyz", csv, "id"), csv, xyz, tmp / "xyz")
    elif case == "smiles_csv":
        f = tmp / "in.csv"
        f.write_bytes(content)
        _read(lambda: iter_smiles(f, id_column=None, processes=1, progress=False), f)
    elif case == "qm9_xyz":
        (tmp / "xyz").mkdir()
        f = tmp / "xyz" / "dsgdb9nsd_000001.xyz"
        f.write_bytes(content)
        _read(lambda: iter_qm9_xyz_dir(tmp / "xyz"), f)
    else:
        f = tmp / "qm9_part1.csv"
        f.write_bytes(content)
        _read(lambda: iter_csv(f), f)


# ------------------------------------------------------------------------------- encodings


def _latin1_sdf(path: Path) -> Path:
    first, rest = _sdf().split(b"\n", 1)
    path.write_bytes(b"Caf\xe9 ligand\n" + rest)
    return path


def test_an_sdf_with_a_latin1_title_is_built_with_that_title(tmp_path, caplog):
    src = _latin1_sdf(tmp_path / "lat.sdf")
    with caplog.at_level("WARNING", logger="se3t.data"):
        mols = [m for m in iter_sdf(src) if isinstance(m, Molecule)]
    assert [m.id for m in mols][0] == "Caf\u00e9 ligand" and len(mols) == 2
    assert f"{src}: line 1, record 0 is not UTF-8" in caplog.text


def test_a_utf16_sdf_reads_like_its_utf8_original(tmp_path):
    utf8 = tmp_path / "a.sdf"
    utf8.write_bytes(_sdf())
    utf16 = tmp_path / "b.sdf"
    utf16.write_bytes(_sdf().decode().encode("utf-16"))
    a, b = list(iter_sdf(utf8)), list(iter_sdf(utf16))
    assert [m.id for m in a] == [m.id for m in b] and len(a) == 2
    assert all((x.pos == y.pos).all() for x, y in zip(a, b, strict=True))


def test_a_latin1_smiles_csv_is_built(tmp_path):
    src = tmp_path / "lat.csv"
    src.write_bytes("smiles,name,y\nCCO,caf\u00e9,1.0\nCCC,b,2.0\n".encode("latin-1"))
    mols = list(iter_smiles(src, id_column="name", processes=1, progress=False))
    assert [m.id for m in mols] == ["caf\u00e9", "b"]


def test_a_missing_smiles_column_names_data_smiles_column(tmp_path):
    src = tmp_path / "mols.csv"
    src.write_text("smi,id,y\nCCO,a,1.0\n")
    with pytest.raises(InputError, match=r"no column 'smiles' \(data\.smiles_column\)"):
        list(iter_smiles(src, processes=1, progress=False))


def test_building_a_latin1_sdf_gives_a_dataset(tmp_path):
    src = _latin1_sdf(tmp_path / "lat.sdf")
    data = DataConfig(source=str(src), targets=["r_exp_dg"])
    report = build_molecules(data, tmp_path / "out.zarr", progress=False)
    assert report["report"]["kept"] == 2
