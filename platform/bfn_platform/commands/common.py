"""The argument shapes several commands share, defined once, so each command module holds only what
its command does: the parser with its examples, `--set` (parsed to typed values here, the one place
where override text becomes values), `--json`, and the two kinds of cluster address."""
from __future__ import annotations

import argparse
from contextlib import contextmanager

from bfn_platform.errors import BfnError


def command(sub, name: str, doc: str, *, help: str, epilog: str = "") -> argparse.ArgumentParser:
    """A command whose --help shows its module docstring and its examples as written."""
    return subcommand(sub, name, help=help, epilog=epilog, description=doc)


def _override(item: str) -> tuple[str, object]:
    from pipelines.config import parse_overrides

    try:
        return next(iter(parse_overrides([item]).items()))
    except BfnError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_overrides(p: argparse.ArgumentParser, example: str = "training.steps=100", what: str = "config") -> None:
    """--set KEY=VALUE (repeatable): typed overrides, read by `overrides(args)`."""
    p.add_argument("--set", dest="overrides", action="append", default=[], type=_override, metavar="KEY=VALUE",
                   help=f"override a {what} value, e.g. {example} (repeatable; values are YAML)")


def overrides(args) -> dict[str, object]:
    """The --set values of a command, in order ({dotted path: typed value})."""
    return dict(args.overrides)


def add_json(p: argparse.ArgumentParser, what: str = "the result") -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON")


def add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", "-v", action="store_true",
                   help="show Ray's and MLflow's own output here instead of in the log file")


def add_ray_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")


def add_jobs_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", metavar="URL", help="Ray Jobs API (dashboard) address, e.g. http://HEAD:8265")


def group(sub, name: str, doc: str, *, help: str, epilog: str = ""):
    """A command made of subcommands (`bfn models list|show|...`); returns where to add them."""
    p = command(sub, name, doc, help=help, epilog=epilog)
    subs = p.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")
    subs.required = True
    return subs


def subcommand(subs, name: str, *, help: str, epilog: str | None = None, description: str | None = None):
    """One subcommand of a group, its description and examples shown as written."""
    return subs.add_parser(name, help=help, description=description, epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)


JSON_STDOUT = None  # with --json: the real stdout, kept apart by json_stdout


@contextmanager
def json_stdout(enabled: bool):
    """With --json, stdout carries exactly one JSON document: for the command's length the process's
    stdout (file descriptor 1, so Ray's, MLflow's and any child process's output too) goes to stderr,
    and print_json writes to a copy of the real stdout. Where stdout is not file descriptor 1 (a
    caller capturing it in-process) nothing is moved and print_json writes to sys.stdout."""
    import os
    import sys

    global JSON_STDOUT
    try:
        real = enabled and sys.stdout.fileno() == 1
    except (AttributeError, OSError, ValueError):  # a capture object without a file descriptor
        real = False
    if not real:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    JSON_STDOUT = os.fdopen(os.dup(saved), "w")
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        JSON_STDOUT.close()
        JSON_STDOUT = None


def print_json(value) -> None:
    """The --json result: one JSON document on stdout. Ray is released first where the command
    connected to it, so its log thread has stopped."""
    import json
    import sys

    if "pipelines.ray_runtime" in sys.modules:
        sys.modules["pipelines.ray_runtime"].release_ray()
    out = JSON_STDOUT or sys.stdout
    out.write(json.dumps(value) + "\n")
    out.flush()
