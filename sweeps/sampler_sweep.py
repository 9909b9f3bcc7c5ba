"""Sampler sweeps: sampler x step count (x time grid) on one trained model, no retraining.

Each point is a Ray Tune trial (a grid search, so every point runs once) that loads the model,
draws samples with pipelines.sample_quality.measure_sampler and logs a nested MLflow run. The
driver then writes the results as the parent run's table, the Pareto fronts (quality against NFE,
and against wall time per sample) as pictures and CSV, and a recommendation: the fewest network
evaluations on the NFE front whose quality is within `tolerance` of the best point's. When the model
is a registered version, the recommendation goes onto it as bfn.recommended.* tags, which
`bfn models show` prints.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipelines.config import apply_overrides, format_validation_error, read_yaml
from pipelines.errors import PipelineError
from pipelines.names import (ENV_MLFLOW_TRACKING_URI, TAG_ERROR, TAG_RECOMMENDED, TAG_SWEEP, TAG_SWEEP_PARENT,
                             TAG_SWEEP_PARETO, TAG_SWEEP_STATUS, TAG_SWEEP_TRIAL)
from sweeps.trial import TAG_PARENT

POINT_KEYS = ("sampler", "steps", "grid")
REPORTED = ("nfe", "quality", "seconds_per_sample", "headline", "mode")  # per point, beside its quality metrics


class SamplerSweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    kind: Literal["sampler"]
    model: str = Field(description="run id, runs:/RUN, models:/NAME@ALIAS or models:/NAME/VERSION, or a checkpoint folder")
    samplers: list[str] = Field(default_factory=lambda: ["bfn", "ode2", "sde2"], min_length=1)
    steps: list[int] = Field(default_factory=lambda: [10, 20, 50, 100], min_length=1)
    grids: list[str | None] = Field(default_factory=lambda: [None], min_length=1, description="null: each sampler's own grid")
    final: str = "sample"
    n_samples: int = Field(256, ge=2)
    batch_size: int = Field(256, ge=1)
    seed: int = 0
    dataset: str | None = Field(None, description="the quality metrics' data set (default: the model's training data)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    concurrent: int = Field(2, ge=1)
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    tolerance: float = Field(0.05, ge=0, description="recommend the fewest NFE within this fraction of the best quality")
    recommend: bool = Field(True, description="tag a registered model version with the recommended sampler")
    experiment: str | None = None
    source: str = Field("", exclude=True)

    @field_validator("steps")
    @classmethod
    def _positive(cls, steps):
        if any(s < 1 for s in steps):
            raise ValueError(f"step counts must be >= 1, got {steps}")
        return sorted(set(steps))

    def check(self) -> None:
        from pipelines.sampling import check_sampler_choice

        for sampler in self.samplers:
            for grid in self.grids:
                check_sampler_choice(sampler, grid, self.final)


def is_sampler_spec(path: str | Path) -> bool:
    raw = read_yaml(path, "sweep spec")
    return isinstance(raw, dict) and raw.get("kind") == "sampler"


def load_sampler_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> SamplerSweepSpec:
    raw = apply_overrides(read_yaml(path, "sweep spec"), overrides or {})
    try:
        spec = SamplerSweepSpec.model_validate({**raw, "source": str(path)})
    except ValidationError as err:
        raise PipelineError(format_validation_error(err, str(path)).replace("invalid config", "invalid sweep spec", 1)) from None
    try:
        spec.check()
    except PipelineError as err:
        raise PipelineError(f"sweep {path}: {str(err).replace('--', '')}") from None
    return spec


def run_point(config: dict[str, Any], sweep: dict[str, Any]) -> None:
    """Tune trainable: one sampler at one step count, its own nested MLflow run."""
    import mlflow
    from ray import tune

    from pipelines.evaluation import resolve_device
    from pipelines.model_store import load_model
    from pipelines.sample_quality import measure_sampler

    os.environ[ENV_MLFLOW_TRACKING_URI] = sweep["tracking_uri"]
    mlflow.set_tracking_uri(sweep["tracking_uri"])
    client = mlflow.MlflowClient()
    trial_id = tune.get_context().get_trial_id()
    sampler, steps, grid = (config[k] for k in POINT_KEYS)
    run = client.create_run(sweep["experiment_id"], run_name=f"{sweep['name']}-{sampler}-{grid or 'own'}-{steps}",
                            tags={TAG_PARENT: sweep["parent_run_id"], TAG_SWEEP: sweep["name"], TAG_SWEEP_TRIAL: trial_id,
                                  TAG_SWEEP_STATUS: "running"})
    run_id = run.info.run_id
    try:
        client.log_batch(run_id, params=_params({"sampler": sampler, "steps": steps, "grid": grid or "default",
                                                 "model": sweep["model"], **sweep["options"]}))
        options = {**sweep["options"], "device": resolve_device(sweep["options"]["device"])}  # this worker's GPU, if any
        point = measure_sampler(load_model(sweep["model"]), sampler=sampler, steps=steps, grid=grid, **options)
        values = {**point.metrics, "nfe": float(point.nfe), "seconds_per_sample": point.seconds_per_sample}
        for key, value in values.items():
            if math.isfinite(value):
                client.log_metric(run_id, key, value)
        client.set_tag(run_id, TAG_SWEEP_STATUS, "completed")
        client.set_terminated(run_id, "FINISHED")
    except BaseException as err:
        client.set_tag(run_id, TAG_ERROR, f"{type(err).__name__}: {err}"[:4000])
        client.set_tag(run_id, TAG_SWEEP_STATUS, "failed")
        client.set_terminated(run_id, "FAILED")
        raise
    tune.report({**values, "quality": point.quality, "headline": point.headline, "mode": point.mode,
                 "metric_names": ",".join(point.metrics)})


def _params(values: dict[str, Any]):
    from mlflow.entities import Param

    return [Param(k, str(v)) for k, v in values.items()]


@dataclass
class SamplerSweepOutcome:
    name: str
    parent_run_id: str
    table: pd.DataFrame
    recommended: dict[str, Any] | None
    registered: tuple[str, str] | None
    out_dir: Path


def run_sampler_sweep(spec: SamplerSweepSpec, *, ray_address: str | None = None,
                      say: Callable[[str], None] = print) -> SamplerSweepOutcome:
    """Every sampler x step count x grid on the spec's model; results, fronts and recommendation in MLflow."""
    import mlflow
    from ray import tune

    from pipelines.model_store import load_model, registered_version
    from pipelines.prepare import storage_location
    from pipelines.ray_runtime import init_ray
    from pipelines.sample_quality import model_dataset
    from pipelines.tracking import bfn_home, ensure_experiment, setup_mlflow

    uri = setup_mlflow()
    loaded = load_model(spec.model)  # a wrong reference fails here, before Ray starts
    dataset = spec.dataset or model_dataset(loaded.config)
    registered = registered_version(spec.model)
    client = mlflow.MlflowClient()
    if spec.experiment:
        experiment_id = ensure_experiment(spec.experiment)
    elif loaded.run_id:
        experiment_id = client.get_run(loaded.run_id).info.experiment_id
    else:
        experiment_id = ensure_experiment("sampler-sweeps")
    name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    parent = client.create_run(experiment_id, run_name=name, tags={TAG_SWEEP: name, TAG_SWEEP_PARENT: "true",
                                                                   "bfn.sweep.kind": "sampler", "bfn.sweep.model": spec.model}).info.run_id
    client.log_batch(parent, params=_params({k: v for k, v in spec.model_dump(mode="json").items() if k != "source"}))
    say(f"sampler sweep {name}: {len(spec.samplers) * len(spec.steps) * len(spec.grids)} points on {spec.model} "
        f"({dataset}); MLflow parent run {parent}")
    options = {"n": spec.n_samples, "batch_size": spec.batch_size, "seed": spec.seed, "device": spec.device,
               "precision": spec.precision, "dataset": dataset, "final": spec.final}
    fixed = {"name": name, "model": spec.model, "tracking_uri": uri, "parent_run_id": parent,
             "experiment_id": experiment_id, "options": options}
    resources = {"CPU": spec.cpus_per_trial, **({"GPU": spec.gpus_per_trial} if spec.gpus_per_trial else {})}
    storage, fs = storage_location(None)
    try:
        init_ray(ray_address, env={ENV_MLFLOW_TRACKING_URI: uri})
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(run_point, sweep=fixed), resources),
            param_space={"sampler": tune.grid_search(spec.samplers), "steps": tune.grid_search(spec.steps),
                         "grid": tune.grid_search(spec.grids)},
            tune_config=tune.TuneConfig(max_concurrent_trials=spec.concurrent),
            run_config=tune.RunConfig(name=name, storage_path=storage, storage_filesystem=fs, verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
        table = _table(tuner.fit(), client, experiment_id, parent)
        outcome = _finish(spec, name, parent, table, registered, client, Path(bfn_home()) / "sweeps" / name, say)
    except BaseException as err:
        client.set_tag(parent, TAG_ERROR, f"{type(err).__name__}: {err}"[:4000])
        client.set_terminated(parent, status="KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        if isinstance(err, (KeyboardInterrupt, PipelineError)):
            raise
        raise PipelineError(f"sampler sweep {name} failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    client.set_terminated(parent, status="FINISHED")
    return outcome


def _table(grid, client, experiment_id: str, parent: str) -> pd.DataFrame:
    from pipelines.training import failure_message  # the innermost message of a Ray-wrapped error

    children = {r.data.tags.get(TAG_SWEEP_TRIAL): r.info.run_id for r in client.search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{parent}'", max_results=10000)}
    rows = []
    for result in grid:
        metrics, config = result.metrics or {}, result.config or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        keep = set(REPORTED) | set(str(metrics.get("metric_names", "")).split(","))  # not Tune's own fields
        rows.append({"trial_id": trial_id, "status": "failed" if result.error else "completed",
                     "error": failure_message(result.error) if result.error else None,
                     "run_id": children.get(trial_id), "sampler": config.get("sampler"),
                     "grid": config.get("grid") or "default", "steps": config.get("steps"),
                     **{k: v for k, v in metrics.items() if k in keep}})
    columns = ["trial_id", "status", "error", "run_id", "sampler", "grid", "steps", *REPORTED]
    return pd.DataFrame(rows).reindex(columns=list(dict.fromkeys(columns + [c for r in rows for c in r])))


def recommend(table: pd.DataFrame, tolerance: float) -> pd.Series | None:
    """The fewest-NFE completed point whose quality is within `tolerance` (relative) of the best."""
    done = table[(table["status"] == "completed") & table["quality"].notna()]
    if done.empty:
        return None
    mode = done["mode"].iloc[0]
    best = done["quality"].min() if mode == "min" else done["quality"].max()
    slack = tolerance * abs(best)
    good = done[done["quality"] <= best + slack] if mode == "min" else done[done["quality"] >= best - slack]
    return good.sort_values(["nfe", "seconds_per_sample"], kind="stable").iloc[0]


def _finish(spec, name, parent, table, registered, client, out_dir: Path, say) -> SamplerSweepOutcome:
    from pipelines.sample_quality import SamplerPoint, save_quality_plot
    from sweeps.pareto import pareto_mask, save_pareto_plot

    out_dir.mkdir(parents=True, exist_ok=True)
    done = table[table["status"] == "completed"].copy() if len(table) else table
    files, pick = [], None
    if len(done):
        mode = done["mode"].iloc[0]
        headline = done["headline"].iloc[0]
        for axis, column in (("nfe", "pareto_nfe"), ("seconds_per_sample", "pareto_time")):
            done[column] = pareto_mask(done[[axis, "quality"]].to_numpy(dtype=float), ["min", mode])
        table = table.merge(done[["trial_id", "pareto_nfe", "pareto_time"]], on="trial_id", how="left")
        table = table.sort_values(["sampler", "grid", "nfe"], kind="stable").reset_index(drop=True)
        done = done.drop(columns=[headline], errors="ignore").rename(columns={"quality": headline})  # the same values
        files.append(save_pareto_plot(done, "nfe", headline, ["min", mode], out_dir / "pareto_nfe.png", log_x=True,
                                      label="sampler", title=f"{name}: {headline} against network evaluations"))
        files.append(save_pareto_plot(done, "seconds_per_sample", headline, ["min", mode], out_dir / "pareto_time.png",
                                      log_x=True, label="sampler", title=f"{name}: {headline} against seconds per sample"))
        points = [SamplerPoint(r.sampler, None if r.grid == "default" else r.grid, int(r.steps), int(r.nfe), {headline: r[headline]},
                               headline, mode, r.seconds_per_sample, spec.n_samples) for _, r in done.iterrows()]
        files.append(save_quality_plot(points, out_dir / "quality_vs_nfe.png", title=f"{name}: quality against NFE"))
        pick = recommend(table, spec.tolerance)
    table.to_csv(out_dir / "results.csv", index=False)
    files.append(out_dir / "results.csv")
    if len(table):
        client.log_table(parent, data=table.astype(object).where(table.notna(), None), artifact_file="results/sampler_sweep.json")
    for f in files:
        client.log_artifact(parent, str(f), "results")
    if "pareto_nfe" in table:
        client.set_tag(parent, TAG_SWEEP_PARETO, ",".join(str(r) for r in table[table["pareto_nfe"] == True]["run_id"]))  # noqa: E712
    recommended = None
    if pick is not None:
        recommended = {"sampler": pick["sampler"], "steps": int(pick["steps"]), "grid": pick["grid"], "nfe": int(pick["nfe"]),
                       "quality": f"{pick['headline']}={pick['quality']:.4g} at {int(pick['nfe'])} NFE",
                       "sweep": parent}
        for key, value in recommended.items():
            client.set_tag(parent, f"{TAG_RECOMMENDED}.{key}", str(value))
        client.log_metric(parent, f"recommended_{pick['headline']}", float(pick["quality"]))
        if registered and spec.recommend:
            for key, value in recommended.items():
                client.set_model_version_tag(*registered, f"{TAG_RECOMMENDED}.{key}", str(value))
    _say_table(table, recommended, registered if spec.recommend else None, say)
    if len(table) and (table["status"] == "failed").all():
        raise PipelineError(f"sampler sweep {name}: every point failed, e.g. {table['error'].iloc[0]}")
    return SamplerSweepOutcome(name, parent, table, recommended, registered, out_dir)


def _say_table(table: pd.DataFrame, recommended, registered, say) -> None:
    if table.empty:
        say("no points ran")
        return
    cols = [c for c in ("sampler", "grid", "steps", "nfe", "quality", "seconds_per_sample", "pareto_nfe", "status") if c in table]
    say(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if recommended:
        where = f"; tagged on {registered[0]} v{registered[1]}" if registered else ""
        say(f"recommended: {recommended['sampler']} ({recommended['grid']} grid) at {recommended['steps']} steps, "
            f"{recommended['quality']}{where}")
