"""Sample quality of a trained model per sampler and step count: the measurement that `bfn eval
--quality`, sampler sweeps and bench/samplers.py share.

`measure_sampler` draws n samples with one sampler at one step count and scores them with the data
set's quality metrics (pipelines.quality), timing the draws; the network evaluations (NFE) are
counted by a hook on the network, not inferred from the step count. `quality_curve` runs it over
samplers x step counts; `log_quality` puts the points into the model's MLflow run as metrics
(quality_<metric>_<sampler>_<steps>), one table (quality.json) and a quality-versus-NFE picture.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from pipelines.errors import PipelineError
from pipelines.model_store import LoadedModel


@dataclass
class SamplerPoint:
    """One sampler at one step count: its quality metrics, NFE and wall time per sample."""

    sampler: str
    grid: str | None  # a TIME_GRIDS name; None: the sampler's own
    steps: int
    nfe: int  # network evaluations per sample batch, counted
    metrics: dict[str, float]
    headline: str  # the data set's headline metric (a key of metrics)
    mode: str  # "min" or "max": which way the headline is better
    seconds_per_sample: float
    n_samples: int

    @property
    def quality(self) -> float:
        return self.metrics[self.headline]

    def to_dict(self) -> dict:
        return asdict(self)


def model_dataset(config: dict) -> str:
    """The data set a model was trained on, from its training manifest (the name its quality metrics know)."""
    from pipelines.data.manifest import load_manifest
    from pipelines.prepare import expand_env

    url = config.get("data", {}).get("train")
    try:
        return load_manifest(expand_env(url)).dataset
    except Exception as err:
        raise PipelineError(f"cannot tell which data set the model was trained on (its manifest {url} does not load: "
                            f"{str(err).splitlines()[0][:120]}); pass --dataset NAME") from None


def sample_levels(config: dict) -> int | None:
    """K of the samples as the sampler returns them (None: continuous values in [-1, 1])."""
    data = config["data"]
    return None if data["kind"] == "continuous" else data.get("num_classes")


class _CountCalls:
    """Counts forward calls of a module (the network): the NFE of a sampling run."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self._handle = module.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.calls += 1

    def remove(self) -> None:
        self._handle.remove()


def draw(loaded: LoadedModel, *, n: int, steps: int, sampler: str = "bfn", grid: str | None = None,
         final: str = "sample", batch_size: int = 256, seed: int = 0, device: torch.device | str = "cpu",
         precision: str = "auto", on_batch: Callable[[int], None] | None = None,
         conditioning=None) -> tuple[np.ndarray, int, float]:
    """n samples in batches on `device` (network in `precision`, compiled as the model's config says),
    conditioned by a pipelines.sampling.Conditioning of the n samples (labels, guidance, inpainting);
    returns (samples, NFE per batch, seconds)."""
    from pipelines.acceleration import Acceleration, configure_backends

    device = torch.device(device)
    accel = Acceleration.resolve(device, precision, loaded.config.get("training", {}).get("compile", "auto"))
    configure_backends(device)
    bfn = accel.prepare(loaded.bfn.eval())
    g = torch.Generator(device=device).manual_seed(seed)
    counter = _CountCalls(bfn.net)
    chunks, done, nfe = [], 0, 0
    start = time.perf_counter()
    try:
        with accel.autocast():
            while done < n:
                b = min(batch_size, n - done)
                counter.calls = 0
                extra = conditioning.batch(done, done + b) if conditioning is not None else {}
                extra = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in extra.items()}
                out = bfn.sample((b, *loaded.data_shape), steps, generator=g, sampler=sampler, grid=grid, final=final,
                                 **extra)
                chunks.append(out.cpu().numpy())
                nfe, done = counter.calls, done + b
                if on_batch:
                    on_batch(b)
    finally:
        counter.remove()
    return np.concatenate(chunks), nfe, time.perf_counter() - start


def measure_sampler(loaded: LoadedModel, *, sampler: str, steps: int, grid: str | None = None, n: int = 256,
                    batch_size: int = 256, seed: int = 0, device: torch.device | str = "cpu", precision: str = "auto",
                    dataset: str | None = None, final: str = "sample") -> SamplerPoint:
    """Quality metrics of n samples from `sampler` at `steps` steps, with NFE and seconds per sample."""
    from pipelines.quality.metrics import headline, quality_metrics

    dataset = dataset or model_dataset(loaded.config)
    metric = headline(dataset)
    samples, nfe, seconds = draw(loaded, n=n, steps=steps, sampler=sampler, grid=grid, final=final,
                                 batch_size=batch_size, seed=seed, device=device, precision=precision)
    metrics = quality_metrics(dataset, samples, levels=sample_levels(loaded.config), seed=seed)
    return SamplerPoint(sampler, grid, steps, nfe, {k: float(v) for k, v in metrics.items()}, metric.name, metric.mode,
                        seconds / n, n)


def quality_curve(loaded: LoadedModel, samplers: Sequence[str], steps: Sequence[int], *, grid: str | None = None,
                  on_point: Callable[[SamplerPoint], None] | None = None, **options) -> list[SamplerPoint]:
    """measure_sampler for every sampler x step count (the same seed for each: the same prior noise)."""
    points = []
    for sampler in samplers:
        for n_steps in steps:
            points.append(measure_sampler(loaded, sampler=sampler, steps=n_steps, grid=grid, **options))
            if on_point:
                on_point(points[-1])
    return points


def quality_metric_name(metric: str, sampler: str, steps: int) -> str:
    return f"quality_{metric}_{sampler}_{steps}"


def save_quality_plot(points: Sequence[SamplerPoint], path: str | Path, title: str = "sample quality versus NFE") -> Path:
    """Headline quality against NFE, one line per sampler (log NFE axis)."""
    from pipelines.pictures import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for sampler in dict.fromkeys(p.sampler for p in points):
        mine = sorted((p for p in points if p.sampler == sampler), key=lambda p: p.nfe)
        ax.plot([p.nfe for p in mine], [p.quality for p in mine], marker="o", label=sampler)
    if points:
        ax.set_ylabel(f"{points[0].headline} ({'lower' if points[0].mode == 'min' else 'higher'} is better)")
    ax.set_xscale("log")
    ax.set_xlabel("network evaluations (NFE)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def log_quality(run_id: str, points: Sequence[SamplerPoint]) -> list[str]:
    """Metrics quality_<metric>_<sampler>_<steps> for every point and metric, the table as quality.json
    and an MLflow table (quality_table.json), and the quality-versus-NFE picture."""
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    now = int(time.time() * 1000)
    metrics = [Metric(quality_metric_name(k, p.sampler, p.steps), v, now, p.nfe)
               for p in points for k, v in p.metrics.items() if np.isfinite(v)]
    metrics += [Metric(quality_metric_name("seconds_per_sample", p.sampler, p.steps), p.seconds_per_sample, now, p.nfe)
                for p in points]
    for i in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[i: i + 500])
    rows = [{"sampler": p.sampler, "grid": p.grid or "default", "steps": p.steps, "nfe": p.nfe,
             "seconds_per_sample": p.seconds_per_sample, **p.metrics} for p in points]
    client.log_table(run_id, data={k: [r.get(k) for r in rows] for k in rows[0]}, artifact_file="eval/quality_table.json")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "quality.json").write_text(json.dumps([p.to_dict() for p in points], indent=2))
        save_quality_plot(points, tmp / "quality.png")
        for name in ("quality.json", "quality.png"):
            client.log_artifact(run_id, str(tmp / name), "eval")
    return ["eval/quality.json", "eval/quality.png", "eval/quality_table.json"]


def evaluate_quality(ref: str, *, samplers: Sequence[str], steps: Sequence[int], n: int = 256, batch_size: int = 256,
                     seed: int = 0, device: str = "auto", precision: str = "auto", dataset: str | None = None,
                     log: bool = True, on_point: Callable[[SamplerPoint], None] | None = None
                     ) -> tuple[list[SamplerPoint], str | None, list[str]]:
    """`bfn eval --quality`: the quality curve of a model over samplers x step counts, logged to its run
    when known. Returns (points, run id, artifacts)."""
    from pipelines.evaluation import check_precision, resolve_device
    from pipelines.model_store import load_model
    from pipelines.sampling import check_sampler_choice
    from pipelines.tracking import setup_mlflow

    for name in samplers:
        check_sampler_choice(name, None, "sample")
    if not steps or any(s < 1 for s in steps) or n < 1:
        raise PipelineError(f"--steps must be step counts >= 1 and --n-samples >= 1, got steps {list(steps)}, n {n}")
    check_precision(precision)
    dev = resolve_device(device)
    if not Path(ref).is_dir():
        setup_mlflow()
    loaded = load_model(ref)
    dataset = dataset or model_dataset(loaded.config)
    points = quality_curve(loaded, samplers, steps, n=n, batch_size=batch_size, seed=seed, device=dev,
                           precision=precision, dataset=dataset, on_point=on_point)
    artifacts = log_quality(loaded.run_id, points) if log and loaded.run_id else []
    return points, loaded.run_id, artifacts


def format_points(points: Sequence[SamplerPoint]) -> str:
    """The quality table as text: one row per sampler and step count."""
    if not points:
        return "(no points)"
    head = points[0]
    lines = [f"{'sampler':<8} {'steps':>6} {'NFE':>5} {head.headline + (' (min)' if head.mode == 'min' else ' (max)'):>22} "
             f"{'ms/sample':>10}"]
    for p in points:
        lines.append(f"{p.sampler:<8} {p.steps:>6} {p.nfe:>5} {p.quality:>22.4g} {p.seconds_per_sample * 1e3:>10.2f}")
    return "\n".join(lines)


def measure_conditional(loaded: LoadedModel, *, classes, guidance: float = 0.0, guidance_space: str = "output",
                        steps: int = 50, sampler: str = "bfn", grid: str | None = None, n: int = 256,
                        batch_size: int = 256, seed: int = 0, device: torch.device | str = "cpu",
                        precision: str = "auto", dataset: str | None = None, final: str = "sample") -> dict[str, float]:
    """The data set's quality metrics and class accuracy (overall and per class, pipelines.quality.conditional)
    of n class-conditional samples, the classes cycled over the samples, at guidance weight w in guidance_space."""
    from pipelines.quality.conditional import class_accuracy
    from pipelines.quality.metrics import quality_metrics
    from pipelines.sampling import conditioning

    dataset = dataset or model_dataset(loaded.config)
    cond = conditioning(loaded, n, classes=classes, guidance=guidance, guidance_space=guidance_space)
    samples, _, _ = draw(loaded, n=n, steps=steps, sampler=sampler, grid=grid, final=final, batch_size=batch_size,
                         seed=seed, device=device, precision=precision, conditioning=cond)
    levels = sample_levels(loaded.config)
    metrics = {k: float(v) for k, v in quality_metrics(dataset, samples, levels=levels, seed=seed).items()}
    return {**metrics, **class_accuracy(dataset, samples, cond.labels, levels=levels)}
