"""Sample-quality points put where people look: `bfn eval --quality` (measure, print, log to the model's
run), the MLflow metrics and table, and the quality-versus-NFE picture that sampler sweeps reuse.

Metric names: quality_<metric>_<sampler>_<steps> for unconditional points; class-conditional points
add their guidance, quality_<metric>_<sampler>_<steps>_w<w>[_<space>] (the space only where w != 0),
so one run can hold a guidance curve beside its unconditional one.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pipelines.errors import PipelineError
from pipelines.sample_quality import SamplerPoint, guidance_parts


def quality_metric_name(metric: str, point: SamplerPoint) -> str:
    """The MLflow metric of one of a point's metrics (module docstring)."""
    return "_".join([f"quality_{metric}_{point.sampler}_{point.steps}", *guidance_parts(point.guidance, point.guidance_space)])


def save_quality_plot(points: Sequence[SamplerPoint], path: str | Path, title: str = "sample quality versus NFE") -> Path:
    """Headline quality against NFE, one line per sampler (and guidance setting), log NFE axis."""
    from pipelines.pictures import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label in dict.fromkeys(p.label for p in points):
        mine = sorted((p for p in points if p.label == label), key=lambda p: p.nfe)
        ax.plot([p.nfe for p in mine], [p.quality for p in mine], marker="o", label=label)
    if points:
        ax.set_ylabel(f"{points[0].headline} ({'lower' if points[0].mode == 'min' else 'higher'} is better)")
    ax.set_xscale("log")
    ax.set_xlabel("network evaluations (NFE)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def point_row(p: SamplerPoint) -> dict:
    """One point as a table row: its setting, NFE, time and every metric."""
    guided = {} if p.guidance is None else {"guidance": p.guidance, "guidance_space": p.guidance_space}
    return {"sampler": p.sampler, "grid": p.grid or "default", "steps": p.steps, **guided, "nfe": p.nfe,
            "seconds_per_sample": p.seconds_per_sample, **p.metrics}


def log_quality(run_id: str, points: Sequence[SamplerPoint]) -> list[str]:
    """Every point's metrics (module docstring names them), the table as quality.json and an MLflow table
    (quality_table.json), and the quality-versus-NFE picture."""
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    now = int(time.time() * 1000)
    metrics = [Metric(quality_metric_name(k, p), v, now, p.nfe)
               for p in points for k, v in {**p.metrics, "seconds_per_sample": p.seconds_per_sample}.items()
               if np.isfinite(v)]
    for i in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[i: i + 500])
    rows = [point_row(p) for p in points]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    client.log_table(run_id, data={k: [r.get(k) for r in rows] for k in columns}, artifact_file="eval/quality_table.json")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "quality.json").write_text(json.dumps([p.to_dict() for p in points], indent=2))
        save_quality_plot(points, tmp / "quality.png")
        for name in ("quality.json", "quality.png"):
            client.log_artifact(run_id, str(tmp / name), "eval")
    return ["eval/quality.json", "eval/quality.png", "eval/quality_table.json"]


def evaluate_quality(ref: str, *, samplers: Sequence[str], steps: Sequence[int], n: int = 256, batch_size: int = 256,
                     seed: int = 0, device: str = "auto", precision: str = "auto", dataset: str | None = None,
                     classes=None, guidance: Sequence[float] | None = None, guidance_spaces: Sequence[str] = ("output",),
                     log: bool = True, on_point: Callable[[SamplerPoint], None] | None = None
                     ) -> tuple[list[SamplerPoint], str | None, list[str]]:
    """`bfn eval --quality`: the quality curve of a model over samplers x step counts (x guidance weights x
    spaces when classes are given), logged to its run when known. Returns (points, run id, artifacts)."""
    from pipelines.evaluation import check_precision, resolve_device
    from pipelines.sample_quality import guidance_weights, model_dataset, point_grid, quality_curve
    from pipelines.sampling import check_guidance_choice, check_sampler_choice, conditioning, resolve_model

    for name in samplers:
        check_sampler_choice(name, None, "sample")
    if not steps or any(s < 1 for s in steps) or n < 1:
        raise PipelineError(f"--steps must be step counts >= 1 and --n-samples >= 1, got steps {list(steps)}, n {n}")
    if guidance is not None and classes is None:
        raise PipelineError("--guidance needs --class: guidance steers samples towards classes (e.g. --class all)")
    weights = guidance_weights(classes, guidance)
    for w in weights or []:
        for space in guidance_spaces:
            check_guidance_choice(classes, w, space)
    check_precision(precision)
    dev = resolve_device(device)
    loaded, name = resolve_model(ref)
    if classes is not None:
        conditioning(loaded, 1, classes=classes, model=name)  # a class the model lacks fails before any sampling
    dataset = dataset or model_dataset(loaded.config)
    grid = point_grid(samplers, steps, guidance=weights, spaces=guidance_spaces)
    points = quality_curve(loaded, grid, n=n, batch_size=batch_size, seed=seed, device=dev, precision=precision,
                           dataset=dataset, classes=classes, on_point=on_point)
    artifacts = log_quality(loaded.run_id, points) if log and loaded.run_id else []
    return points, loaded.run_id, artifacts


def format_points(points: Sequence[SamplerPoint]) -> str:
    """The quality table as text: one row per point, class accuracy beside the quality when measured."""
    if not points:
        return "(no points)"
    head = points[0]
    guided = head.guidance is not None
    lines = [f"{'sampler':<8} {'steps':>6} {'NFE':>5} " + (f"{'w':>5} {'space':<7}" if guided else "")
             + f"{head.headline + (' (min)' if head.mode == 'min' else ' (max)'):>22} "
             + (f"{'class acc':>9} " if guided else "") + f"{'ms/sample':>10}"]
    for p in points:
        lines.append(f"{p.sampler:<8} {p.steps:>6} {p.nfe:>5} "
                     + (f"{p.guidance:>5g} {p.guidance_space if p.guidance else '-':<7}" if guided else "")
                     + f"{p.quality:>22.4g} " + (f"{p.metrics.get('class_accuracy', float('nan')):>9.3f} " if guided else "")
                     + f"{p.seconds_per_sample * 1e3:>10.2f}")
    return "\n".join(lines)
