"""``se3t predict`` on real QM9 molecules given as XYZ and SDF files."""

from __future__ import annotations

import csv
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from se3t.data import MoleculeDataset, open_dataset
from se3t.errors import InputError
from se3t.eval import predict

XYZ_TAR = Path(__file__).parents[1] / "data" / "qm9" / "figshare" / "dsgdb9nsd.xyz.tar.bz2"


def _extract(mol_ids: list[int], folder: Path) -> list[Path]:
    out = []
    with tarfile.open(XYZ_TAR) as tar:
        for mol_id in mol_ids:
            name = f"dsgdb9nsd_{mol_id:06d}.xyz"
            (folder / name).write_bytes(tar.extractfile(name).read())
            out.append(folder / name)
    return out


def _to_sdf(xyz: Path) -> Path:
    from rdkit import Chem

    lines = xyz.read_text().splitlines()
    n = int(lines[0])
    # QM9 XYZ: 5th column is the Mulliken charge, and floats may use *^ exponents
    atoms = [ln.split()[:4] for ln in lines[2 : 2 + n]]
    block = f"{n}\n\n" + "\n".join(
        f"{a[0]} " + " ".join(x.replace("*^", "e") for x in a[1:]) for a in atoms
    )
    mol = Chem.MolFromXYZBlock(block)
    sdf = xyz.with_suffix(".sdf")
    with Chem.SDWriter(str(sdf)) as writer:
        writer.write(mol)
    return sdf


@pytest.fixture(scope="module")
def evaluated_predictions(evaluated_run) -> dict[int, float]:
    with open(evaluated_run / "predictions.csv", newline="") as fh:
        return {int(r["mol_id"]): float(r["prediction"]) for r in csv.DictReader(fh)}


@pytest.mark.slow
def test_files_predict_what_evaluate_predicts_for_the_same_molecules(
    evaluated_run, evaluated_predictions, qm9_store, tmp_path
):
    store = open_dataset(qm9_store)
    test = MoleculeDataset(qm9_store, split="test")
    mol_ids = [int(store.mol_id[r]) for r in test.indices[:3]]
    files = _extract(mol_ids, tmp_path)
    files.append(_to_sdf(files[0]))
    out = tmp_path / "pred.csv"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "se3t.cli",
            "predict",
            str(evaluated_run),
            *map(str, files),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["file"] for r in rows] == [str(f) for f in files]
    assert {r["target"] for r in rows} == {"homo"} and {r["unit"] for r in rows} == {"eV"}
    for row, mol_id in zip(rows, [*mol_ids, mol_ids[0]], strict=True):
        # same geometry, same perceived bonds -> the same prediction as in evaluation
        # (the SDF stores coordinates to 1e-4 Å, hence the tolerance)
        assert float(row["prediction"]) == pytest.approx(evaluated_predictions[mol_id], abs=2e-3)
        assert float(row["prediction_mev"]) == pytest.approx(1000 * float(row["prediction"]))


def test_stdout_when_no_out(evaluated_run, tmp_path, qm9_store):
    files = _extract([1, 2], tmp_path)
    frame = predict(evaluated_run / "best.pt", files, progress=False)
    assert list(frame.columns) == ["file", "id", "target", "unit", "prediction", "prediction_mev"]
    assert frame["id"].tolist() == ["1", "2"]  # the gdb ids of QM9's XYZ files
    assert len(frame) == 2 and frame["prediction"].notna().all()


@pytest.mark.slow
def test_a_malformed_file_is_named(evaluated_run, tmp_path):
    good = _extract([1], tmp_path)[0]
    bad = tmp_path / "broken.xyz"
    bad.write_text("3\ncomment\nC 0.0 0.0\nH 1.0 0.0 0.0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "se3t.cli", "predict", str(evaluated_run), str(good), str(bad)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert str(bad) in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(InputError, match="does not exist"):
        predict(evaluated_run, [tmp_path / "missing.sdf"], progress=False)


def _altered_checkpoint(run: Path, tmp_path: Path, change) -> Path:
    """A copy of ``run``'s best.pt with ``change(state_dict)`` applied to its weights."""
    import torch

    state = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    change(state["model"])
    out = tmp_path / "altered.pt"
    torch.save(state, out)
    return out


def _refused(ckpt: Path, files: list[Path], out: Path, *needles: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "se3t.cli", "predict", str(ckpt), *map(str, files)]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and not out.exists()
    # with --out the progress bar shares stderr; the error is the one other line
    lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("predict:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.slow
def test_nan_weights_are_refused_when_the_checkpoint_is_loaded(evaluated_run, tmp_path):
    def poison(sd):
        name = next(k for k, v in sd.items() if v.is_floating_point())
        sd[name].view(-1)[0] = float("nan")

    ckpt = _altered_checkpoint(evaluated_run, tmp_path, poison)
    files = _extract([1, 2], tmp_path)
    _refused(ckpt, files, tmp_path / "pred.csv", str(ckpt), "non-finite value(s) (NaN or inf)")


@pytest.mark.slow
def test_non_finite_predictions_are_refused(evaluated_run, tmp_path):
    """Finite weights that overflow float32 predict inf: refused, naming the molecule, and no
    CSV with empty or NaN cells is written."""

    def blow_up(sd):
        for v in sd.values():
            if v.is_floating_point():
                v.mul_(1e12)

    ckpt = _altered_checkpoint(evaluated_run, tmp_path, blow_up)
    files = _extract([1, 2], tmp_path)
    _refused(ckpt, files, tmp_path / "pred.csv", "predicts a non-finite value", str(files[0]))


@pytest.mark.parametrize("shift", [1e7, 1e9])
def test_a_far_translated_molecule_is_predicted_as_at_the_origin(evaluated_run, tmp_path, shift):
    """The model sees relative positions only: a molecule 1e7-1e9 Å from the origin is predicted
    as where it was (centered in float64 before the float32 cast), XYZ and SDF alike."""
    import numpy as np

    (xyz,) = _extract([21], tmp_path)
    lines = xyz.read_text().splitlines()
    n = int(lines[0])
    rows = [ln.split() for ln in lines[2 : 2 + n]]
    moved = tmp_path / "moved" / xyz.name
    moved.parent.mkdir()
    body = [
        "\t".join([r[0], *(repr(float(x.replace("*^", "e")) + shift) for x in r[1:4]), r[4]])
        for r in rows
    ]
    moved.write_text("\n".join([lines[0], lines[1], *body, *lines[2 + n :]]) + "\n")
    files = [xyz, moved, _to_sdf(xyz), _to_sdf(moved)]
    got = predict(evaluated_run / "best.pt", files, progress=False)["prediction"].to_numpy()
    assert np.isfinite(got).all()
    assert got[1] == pytest.approx(got[0], rel=1e-5, abs=1e-6)
    assert got[3] == pytest.approx(got[2], rel=1e-5, abs=1e-6)
