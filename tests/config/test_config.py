"""se3t.config: defaults, YAML + overrides, errors that name the key, round trips."""

from __future__ import annotations

import pytest

from se3t import config as C
from se3t.choices import Compressor, Fusion


def test_defaults_are_the_papers_hyperparameters():
    cfg = C.load()
    m = cfg.model
    assert (m.num_layers, m.max_degree, m.channels, m.heads, m.channels_div) == (7, 3, 32, 8, 2)
    assert m.norm and m.layer_norm and m.pooling == "max"
    assert cfg.data.targets == ["homo"]


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.01\n  epochs: 3\ndata:\n  limit: 100\n")
    cfg = C.load(path, ["train.lr=0.001", "data.targets=[homo,lumo]"])
    assert cfg.train.lr == 0.001 and cfg.train.epochs == 3 and cfg.data.limit == 100
    assert cfg.data.targets == ["homo", "lumo"]


def test_dict_overrides_keep_types():
    cfg = C.load(overrides={"train.seed": 7, "workflow.runs.b": {"train.seed": 1}})
    assert cfg.train.seed == 7 and cfg.workflow.runs == {"b": {"train.seed": 1}}


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("train.lrr=1", "train.lrr"),
        ("train.lr=abc", "train.lr"),
        ("train.lr=-1", "train.lr"),
        ("train.batch_size=0", "train.batch_size"),
        ("data.targets=[gibbs]", "data.targets"),
        ("train.precision=fp8", "train.precision"),
        ("model.heads=5", "model.heads"),
        ("nosection.x=1", "nosection"),
    ],
)
def test_bad_values_name_the_key(override, named):
    with pytest.raises(C.ConfigError, match=named.replace(".", r"\.")):
        C.load(overrides=[override])


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochz: 3\n")
    with pytest.raises(C.ConfigError) as err:
        C.load(path)
    assert "bad.yaml" in str(err.value) and "train.epochz" in str(err.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(C.ConfigError, match="does not exist"):
        C.load(tmp_path / "nope.yaml")
    bad = tmp_path / "b.yaml"
    bad.write_text("train: [1,\n")
    with pytest.raises(C.ConfigError, match="not valid YAML"):
        C.load(bad)


def test_override_without_equals():
    with pytest.raises(C.ConfigError, match="key=value"):
        C.load(overrides=["train.lr"])


def test_save_and_reload_round_trip(tmp_path):
    cfg = C.load(overrides=["train.lr=0.003", "launch.extra={gres: 'gpu:2'}"])
    out = C.save(cfg, tmp_path / "sub" / "config.yaml")
    again = C.load(out)
    assert C.to_dict(again) == C.to_dict(cfg)
    assert C.from_dict(C.to_dict(cfg)) == cfg
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp left
    assert out.stat().st_mode & 0o044 == 0o044  # readable by group and others, as umask 022 says


def test_choices_are_enums_saved_as_their_values(tmp_path):
    cfg = C.load(overrides=["basis.compressor=blosc-zstd", "model.fusion=pairwise"])
    assert cfg.basis.compressor is Compressor.BLOSC_ZSTD and cfg.model.fusion is Fusion.PAIRWISE
    assert cfg.model.fusion == "pairwise"  # a member equals its value
    assert C.to_dict(cfg)["basis"]["compressor"] == "blosc-zstd"
    assert type(C.to_dict(cfg)["basis"]["compressor"]) is str
    text = C.save(cfg, tmp_path / "c.yaml").read_text()
    assert "compressor: blosc-zstd" in text and "fusion: pairwise" in text


def test_bad_choice_lists_the_yaml_values():
    with pytest.raises(C.ConfigError) as err:
        C.load(overrides=["basis.compressor=lz5"])
    assert "'lz5' is not one of ['none', 'zstd', 'blosc-lz4', 'blosc-zstd', 'gzip']" in str(
        err.value
    )


def test_every_choice_field_has_an_enum_and_every_rule_checks():
    # edge_features may be 0 (a radius graph without bond types: the radial profiles still
    # see the edge length), not negative
    for override, message in [
        ("model.edge_features=-1", "must be >= 0, got -1"),
        ("data.limit=0", "must be > 0 or null, got 0"),
        ("data.test_fraction=1.5", "must lie in (0, 1), got 1.5"),
        ("train.min_lr=-1", "must be >= 0, got -1"),
        ("eval.profile_steps=0", "must be > 0, got 0"),
    ]:
        with pytest.raises(C.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            C.load(overrides=[override])
    assert C.load(overrides=["data.limit=null"]).data.limit is None


@pytest.mark.parametrize(
    "override", ["train.weight_decay=inf", "train.lr=inf", "train.warmup_epochs=nan"]
)
def test_non_finite_numbers_are_refused_by_the_config(override):
    """inf passes a `>= 0` test: refused at load, naming the key, not at the first step."""
    key, value = override.split("=")
    with pytest.raises(C.ConfigError, match=rf"config key '{key}': must be a finite number"):
        C.load(overrides=[override])


def test_retired_profile_keys(tmp_path):
    # a checkpoint of an earlier version still loads; a config file is told the new keys
    stored = C.to_dict(C.load())
    stored["eval"]["profile_modes"] = ["fp32", "amp"]
    assert C.from_dict(stored) == C.load()
    path = tmp_path / "old.yaml"
    path.write_text("eval:\n  profile_paths: [pairwise, fused]\n")
    with pytest.raises(
        C.ConfigError, match="'eval.profile_paths' was replaced by eval.profile_fusion"
    ):
        C.load(path)
