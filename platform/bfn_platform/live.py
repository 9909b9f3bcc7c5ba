"""What a person sees while a long command runs: its own progress, not the services' chatter.

`quiet_output` sends everything written to file descriptors 1 and 2 (Ray's and MLflow's INFO lines,
TrainingReport dumps, worker output, download bars, warnings, child processes) to a log file for
the length of the block, and hands back a console on the real terminal for the command's own lines;
the log's path is printed at the end, and `--verbose` leaves the output alone. Redirecting the file
descriptors rather than Python's loggers catches output from C++ (Ray's raylet messages) and from
child processes as well.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def log_path(command: str) -> Path:
    """$BFN_HOME/logs/<command>-<time>.log"""
    from pipelines.tracking import bfn_home

    folder = bfn_home() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


@contextmanager
def quiet_output(path: Path, verbose: bool = False):
    """Yield a console on the terminal; meanwhile fds 1 and 2 write to `path` (unless verbose)."""
    from bfn_platform.console import console

    if verbose:
        yield console
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = Console(file=os.fdopen(os.dup(saved_out), "w"), width=console.width, soft_wrap=console.soft_wrap,
                       force_terminal=console.is_terminal, no_color=console.no_color)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            terminal.print(f"[dim]log of Ray and MLflow: {path} (--verbose shows it here)[/]", highlight=False)
            terminal.file.close()


class TrainingDisplay:
    """Renders pipelines.progress records: a live bar on a terminal, a line per validation or
    checkpoint elsewhere (a CI log should not fill with redraws)."""

    def __init__(self, console: Console, title: str = "train"):
        self.console = console
        self.live = console.is_terminal
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("{task.fields[info]}"), console=console, disable=not self.live)
        self.task = self.bar.add_task(title, total=None, info="")

    def __enter__(self) -> "TrainingDisplay":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def __call__(self, record: dict[str, Any]) -> None:
        info = describe(record)
        self.bar.update(self.task, completed=record.get("step", 0), total=record.get("total"), info=info)
        if not self.live and record.get("checkpoint_step") == record.get("step"):  # every validation is checkpointed too
            self.console.print(f"step {record.get('step')}/{record.get('total')}  {info}", highlight=False)


def describe(record: dict[str, Any]) -> str:
    """loss and validation in bits/dim, samples/s, ETA, last checkpoint: one line."""
    parts = []
    if "loss_bits" in record:
        parts.append(f"loss {record['loss_bits']:.3f}")
    if "val_bits" in record:
        parts.append(f"val {record['val_bits']:.3f} bits/dim")
    if "samples_per_second" in record:
        parts.append(f"{record['samples_per_second']:.0f} samples/s")
    if "eta_s" in record:
        parts.append(f"ETA {_clock(record['eta_s'])}")
    if "checkpoint_step" in record:
        parts.append(f"checkpoint @{record['checkpoint_step']}")
    return "  ".join(parts)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
