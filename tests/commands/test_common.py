"""se3t.commands.common: --config FILE or run folder, KEY=VALUE overrides, flag aliases."""

from __future__ import annotations

import argparse

import pytest

from se3t import config as C
from se3t.commands.common import Alias, add_config_arguments, load_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_config_arguments(
        p,
        example="train.lr=0.001",
        aliases=(
            Alias("--limit", "data.limit", type=int),
            Alias("--out", "data.path"),
            Alias("--strict", "data.strict", action="store_true"),
        ),
    )
    return p


def test_file_then_overrides_then_aliases(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  limit: 10\ntrain:\n  lr: 0.01\n")
    args = _parser().parse_args(["--config", str(path), "train.lr=0.005", "data.limit=20"])
    cfg = load_config(args)
    assert (cfg.data.limit, cfg.train.lr, cfg.data.strict) == (20, 0.005, False)
    args = _parser().parse_args(["-c", str(path), "data.limit=20", "--limit", "30", "--strict"])
    cfg = load_config(args)
    assert (cfg.data.limit, cfg.data.strict) == (30, True)


def test_alias_values_are_verbatim_and_checked(tmp_path):
    # "1e3" and "null" would be parsed as YAML in an override; an alias keeps the typed text
    cfg = load_config(_parser().parse_args(["--out", "null"]))
    assert cfg.data.path == "null"
    with pytest.raises(C.ConfigError, match="data.limit"):
        load_config(_parser().parse_args(["--limit", "0"]))


def test_run_folder_is_its_config_with_run_dir_set(tmp_path):
    run = tmp_path / "run"
    C.save(C.load(overrides=["train.epochs=3", "run.dir=elsewhere"]), run / "config.yaml")
    cfg = load_config(_parser().parse_args(["--config", str(run), "train.seed=4"]))
    assert (cfg.train.epochs, cfg.train.seed, cfg.run.dir) == (3, 4, str(run))
    with pytest.raises(C.ConfigError, match="holds no config.yaml"):
        load_config(_parser().parse_args(["--config", str(tmp_path)]))


def test_help_names_the_key_of_every_alias(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "alias of data.limit=LIMIT" in out and "alias of data.strict=true" in out
