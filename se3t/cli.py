"""The ``se3t`` command line: one subcommand per pipeline stage.

Each stage lives in ``se3t/commands/<stage>.py`` with ``register(subparsers)``, which adds its
parser and sets ``func`` to a function taking the parsed arguments and returning an exit code.
Commands stay short: load the config, call one library function.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import warnings

from se3t.config import ConfigError
from se3t.errors import Se3tError, Terminated

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


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, letting ``KEY=VALUE`` overrides come after options too (``se3t train CFG a=1
    --no-progress b=2``): argparse stops the overrides' list at the first option."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*(args.overrides or []), *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def _quiet_teardown() -> None:
    """Silence finalizers of objects the signal left half-built.

    The signal's exception can land inside any constructor (zarr's asyncio event loop was one:
    its ``__del__`` then failed on a missing attribute and printed a traceback after our one-line
    message). Such objects are garbage of the interrupted work, collected as the exception is
    dropped or at exit; their complaints only bury the message the user needs.
    """
    sys.unraisablehook = lambda unraisable: None
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    # SIGTERM (a scheduler's kill, `kill PID`) unwinds like Ctrl-C, so temporary files and
    # folders are removed and the user is told; training installs its own handler (a clean
    # stop with a checkpoint) for its duration
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, Se3tError) as err:
        print(f"se3t {args.command}: {err}", file=sys.stderr)
        return 2
    except Terminated:
        _quiet_teardown()
        print(
            f"se3t {args.command}: terminated (SIGTERM); unfinished output was removed, run the "
            "same command again to continue",
            file=sys.stderr,
        )
        return 143
    except KeyboardInterrupt:
        _quiet_teardown()
        print(f"se3t {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
