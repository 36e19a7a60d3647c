"""``engram-lab``: one subcommand per stage. Each stage registers its own subcommands (a thin shell over a function
that tests call directly) and imports its heavy dependencies only when a command runs."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module defines ``register(subparsers)``, adding parsers whose ``func(args) -> int`` runs the command.
STAGES = ("experiments.cli", "sweeps.cli", "eval.cli", "eval.probe_cli", "analysis.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engram-lab", description="Conditional memory (Engram) against MoE: train, sweep, evaluate, probe, analyse.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in STAGES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from engram.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        print(f"engram-lab {args.command}: invalid config: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
