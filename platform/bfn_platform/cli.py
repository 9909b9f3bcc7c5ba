"""The `bfn` command line: one entry point, one module per command group under commands/."""
from __future__ import annotations

import argparse
import importlib
import sys

from bfn_platform.errors import BfnError

# Each module exposes register(subparsers); its parsers set `func` to a handler taking args.
# Modules are imported lazily so `bfn --help` does not pay for Ray or MLflow.
COMMAND_MODULES = ["quickstart", "data", "check", "train", "eval", "sample", "sweep", "submit", "jobs", "runs", "models", "stack", "ui", "completion"]

EPILOG = """examples:
  bfn quickstart                         shard digits, train on Ray, evaluate, sample: all in ./.bfn
  bfn train configs/digits_discretised.yaml --set training.steps=500
  bfn eval RUN_ID --steps 10,100,inf
  bfn sample models:/digits@champion --n 64 --steps 100 --out samples
  bfn data shard digits --split train --out .bfn/data/digits
  bfn data inspect .bfn/data/digits/train/manifest.json
"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bfn-platform")
    except PackageNotFoundError:  # run from a checkout without installing
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bfn",
        description="Train, evaluate, sweep and ship Bayesian Flow Networks.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"bfn {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"bfn_platform.commands.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from bfn_platform.commands.common import json_stdout

    try:
        with json_stdout(getattr(args, "json", False)):
            result = args.func(args)
    except BfnError as err:  # the one boundary where a user's mistake becomes one line
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # unexpected: still one line unless --debug
        if args.debug:
            raise
        print(f"error: {type(err).__name__}: {err} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
