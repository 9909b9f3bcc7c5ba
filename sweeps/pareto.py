"""Pareto fronts of sweep results: which points no other point beats on every objective at once.

Serves both kinds of sweep: a multi-objective training sweep (e.g. validation bits at n = 10 and at
continuous time) and a sampler sweep (NFE against sample quality, NFE against wall time). Optuna's
own `study.best_trials` gives the front of a study, but a sampler sweep has no study and the table
rows carry the statuses that decide who may be on the front, so the front is computed here from the
table, the same way for both.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from pipelines.pictures import _pyplot, readable_log_ticks, save_figure


def pareto_mask(values: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """True for the rows of `values` (n x k) that no other row dominates; NaN rows are never on the front.

    Row a dominates row b when a is at least as good on every column (direction from `modes`,
    'min' or 'max') and strictly better on one."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[1] != len(modes):
        raise ValueError(f"values must be n x {len(modes)}, got shape {values.shape}")
    signs = np.array([1.0 if m == "min" else -1.0 for m in modes])
    costs = values * signs  # lower is better in every column
    finite = np.isfinite(costs).all(axis=1)
    on_front = finite.copy()
    for i in np.flatnonzero(finite):
        others = costs[finite]
        dominated = (others <= costs[i]).all(axis=1) & (others < costs[i]).any(axis=1)
        on_front[i] = not dominated.any()
    return on_front


def front_table(df: pd.DataFrame, columns: Sequence[str], modes: Sequence[str]) -> pd.DataFrame:
    """The front's rows of `df`, sorted by the first column."""
    mask = pareto_mask(df[list(columns)].to_numpy(dtype=float), modes)
    return df[mask].sort_values(columns[0], ascending=modes[0] == "min", kind="stable").reset_index(drop=True)


def save_pareto_plot(df: pd.DataFrame, x: str, y: str, modes: Sequence[str], path: str | Path, *, title: str,
                     label: str | None = None, log_x: bool = False) -> Path:
    """Every point of `df` in (x, y), the front drawn as a step line, points labelled by `label`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    data = df[np.isfinite(df[[x, y]].to_numpy(dtype=float)).all(axis=1)]
    groups = data.groupby(label) if label else [("points", data)]
    for name, group in groups:
        ax.scatter(group[x], group[y], s=30, label=str(name), alpha=0.8)
    front = front_table(data, [x, y], modes)
    if len(front):
        ax.step(front[x], front[y], where="post", color="k", lw=1.2, label="Pareto front")
        ax.scatter(front[x], front[y], s=80, facecolors="none", edgecolors="k")
    if log_x:
        ax.set_xscale("log")
        readable_log_ticks(ax.xaxis)
    ax.set_xlabel(f"{x} ({'lower' if modes[0] == 'min' else 'higher'} is better)")
    ax.set_ylabel(f"{y} ({'lower' if modes[1] == 'min' else 'higher'} is better)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, Path(path), dpi=120)
    return Path(path)
