"""The notebook API: the platform's four verbs as plain functions, for a Python session.

    from pipelines import load_config, train, evaluate, sample
    cfg = load_config("configs/digits_discretised.yaml", {"training.steps": 200})
    run = train(cfg)                                   # Ray Train, tracked in MLflow
    table = evaluate(run.run_id, steps=[10, 100, None]).table
    x = sample(run.run_id, n=16, steps=20, sampler="ode2")   # numpy array, data shape

They call the same code as the `bfn` commands (no second path to keep in step), with a config given
as a YAML path or a dict, and overrides as {dotted path: value}.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from pipelines.config import ExperimentConfig


def load_config(source: str | Path | Mapping[str, Any] | ExperimentConfig,
                overrides: Mapping[str, Any] | None = None) -> ExperimentConfig:
    """A validated experiment config from a YAML path, a dict or a config, with overrides applied."""
    from pipelines.config import apply_overrides, load_config as load_yaml, parse_config

    if isinstance(source, ExperimentConfig):
        source = source.model_dump(mode="json")
    if isinstance(source, Mapping):
        return parse_config(apply_overrides(dict(source), overrides or {}), "config dict")
    return load_yaml(source, overrides)


def train(config, overrides: Mapping[str, Any] | None = None, **options):
    """Train on Ray (local, or RAY_ADDRESS); returns TrainOutcome (run_id, model_uri, checkpoint_path, metrics).
    options: resume_run, ray_address, num_cpus, on_progress (see pipelines.training.train)."""
    from pipelines.training import train as run_training

    return run_training(load_config(config, overrides), **options)


def evaluate(model: str, steps=(10, 100, 1000, None), **options):
    """The likelihood table of a run id (or prefix, or name), models:/ URI or checkpoint folder; returns
    EvalOutcome (.table). options: repeats, batch_size, manifest, workers, device, precision, seed, log."""
    from pipelines.evaluation import evaluate as run_evaluation
    from pipelines.tracking import setup_mlflow

    if not Path(model).is_dir():
        setup_mlflow()
    return run_evaluation(model, steps=list(steps), **options)


def sample(model, n: int = 16, steps: int = 100, *, sampler: str = "bfn", grid: str | None = None,
           final: str = "sample", seed: int = 0, device: str = "auto", precision: str = "auto", batch_size: int = 256,
           classes=None, guidance: float = 0.0, guidance_space: str = "output", observed=None, mask=None,
           resample: int = 1):
    """n samples as a numpy array of the data's shape (images in [-1, 1] or class indices). classes (an id,
    name or list, cycled over the samples), guidance, guidance_space, observed, mask and resample condition them as
    pipelines.sampling's docstring says, e.g. sample(run, n=20, classes=[3, 7], guidance=1.0)."""
    from pipelines.sampling import sample_array

    samples, _, _, _ = sample_array(model, n=n, steps=steps, seed=seed, batch_size=batch_size, device=device,
                                    sampler=sampler, grid=grid, final=final, precision=precision, classes=classes,
                                    guidance=guidance, guidance_space=guidance_space, observed=observed, mask=mask,
                                    resample=resample)
    return samples
