"""What types alone cannot check: each field's range or choices, the rules that tie fields
together, and the refusal of credentials in ``basis.storage_options``."""

from __future__ import annotations

import re
from dataclasses import fields
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from omegaconf import DictConfig

from se3t.choices import QM9_TARGETS, DataFormat
from se3t.config.schema import Config, ConfigError, DataConfig, Rule
from se3t.errors import InputError
from se3t.location import Location

__all__ = [
    "PATH_KEYS",
    "data_format",
    "key_choice_problem",
    "secret_storage_problem",
    "validate",
]

# option names that carry credentials (s3fs, botocore, fsspec): refused in basis.storage_options
_SECRET_OPTIONS = (
    "key",
    "secret",
    "token",
    "password",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "access_key",
    "secret_key",
)


def _secret_storage_option(options: Any, prefix: str = "") -> str | None:
    """The dotted name of the first option in ``options`` that holds a credential, else None."""
    for k, v in dict(options or {}).items():
        if str(k).lower() in _SECRET_OPTIONS:
            return f"{prefix}{k}"
        if isinstance(v, dict | DictConfig):
            found = _secret_storage_option(v, f"{prefix}{k}.")
            if found:
                return found
    return None


def secret_storage_problem(options: Any) -> str | None:
    """The one-line refusal of ``basis.storage_options`` holding a credential, else None (the
    config check and the object-store client raise it; the value is never quoted)."""
    secret = _secret_storage_option(options)
    if secret is None:
        return None
    return (
        f"config key 'basis.storage_options.{secret}': credentials are never taken from the "
        "config (it is saved beside every output); set AWS_ACCESS_KEY_ID / "
        "AWS_SECRET_ACCESS_KEY or AWS_PROFILE instead"
    )


def validate(cfg: Config | DictConfig) -> None:
    """Check what types alone cannot: each field's own rule (its choices, sign or range), then
    the rules that tie fields together (splits, distinct targets, QM9 target names, channels
    per head). Users' target names are checked against their input by the data stage."""
    for key, kind, rule in _field_rules():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if rule is not None:
            problem = rule.problem(value)
        elif get_origin(kind) is list:  # a list of choices: each element is one
            problems = (_choice_problem(get_args(kind)[0], v) for v in value)
            problem = next((p for p in problems if p), None)
        else:
            problem = _choice_problem(kind, value)
        if problem:
            raise ConfigError(f"config key {key!r}: {problem}")
    if cfg.data.test_fraction + cfg.data.train_fraction >= 1.0:
        raise ConfigError(
            "config keys 'data.train_fraction' + 'data.test_fraction' must leave a validation "
            f"split, got {cfg.data.train_fraction} + {cfg.data.test_fraction}"
        )
    if not cfg.data.targets:
        raise ConfigError("config key 'data.targets': give at least one target")
    if len(set(cfg.data.targets)) != len(cfg.data.targets):
        raise ConfigError(f"config key 'data.targets': {list(cfg.data.targets)} has duplicates")
    # QM9 has its 12 properties; users' datasets name their own (checked against the input)
    for target in cfg.data.targets if data_format(cfg.data) == DataFormat.QM9 else ():
        if target not in QM9_TARGETS:
            raise ConfigError(
                f"config key 'data.targets': {target!r} is not a QM9 target; "
                f"choose from {list(QM9_TARGETS)}"
            )
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        try:
            if value is not None:
                Location.parse(value)
        except InputError as err:
            raise ConfigError(f"config key {key!r}: {err}") from None
    if problem := secret_storage_problem(cfg.basis.storage_options):
        raise ConfigError(problem)
    if cfg.model.channels % cfg.model.channels_div:
        raise ConfigError(
            f"config key 'model.channels_div': {cfg.model.channels_div} does not divide "
            f"model.channels={cfg.model.channels}"
        )
    if (cfg.model.channels // cfg.model.channels_div) % cfg.model.heads:
        raise ConfigError(
            f"config key 'model.heads': {cfg.model.heads} does not divide "
            f"model.channels / model.channels_div = {cfg.model.channels // cfg.model.channels_div}"
        )


# the settings that name a folder or a URL: checked here, read through Location.from_config
PATH_KEYS = ("data.path", "basis.cache", "basis.local_cache", "basis.manifest")


@cache
def _field_rules() -> tuple[tuple[str, Any, Rule | None], ...]:
    """``(dotted key, type, rule)`` of every field that has a rule or an enum type."""
    out = []
    for section in fields(Config):
        cls = get_type_hints(Config)[section.name]
        hints = get_type_hints(cls)
        for f in fields(cls):
            kind = hints[f.name]
            element = get_args(kind)[0] if get_origin(kind) is list else None
            if "rule" in f.metadata or _is_choice(kind) or _is_choice(element):
                out.append((f"{section.name}.{f.name}", kind, f.metadata.get("rule")))
    return tuple(out)


def _is_choice(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, Enum)


def _choice_problem(kind: type[Enum], value: Any) -> str | None:
    values = [m.value for m in kind]
    return None if value in values else f"{value!r} is not one of {values}"


def data_format(data: DataConfig | DictConfig) -> DataFormat:
    """``data.format``, with ``auto`` resolved from ``data.source``: qm9pack, figshare or a QM9
    folder/tar -> qm9; ``.extxyz``/``.xyz`` -> extxyz; ``.sdf``/``.sd`` -> sdf; ``.csv`` ->
    smiles; a folder with ``data.properties`` -> xyz_dir."""
    if data.format != DataFormat.AUTO:
        return DataFormat(data.format)
    source = str(data.source)
    suffix = Path(source).suffix.lower()
    if source in ("qm9pack", "figshare"):
        return DataFormat.QM9
    if suffix in (".extxyz", ".xyz"):
        return DataFormat.EXTXYZ
    if suffix in (".sdf", ".sd"):
        return DataFormat.SDF
    if suffix == ".csv":
        return DataFormat.SMILES
    return DataFormat.XYZ_DIR if data.properties else DataFormat.QM9


def key_choice_problem(key: str, value: Any) -> str | None:
    """What is wrong with ``value`` for the enum-typed field ``key`` (a list's element as
    ``key[i]``), in the YAML values' words; None for a field of another type."""
    kind = {k: t for k, t, _ in _field_rules()}.get(re.sub(r"\[\d+\]$", "", key))
    if get_origin(kind) is list:
        (kind,) = get_args(kind)
    return _choice_problem(kind, value) if _is_choice(kind) else None
