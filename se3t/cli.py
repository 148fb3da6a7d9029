"""The ``se3t`` command line: one subcommand per pipeline stage.

Each stage lives in ``se3t/commands/<stage>.py`` with ``register(subparsers)``, which adds its
parser and sets ``func`` to a function taking the parsed arguments and returning an exit code.
Commands stay short: load the config, call one library function.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from se3t.config import ConfigError
from se3t.errors import Se3tError

# stage modules in the order `se3t --help` lists them
_COMMANDS = ("data", "basis", "train", "launch", "evaluate", "profile", "predict", "report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="se3t",
        description=(
            "Train SE(3)-Transformers on QM9: fetch and build the dataset, precompute the "
            "equivariant bases into a shared cache, train (locally or on SLURM), evaluate, "
            "profile and report. Every subcommand has its own --help."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"se3t.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"se3t.commands.{name}":
                continue  # stage not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, Se3tError) as err:
        print(f"se3t {args.command}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"se3t {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
