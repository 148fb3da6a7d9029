"""How every command takes the config: ``--config FILE`` then ``KEY=VALUE`` overrides.

A command's few convenience flags are aliases of config keys (``--limit N`` is
``data.limit=N``), declared with :class:`Alias` so that ``--help`` says which key each one sets.
An alias wins over the overrides, which win over the file, which wins over the defaults. The
value of an alias is set as it is typed, without YAML parsing, so a path stays verbatim.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from se3t import config as C

__all__ = ["Alias", "add_command", "add_config_arguments", "load_config"]


@dataclass(frozen=True)
class Alias:
    """A flag that sets one config key: ``Alias("--limit", "data.limit", type=int)``."""

    flag: str
    key: str
    type: Any = str
    help: str = ""
    metavar: str | None = None
    action: str | None = None  # "store_true" for a boolean key

    @property
    def dest(self) -> str:
        return "alias_" + self.key.replace(".", "__")


def add_command(
    subparsers, name: str, summary: str, details: str, *, raw: bool = False
) -> argparse.ArgumentParser:
    """The subcommand ``name``: ``summary`` in the command list, ``details`` in its ``--help``
    (laid out as written where ``raw``)."""
    layout = {"formatter_class": argparse.RawDescriptionHelpFormatter} if raw else {}
    return subparsers.add_parser(name, help=summary, description=details, **layout)


def add_config_arguments(
    parser: argparse.ArgumentParser, *, example: str, aliases: tuple[Alias, ...] = ()
) -> None:
    """Add ``--config``, the ``KEY=VALUE`` overrides and the command's aliases to ``parser``."""
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=None,
        help="config YAML (default: the built-in defaults), or a run folder: its config.yaml, "
        "with run.dir set to that folder (how a run is resumed)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help=f"config overrides applied on top of --config, e.g. {example}",
    )
    for alias in aliases:
        if alias.action:
            extra, value = {"action": alias.action}, "true"
        else:
            value = alias.metavar or alias.flag.lstrip("-").upper().replace("-", "_")
            extra = {"type": alias.type, "metavar": value}
        parser.add_argument(
            alias.flag,
            dest=alias.dest,
            default=None,
            help=f"{alias.help + '; ' if alias.help else ''}alias of {alias.key}={value}",
            **extra,
        )
    parser.set_defaults(config_aliases=aliases)


def load_config(args: argparse.Namespace) -> C.Config:
    """The config the parsed ``args`` describe (file <- overrides <- aliases), validated."""
    overrides = list(args.overrides)
    target = args.config
    values: dict[str, Any] = {}
    if target is not None and Path(target).is_dir():
        cfg_file = Path(target) / "config.yaml"
        if not cfg_file.is_file():
            raise C.ConfigError(f"run folder {target!r} holds no config.yaml")
        values["run.dir"] = str(target)
        target = cfg_file
    for alias in getattr(args, "config_aliases", ()):
        value = getattr(args, alias.dest)
        if value is not None:
            values[alias.key] = value
    return C.load(target, overrides, values=values)
