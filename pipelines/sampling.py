"""Sampling from trained models to files: .npy plus a picture (image grid, text lines, scatter)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from pipelines.errors import PipelineError


def check_sampler_choice(sampler: str, grid: str | None, final: str) -> None:
    """The sampler, time grid and final-output names, checked before any model is loaded."""
    from bfn_core.samplers import SAMPLERS
    from bfn_core.solvers import FINALS
    from bfn_core.time_grids import TIME_GRIDS

    if sampler not in SAMPLERS:
        raise PipelineError(f"--sampler must be one of {', '.join(SAMPLERS)}, not {sampler!r}")
    if grid is not None and grid not in TIME_GRIDS:
        raise PipelineError(f"--grid must be one of {', '.join(TIME_GRIDS)}, not {grid!r}")
    if final not in FINALS:
        raise PipelineError(f"--final must be one of {', '.join(FINALS)}, not {final!r}")


def sample_to_files(ref: str, *, n: int, steps: int, out: str, seed: int = 0, batch_size: int = 256,
                    device: str = "auto", sampler: str = "bfn", grid: str | None = None, final: str = "sample",
                    precision: str = "auto", on_progress: Callable[[int], None] | None = None) -> list[Path]:
    """Draw n samples with `sampler` over `steps` steps of `grid` (None: the sampler's own) on `device`
    (auto: a GPU when there is one), in batches; on_progress(k) is told of k more samples drawn."""
    import numpy as np

    from pipelines.evaluation import check_precision, resolve_device
    from pipelines.model_store import load_model
    from pipelines.pictures import save_samples
    from pipelines.sample_quality import draw
    from pipelines.tracking import setup_mlflow

    if n < 1 or steps < 1:
        raise PipelineError(f"--n and --steps must be >= 1, got n={n}, steps={steps}")
    check_sampler_choice(sampler, grid, final)
    check_precision(precision)
    dev = resolve_device(device)
    if not Path(ref).is_dir():
        setup_mlflow()
    loaded = load_model(ref)
    samples, nfe, _ = draw(loaded, n=n, steps=steps, sampler=sampler, grid=grid, final=final, batch_size=batch_size,
                           seed=seed, device=dev, precision=precision, on_batch=on_progress)
    stem = Path(out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    npy = stem.with_suffix(".npy")
    np.save(npy, samples)
    picture = save_samples(samples, loaded.config["data"]["kind"], stem,
                           title=f"{n} samples, {sampler} sampler, {steps} steps ({nfe} NFE)")
    return [npy, picture]
