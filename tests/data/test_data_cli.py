"""``se3t data fetch|build|info`` from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from se3t.cli import main
from se3t.data.store import open_dataset

QM9 = Path(__file__).parent / "qm9"


def test_fetch_build_info(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "qm9.zarr"
    assert (
        main(["data", "fetch", "--source", str(QM9 / "qm9pack"), "--out", str(raw), "--quiet"]) == 0
    )
    assert (raw / "config.yaml").is_file() and (raw / "SOURCE.json").is_file()
    assert (
        main(
            [
                "data",
                "build",
                "--raw",
                str(raw),
                "--out",
                str(out),
                "--limit",
                "50",
                "--processes",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "written; 50 molecules kept" in text
    assert len(open_dataset(out)) == 50 and Path(f"{out}.config.yaml").is_file()
    assert (
        main(["data", "build", "--raw", str(raw), "--out", str(out), "--limit", "50", "--quiet"])
        == 0
    )
    assert "up to date" in capsys.readouterr().out
    assert main(["data", "info", str(out), "--verify"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["molecules"] == 50 and info["verified"] and info["units"]["homo"] == "eV"


def test_config_and_overrides(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"data:\n  raw_dir: {QM9 / 'figshare'}\n  path: {tmp_path / 's.zarr'}\n"
        "  graph: radius\n  cutoff: 2.0\n"
    )
    assert (
        main(
            ["data", "build", "--config", str(cfg), "data.limit=12", "data.processes=1", "--quiet"]
        )
        == 0
    )
    s = open_dataset(tmp_path / "s.zarr")
    assert len(s) == 12 and s.graph == {"kind": "radius", "cutoff": 2.0}


@pytest.mark.parametrize(
    "argv,message",
    [
        (["data", "build", "--raw", "/nonexistent/raw", "--out", "x.zarr"], "does not exist"),
        (["data", "info", "/nonexistent/qm9.zarr"], "not a se3t dataset store"),
        (["data", "build", "data.graph=knn"], "config key 'data.graph'"),
        (["data", "build", "data.bogus=1"], "data.bogus"),
        (["data", "fetch", "--source", "/nonexistent/qm9", "--out", "raw"], "no such file"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_bad_molecule_strict_names_record(tmp_path, capsys):
    src = (QM9 / "qm9pack" / "qm9_part2.csv").read_text().splitlines()
    src[2] = src[2].replace("'C'", "'Q'", 1)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "qm9_part1.csv").write_text("\n".join(src) + "\n")
    argv = ["data", "build", "--raw", str(raw), "--out", str(tmp_path / "s.zarr"), "--quiet"]
    assert main([*argv, "--strict"]) == 2
    err = capsys.readouterr().err
    assert "qm9_part1.csv: line 3" in err and "element" in err and "'Q'" in err
    assert main(argv) == 0
    assert "dropped 1 {'unknown_element': 1}" in capsys.readouterr().out


def test_console_script_help():
    exe = Path(sys.executable).with_name("se3t")
    out = subprocess.run(
        [str(exe), "data", "build", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for option in ("--raw", "--out", "--limit", "--graph", "--cutoff", "--processes", "--strict"):
        assert option in out
