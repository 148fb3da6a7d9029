"""Molecules at the edges of what prediction takes: predicted when valid (no edges at all is a
valid molecule), refused with a message naming the field otherwise, never a traceback."""

from __future__ import annotations

import csv
import io

import pytest
from faults import cli

from se3t.data import read_molecule
from se3t.errors import InputError


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def _predictions(stdout: str) -> dict[str, float]:
    return {r["file"]: float(r["prediction"]) for r in csv.DictReader(io.StringIO(stdout))}


def test_molecules_without_edges_are_predicted(trained_run, tmp_path, capsys):
    """Before: atoms 50 Å apart raised 'cannot reshape tensor'. A single atom is refused as the
    dataset build refuses it (docs/integrity.md), naming the field, never a traceback."""
    one = _write(tmp_path, "one.xyz", "1\n\nC 0 0 0\n")
    far = _write(tmp_path, "far.xyz", "2\n\nC 0 0 0\nC 50 0 0\n")
    farther = _write(tmp_path, "farther.xyz", "2\n\nC 0 0 0\nC 0 80 0\n")
    near = _write(tmp_path, "near.xyz", "2\n\nC 0 0 0\nC 1.2 0 0\n")
    code, out, err = cli(capsys, "predict", trained_run, far, farther, near)
    assert code == 0 and "Traceback" not in err
    got = _predictions(out)
    assert len(got) == 3
    # two isolated carbons see no neighbour, wherever they are: the same prediction
    assert got[str(far)] == pytest.approx(got[str(farther)], rel=1e-5)
    assert got[str(near)] != pytest.approx(got[str(far)], rel=1e-5)  # edges do matter
    code, out, err = cli(capsys, "predict", trained_run, one)
    assert code != 0 and "Traceback" not in err
    assert "one.xyz" in err and "'atoms'" in err


@pytest.mark.parametrize(
    ("name", "text", "field"),
    [
        ("huge.xyz", "2\n\nC 0 0 0\nC 1e300 0 0\n", "atom 2 coordinates"),
        ("nan.xyz", "2\n\nC 0 0 0\nC nan 0 0\n", "atom 2 coordinates"),
        ("short.xyz", "3\n\nC 0 0 0\nC 1.5 0 0\n", "atom count"),
        ("fields.xyz", "2\n\nC 0 0 0\nC 1.5\n", "atom 2"),
        (
            "empty.sdf",
            "\n  se3t\n\n  0  0  0  0  0  0  0  0  0  0999 V2000\nM  END\n$$$$\n",
            "atom count",
        ),
    ],
)
def test_unusable_molecules_are_named(trained_run, tmp_path, capsys, name, text, field):
    path = _write(tmp_path, name, text)
    with pytest.raises(InputError, match=f"field '{field}'"):
        read_molecule(path)
    code, _, err = cli(capsys, "predict", trained_run, path)
    assert code == 2 and name in err and "Traceback" not in err


def test_the_line_count_message_agrees_with_itself(tmp_path):
    """Before: 'has 5 lines (plain XYZ needs 5)' for a short atom line."""
    with pytest.raises(InputError) as err:
        read_molecule(_write(tmp_path, "fields.xyz", "2\n\nC 0 0 0\nC 1.5\n"))
    assert "needs an element and x, y, z" in str(err.value) and "lines" not in str(err.value)
    with pytest.raises(InputError, match=r"has 4 lines \(plain XYZ needs 5\)"):
        read_molecule(_write(tmp_path, "short.xyz", "3\n\nC 0 0 0\nC 1.5 0 0\n"))
