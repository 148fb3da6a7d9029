"""Checkpoints saved before ``model.radial_sharing`` / ``model.self_interaction`` existed keep
the function they were trained with (radial sharing per fusion group, self-interaction per
node), not today's default (NVIDIA's)."""

from se3t.config import Config, to_dict
from se3t.models import build
from se3t.train.checkpoint import checkpoint_config


def test_old_checkpoint_config_keeps_former_function():
    stored = to_dict(Config())
    for key in ("radial_sharing", "self_interaction"):
        del stored["model"][key]
    cfg = checkpoint_config({"config": stored}, "old.pt")
    assert (cfg.model.radial_sharing, cfg.model.self_interaction) == ("fusion", "node")
    assert sum(p.numel() for p in build(cfg.model).parameters()) == 9_275_425


def test_new_checkpoint_config_unchanged():
    stored = to_dict(Config())
    cfg = checkpoint_config({"config": stored}, "new.pt")
    assert (cfg.model.radial_sharing, cfg.model.self_interaction) == ("nvidia_full", "edge")
