"""Structured configuration: the single source of truth for every stage.

Each section is a dataclass; ``load(path, overrides)`` merges a YAML file and ``key=value``
overrides onto the defaults and rejects unknown keys, wrong types and impossible values with a
:class:`ConfigError` that names the key. ``save(cfg, path)`` writes the resolved config, which
every stage puts beside its outputs.

Sections: ``data``, ``basis``, ``model``, ``train``, ``run``, ``launch``, ``eval``, ``workflow``.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from se3t.config.rules import data_format, key_choice_problem, secret_storage_problem, validate
from se3t.config.schema import (
    BasisConfig,
    Config,
    ConfigError,
    DataConfig,
    EvalConfig,
    LaunchConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    WorkflowConfig,
)
from se3t.io import write_text

__all__ = [
    "BasisConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "LaunchConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "WorkflowConfig",
    "data_format",
    "load",
    "save",
    "secret_storage_problem",
    "to_dict",
    "validate",
]


def _structured() -> DictConfig:
    schema = OmegaConf.structured(Config)
    OmegaConf.set_struct(schema, True)
    # free-form mappings take any key; everything else is closed
    for free in (
        schema.launch.extra,
        schema.workflow.runs,
        schema.basis.storage_options,
        schema.data.units,
    ):
        OmegaConf.set_struct(free, False)
    return schema


def _explain(err: OmegaConfBaseException, source: str) -> ConfigError:
    key = getattr(err, "full_key", None) or "?"
    msg = getattr(err, "msg", None) or str(err)
    first = msg.splitlines()[0] if msg else type(err).__name__
    if key in RETIRED:
        return ConfigError(f"{source}: config key {key!r} was replaced by {RETIRED[key]}")
    # OmegaConf lists an enum's Python names; say the YAML values instead
    first = key_choice_problem(str(key), getattr(err, "value", None)) or first
    return ConfigError(f"{source}: config key {key!r}: {first}")


def load(
    path: str | os.PathLike | None = None,
    overrides: list[str] | tuple[str, ...] | dict[str, Any] | None = None,
    *,
    values: dict[str, Any] | None = None,
) -> Config:
    """Merge defaults <- YAML file <- overrides <- values and return a validated :class:`Config`.

    ``overrides`` are ``key=value`` strings in dotted form (``train.lr=1e-3``, values parsed as
    YAML) or a mapping of dotted keys to values; ``values`` is such a mapping applied last (the
    CLI's aliases, set verbatim). Keys that the YAML file has but the schema lacks are errors;
    the top-level keys of a Snakemake config that are not sections are errors too, so typos
    never pass silently.
    """
    merged = _structured()
    if path is not None:
        merged = _merge_file(merged, Path(path))
    if isinstance(overrides, dict):
        merged = _merge_values(merged, overrides)
    elif overrides:
        merged = _merge_dotlist(merged, list(overrides))
    if values:
        merged = _merge_values(merged, values)
    try:
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise _explain(err, "config") from err
    validate(cfg)
    return cfg


def _merge_file(merged: DictConfig, path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        loaded = OmegaConf.load(path)
    except Exception as err:  # yaml errors carry the line; keep them
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from err
    if loaded is None:
        loaded = OmegaConf.create({})
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
    try:
        return OmegaConf.merge(merged, loaded)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise _explain(err, f"config file {str(path)!r}") from err


def _merge_dotlist(merged: DictConfig, dotlist: list[str]) -> DictConfig:
    for item in dotlist:
        if "=" not in item:
            raise ConfigError(
                f"override {item!r} is not of the form key=value (e.g. train.lr=0.001)"
            )
    try:
        return OmegaConf.merge(merged, OmegaConf.from_dotlist(dotlist))  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise _explain(err, "override") from err


def _merge_values(merged: DictConfig, values: dict[str, Any]) -> DictConfig:
    try:
        for key, value in values.items():
            _check_key(merged, str(key))
            merged = OmegaConf.merge(merged, OmegaConf.create(_nest(str(key), value)))  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise _explain(err, "override") from err
    return merged


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def _check_key(node: DictConfig, dotted: str) -> None:
    parts = dotted.split(".")
    cur: Any = node
    for i, part in enumerate(parts):
        if isinstance(cur, DictConfig) and part in cur:
            cur = cur[part]
            continue
        # free-form mappings (launch.extra, workflow.runs) accept any key below them
        if i > 0 and ".".join(parts[:i]) in (
            "launch.extra",
            "workflow.runs",
            "basis.storage_options",
            "data.units",
        ):
            return
        raise ConfigError(f"config key {dotted!r} is unknown ({part!r} is not a key there)")


def to_dict(cfg: Config | DictConfig) -> dict[str, Any]:
    """The config as plain Python containers (JSON- and YAML-ready; choices as their values)."""
    return _plain(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True))


def _plain(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node.value if isinstance(node, Enum) else node


# keys of earlier versions, with what replaced them: a stored config (a checkpoint's) drops them,
# since none changes what a run computes; a config file that has one is told what to write
RETIRED = {
    "eval.profile_modes": "eval.profile_precision and eval.profile_low_memory",
    "eval.profile_paths": "eval.profile_fusion",
}


def from_dict(data: dict[str, Any]) -> Config:
    """Rebuild and validate a config from :func:`to_dict`'s output (e.g. from a checkpoint)."""
    merged = _structured()
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for key in RETIRED:
        section, name = key.split(".")
        if isinstance(data.get(section), dict):
            data[section].pop(name, None)
    try:
        merged = OmegaConf.merge(merged, OmegaConf.create(data))
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        raise _explain(err, "stored config") from err
    validate(cfg)
    return cfg


def save(cfg: Config | DictConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML atomically (temporary file in the same folder, rename)."""
    text = OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg)))
    return write_text(path, text)
