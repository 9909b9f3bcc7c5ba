"""Shared terminal output: one rich console, and progress bars that stay quiet when not on a terminal.

Off a terminal (a pipe, a file, a CI log) nothing wraps: lines keep their full width, so ids and
paths can be copied or parsed whole.
"""
from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

PIPE_WIDTH = 250  # tables off a terminal are sized to their content up to this


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    on_terminal = stream.isatty()
    return Console(stderr=stderr, width=None if on_terminal else PIPE_WIDTH, soft_wrap=not on_terminal)


console = _console()
err_console = _console(stderr=True)  # for notes beside output that scripts parse (e.g. a job id)


def progress_bar(on: Console | None = None) -> Progress:
    on = on or console
    return Progress(
        TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=on, disable=not on.is_terminal,
    )
