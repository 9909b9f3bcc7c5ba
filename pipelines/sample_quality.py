"""Sample quality of a trained model per sampler, step count and guidance: the measurement that `bfn eval
--quality`, sampler sweeps, bench/samplers.py and bench/conditional.py share.

`measure_sampler` draws n samples with one sampler at one step count and scores them with the data
set's quality metrics (pipelines.quality), timing the draws; the network evaluations (NFE) are
counted by a hook on the network, not inferred from the step count. Given classes (a conditional
model), the samples are drawn for those classes at a guidance weight and space, and scored for class
accuracy too (pipelines.quality.conditional). `point_grid` lists the points of samplers x step counts
(x grids x guidance weights x spaces) and `quality_curve` measures them; pipelines.quality_report logs
them to MLflow.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
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
    guidance: float | None = None  # None: unconditional samples; else w of the guidance towards the requested classes
    guidance_space: str | None = None

    @property
    def quality(self) -> float:
        return self.metrics[self.headline]

    @property
    def label(self) -> str:
        """The curve a point belongs to in pictures: its sampler (and grid), and its guidance when there is some."""
        name = self.sampler if self.grid is None else f"{self.sampler} ({self.grid})"
        return " ".join([name, *guidance_parts(self.guidance, self.guidance_space)])

    def to_dict(self) -> dict:
        return asdict(self)


def guidance_parts(guidance: float | None, space: str | None) -> list[str]:
    """["w<w>", space] of a class-conditional point, [] of an unconditional one; the space only where w != 0
    (at w = 0 the spaces are the same sampler). Run names, metric names and picture labels join these."""
    if guidance is None:
        return []
    return [f"w{guidance:g}"] + ([space] if guidance else [])


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
                    dataset: str | None = None, final: str = "sample", classes=None, guidance: float = 0.0,
                    guidance_space: str = "output") -> SamplerPoint:
    """Quality metrics of n samples from `sampler` at `steps` steps, with NFE and seconds per sample; with
    classes (cycled over the samples; see pipelines.sampling) drawn for those classes at guidance w in
    guidance_space, and scored for class accuracy too where the data set has a classifier."""
    from pipelines.quality.conditional import class_accuracy, has_classifier
    from pipelines.quality.metrics import headline, quality_metrics
    from pipelines.sampling import conditioning

    dataset = dataset or model_dataset(loaded.config)
    metric = headline(dataset)
    cond = None
    if classes is not None:
        cond = conditioning(loaded, n, classes=classes, guidance=guidance, guidance_space=guidance_space)
    samples, nfe, seconds = draw(loaded, n=n, steps=steps, sampler=sampler, grid=grid, final=final,
                                 batch_size=batch_size, seed=seed, device=device, precision=precision, conditioning=cond)
    levels = sample_levels(loaded.config)
    metrics = {k: float(v) for k, v in quality_metrics(dataset, samples, levels=levels, seed=seed).items()}
    if cond is not None and has_classifier(dataset):
        metrics.update(class_accuracy(dataset, samples, cond.labels, levels=levels))
    return SamplerPoint(sampler, grid, steps, nfe, metrics, metric.name, metric.mode, seconds / n, n,
                        None if cond is None else float(guidance), None if cond is None else guidance_space)


def guidance_weights(classes, guidance: Sequence[float] | None) -> list[float] | None:
    """The guidance weights of a measurement: None without classes (unconditional points), else the given
    weights or [0] (plain conditional)."""
    if classes is None:
        return None
    return list(guidance) if guidance is not None else [0.0]


def point_grid(samplers: Sequence[str], steps: Sequence[int], grids: Sequence[str | None] = (None,),
               guidance: Sequence[float] | None = None, spaces: Sequence[str] = ("output",)) -> list[dict]:
    """Every sampler x step count x grid (x guidance weight x space, for class-conditional points) as
    measure_sampler keywords. w = 0 is measured once: with no guidance the two spaces are the same sampler."""
    settings: list[dict] = [{}]
    if guidance is not None:
        settings = [{"guidance": float(w), "guidance_space": space} for w in dict.fromkeys(guidance)
                    for space in (spaces[:1] if w == 0 else spaces)]
    return [{"sampler": sampler, "steps": int(n_steps), "grid": grid, **extra}
            for sampler in samplers for grid in grids for n_steps in steps for extra in settings]


def quality_curve(loaded: LoadedModel, points: Sequence[dict], *, on_point: Callable[[SamplerPoint], None] | None = None,
                  **options) -> list[SamplerPoint]:
    """measure_sampler at every point of point_grid (the same seed for each: the same prior noise)."""
    out = []
    for point in points:
        out.append(measure_sampler(loaded, **point, **options))
        if on_point:
            on_point(out[-1])
    return out
