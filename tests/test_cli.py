"""The `se3t` entry point: help for every stage, one-line errors instead of tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from se3t import cli


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "COMMAND" in out and "se3t" in out


def test_each_command_has_help():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert sub.choices, "no subcommands registered"
    for name in sub.choices:
        proc = subprocess.run(
            [sys.executable, "-m", "se3t.cli", name, "--help"], capture_output=True, text=True
        )
        assert proc.returncode == 0, (name, proc.stderr)
        assert "usage" in proc.stdout.lower()


def test_console_script_installed():
    exe = Path(sys.executable).parent / "se3t"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
