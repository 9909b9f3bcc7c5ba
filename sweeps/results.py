"""What a finished sweep leaves behind: the results table, the best config, and pictures."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pipelines.pictures import readable_log_ticks, save_figure
from pipelines.names import STEP
from sweeps.spec import LOSS_STEPS, SweepSpec, is_log_scale, step_count_value, trial_config
from sweeps.trial import OBJECTIVE

STATUS_COLOURS = {"completed": "tab:blue", "stopped_early": "tab:orange", "failed": "tab:red", "running": "tab:gray"}


def trial_status(error: Any, last_step: float | None, max_steps: int) -> str:
    if error is not None:
        return "failed"
    return "completed" if (last_step or 0) >= max_steps else "stopped_early"


def results_table(rows: list[dict[str, Any]], spec: SweepSpec) -> pd.DataFrame:
    """One row per trial: id, status, MLflow run, sampled values, objective (the first one's value and
    name), steps trained, the other objectives' values; best (on the first objective) first."""
    columns = ["trial_id", "status", "run_id", *[f"param.{k}" for k in spec.space], "objective", "metric", "steps",
               *[g.metric for g in spec.goals[1:]]]
    df = pd.DataFrame(rows, columns=columns)
    ascending = spec.goals[0].mode == "min"
    return df.sort_values("objective", ascending=ascending, na_position="last", kind="stable").reset_index(drop=True)


def best_row(df: pd.DataFrame) -> pd.Series | None:
    """The best completed trial (a trial stopped early only if none completed)."""
    scored = df[df["objective"].notna()]
    done = scored[scored["status"] == "completed"]
    pool = done if len(done) else scored
    return pool.iloc[0] if len(pool) else None  # the table is sorted best first


def sampled_values(row: pd.Series, spec: SweepSpec) -> dict[str, Any]:
    out = {}
    for key in spec.space:
        value = row[f"param.{key}"]
        out[key] = None if value is None or (isinstance(value, float) and math.isnan(value)) else _plain(value)
    return out


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def write_best_config(base, row: pd.Series, spec: SweepSpec, sweep_name: str, path: Path) -> Path:
    """The best trial's full experiment config, ready for `bfn train`."""
    sampled = sampled_values(row, spec)
    cfg = trial_config(base, sampled, spec.source)
    tracking = cfg.tracking.model_copy(update={"run_name": f"{sweep_name}-best"})
    cfg = cfg.model_copy(update={"tracking": tracking})
    header = (f"# Best trial {row['trial_id']} of sweep {sweep_name} ({spec.source}):\n"
              f"# {row['metric']} = {row['objective']:.5g} after {int(row['steps'])} steps; sampled {sampled}\n"
              f"# Train it: bfn train {path}\n")
    path.write_text(header + yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path


def save_table(df: pd.DataFrame, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    df.to_csv(folder / "results.csv", index=False)
    df.astype({c: str for c in df.columns if c.startswith("param.")}).to_parquet(folder / "results.parquet", index=False)
    return [folder / "results.csv", folder / "results.parquet"]


def metric_label(metric: str) -> str:
    """val_bits_n25 -> 'validation bound at n = 25 (bits / dim)'; others as they are."""
    import re

    found = re.match(r"^(val|test)_(bits|nats)_(inf|n(\d+))$", metric)
    if not found:
        return metric
    where = "continuous time" if found[3] == "inf" else f"n = {found[4]}"
    unit = "bits / dim" if found[2] == "bits" else "nats per example"
    return f"{'validation' if found[1] == 'val' else 'test'} bound at {where} ({unit})"


def save_plots(df: pd.DataFrame, spec: SweepSpec, folder: Path, histories: dict[str, pd.DataFrame]) -> list[Path]:
    """objective_vs_<param>.png per searched value, objective_vs_steps.png, objective_curves.png (ASHA at work)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    metric = spec.goals[0].metric
    for key in spec.space:
        if key == LOSS_STEPS:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for status, group in df.groupby("status"):
            ax.scatter(group[f"param.{key}"].astype(float), group["objective"], label=status.replace("_", " "),
                       color=STATUS_COLOURS.get(status, "k"), s=28)
        if is_log_scale(spec, key):
            ax.set_xscale("log")
            readable_log_ticks(ax.xaxis)
        ax.set_xlabel(key + (" (log scale)" if is_log_scale(spec, key) else ""))
        ax.set_ylabel(metric_label(metric))
        ax.set_title(f"{spec.name}: {metric} against {key}", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(folder / f"objective_vs_{key.replace('.', '_')}.png")
        save_figure(fig, paths[-1], dpi=120)
    step_keys = [k for k in (LOSS_STEPS,) if k in spec.space]
    if step_keys:
        fig, axes = plt.subplots(1, len(step_keys), figsize=(4.5 * len(step_keys), 3.6), squeeze=False)
        for ax, key in zip(axes[0], step_keys):
            choices = sorted({step_count_value(v) for v in spec.space[key].choice})
            labels = ["inf" if math.isinf(c) else str(int(c)) for c in choices]
            for status, group in df.groupby("status"):
                xs = [choices.index(step_count_value(None if _missing(v) else v)) for v in group[f"param.{key}"]]
                ax.scatter(xs, group["objective"], label=status.replace("_", " "), color=STATUS_COLOURS.get(status, "k"), s=28)
            ax.set_xticks(range(len(choices)), labels)
            ax.set_xlabel(f"{key} (inf = continuous time)")
            ax.set_ylabel(metric_label(metric))
            ax.legend(fontsize=7)
        fig.suptitle(f"{spec.name}: {metric} against step counts", fontsize=9)
        fig.tight_layout()
        paths.append(folder / "objective_vs_steps.png")
        save_figure(fig, paths[-1], dpi=120)
    if histories:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        status_of = dict(zip(df["trial_id"], df["status"]))
        for trial_id, hist in histories.items():
            if OBJECTIVE in hist and STEP in hist:
                ax.plot(hist[STEP], hist[OBJECTIVE], marker="o", ms=3, lw=1, label=trial_id,
                        color=STATUS_COLOURS.get(status_of.get(trial_id), "k"))
        ax.set_xlabel("training step")
        ax.set_ylabel(metric_label(metric))
        if len(histories) <= 12:
            ax.legend(fontsize=6, ncol=2, title="trial", title_fontsize=7)
        ax.set_title(f"{spec.name}: every trial (orange: stopped early by ASHA)", fontsize=9)
        fig.tight_layout()
        paths.append(folder / "objective_curves.png")
        save_figure(fig, paths[-1], dpi=120)
    return paths


def save_pareto(df: pd.DataFrame, spec: SweepSpec, folder: Path) -> tuple[pd.DataFrame, list[Path]]:
    """A multi-objective sweep's front among its completed trials: pareto_front.csv and a picture of the
    first two objectives (every trial, the front drawn through them)."""
    from sweeps.pareto import front_table, save_pareto_plot

    names = [g.metric for g in spec.goals]
    modes = [g.mode for g in spec.goals]
    done = df[df["status"] == "completed"].rename(columns={"objective": names[0]})
    front = front_table(done, names, modes)
    front.to_csv(folder / "pareto_front.csv", index=False)
    picture = save_pareto_plot(done, names[0], names[1], modes[:2], folder / "pareto_front.png",
                               title=f"{spec.name}: completed trials and their Pareto front")
    return front, [folder / "pareto_front.csv", picture]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
