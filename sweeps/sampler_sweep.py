"""Sampler sweeps: sampler x step count (x time grid, x guidance weight x space) on one trained model,
no retraining.

Each point is a Ray Tune trial (a grid search, so every point runs once) that loads the model,
draws samples with pipelines.sample_quality.measure_sampler and logs a nested MLflow run. The
driver then writes the results as the parent run's table, the Pareto fronts (quality against NFE,
and against wall time per sample) as pictures and CSV, and a recommendation: the fewest network
evaluations on the NFE front whose quality is within `tolerance` of the best point's. When the model
is a registered version, the recommendation goes onto it as bfn.recommended.* tags, which
`bfn models show` prints.

With `classes` (a class-conditional model), every point also measures class accuracy, the guidance
weights and spaces are axes of the grid, one more front is drawn (class accuracy against quality: what
guidance buys and what it costs) and `min_class_accuracy` limits which points may be recommended.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from pipelines.errors import PipelineError
from pipelines.names import (ENV_MLFLOW_TRACKING_URI, TAG_ERROR, TAG_RECOMMENDED, TAG_SWEEP, TAG_SWEEP_PARENT,
                             TAG_SWEEP_PARETO, TAG_SWEEP_STATUS, TAG_SWEEP_TRIAL)
from pipelines.quality.conditional import CLASSIFIED, class_metric_name, has_classifier
from sweeps.sampler_spec import SamplerSweepSpec
from sweeps.trial import TAG_PARENT

POINT_KEYS = ("sampler", "steps", "grid", "guidance", "guidance_space")  # guidance: conditional points only
CLASS_ACCURACY = class_metric_name()
REPORTED = ("nfe", "quality", "seconds_per_sample", "headline", "mode")  # per point, beside its quality metrics


def run_point(config: dict[str, Any], sweep: dict[str, Any]) -> None:
    """Tune trainable: one point (sampler, steps, grid[, guidance, space]), its own nested MLflow run."""
    import mlflow
    from ray import tune

    from pipelines.evaluation import resolve_device
    from pipelines.model_store import load_model
    from pipelines.sample_quality import measure_sampler

    os.environ[ENV_MLFLOW_TRACKING_URI] = sweep["tracking_uri"]
    mlflow.set_tracking_uri(sweep["tracking_uri"])
    client = mlflow.MlflowClient()
    trial_id = tune.get_context().get_trial_id()
    point = config["point"]
    run = client.create_run(sweep["experiment_id"], run_name=f"{sweep['name']}-{point_name(point)}",
                            tags={TAG_PARENT: sweep["parent_run_id"], TAG_SWEEP: sweep["name"], TAG_SWEEP_TRIAL: trial_id,
                                  TAG_SWEEP_STATUS: "running"})
    run_id = run.info.run_id
    try:
        client.log_batch(run_id, params=_params({**point, "grid": point["grid"] or "default", "model": sweep["model"],
                                                 **sweep["options"]}))
        options = {**sweep["options"], "device": resolve_device(sweep["options"]["device"])}  # this worker's GPU, if any
        measured = measure_sampler(load_model(sweep["model"]), **point, **options)
        values = {**measured.metrics, "nfe": float(measured.nfe), "seconds_per_sample": measured.seconds_per_sample}
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
    tune.report({**values, "quality": measured.quality, "headline": measured.headline, "mode": measured.mode,
                 "metric_names": ",".join(measured.metrics)})


def point_name(point: dict[str, Any]) -> str:
    """sampler-grid-steps[-w<w>[-space]]: a point's run name within its sweep."""
    from pipelines.sample_quality import guidance_parts

    return "-".join([point["sampler"], point["grid"] or "own", str(point["steps"]),
                     *guidance_parts(point.get("guidance"), point.get("guidance_space"))])


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
    """Every point of the spec on its model; results, fronts and recommendation in MLflow."""
    import mlflow
    from ray import tune

    from pipelines.model_store import load_model, registered_version
    from pipelines.prepare import storage_location
    from pipelines.ray_runtime import init_ray
    from pipelines.sample_quality import model_dataset
    from pipelines.sampling import conditioning
    from pipelines.tracking import bfn_home, ensure_experiment, setup_mlflow

    uri = setup_mlflow()
    loaded = load_model(spec.model)  # a wrong reference fails here, before Ray starts
    if spec.classes is not None:
        try:
            conditioning(loaded, 1, classes=spec.classes, model=spec.model)  # so does a class the model lacks
        except PipelineError as err:
            raise PipelineError(f"sweep {spec.source}: {str(err).replace('--', '')}") from None
    points = spec.points()
    dataset = spec.dataset or model_dataset(loaded.config)
    if spec.min_class_accuracy is not None and not has_classifier(dataset):
        raise PipelineError(f"sweep {spec.source}: min_class_accuracy needs class accuracy, which needs a classifier of "
                            f"the data ({', '.join(CLASSIFIED)} has one, {dataset} not): drop min_class_accuracy")
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
    say(f"sampler sweep {name}: {len(points)} points on {spec.model} ({dataset}"
        f"{', classes ' + str(spec.classes) if spec.classes is not None else ''}); MLflow parent run {parent}")
    options = {"n": spec.n_samples, "batch_size": spec.batch_size, "seed": spec.seed, "device": spec.device,
               "precision": spec.precision, "dataset": dataset, "final": spec.final,
               **({"classes": spec.classes} if spec.classes is not None else {})}
    fixed = {"name": name, "model": spec.model, "tracking_uri": uri, "parent_run_id": parent,
             "experiment_id": experiment_id, "options": options}
    resources = {"CPU": spec.cpus_per_trial, **({"GPU": spec.gpus_per_trial} if spec.gpus_per_trial else {})}
    storage, fs = storage_location(None)
    try:
        init_ray(ray_address, env={ENV_MLFLOW_TRACKING_URI: uri})
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(run_point, sweep=fixed), resources),
            param_space={"point": tune.grid_search(points)},  # listed, not crossed: w = 0 once (point_grid)
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
        metrics, point = result.metrics or {}, (result.config or {}).get("point", {})
        trial_id = metrics.get("trial_id") or Path(result.path).name
        keep = set(REPORTED) | set(str(metrics.get("metric_names", "")).split(","))  # not Tune's own fields
        rows.append({"trial_id": trial_id, "status": "failed" if result.error else "completed",
                     "error": failure_message(result.error) if result.error else None,
                     "run_id": children.get(trial_id), **{k: point[k] for k in POINT_KEYS if k in point},
                     "grid": point.get("grid") or "default", **{k: v for k, v in metrics.items() if k in keep}})
    columns = ["trial_id", "status", "error", "run_id", *(k for k in POINT_KEYS if any(k in r for r in rows)), *REPORTED]
    return pd.DataFrame(rows).reindex(columns=list(dict.fromkeys(columns + [c for r in rows for c in r])))


def recommend(table: pd.DataFrame, tolerance: float, min_class_accuracy: float | None = None) -> pd.Series | None:
    """The fewest-NFE completed point whose quality is within `tolerance` (relative) of the best, among the
    points at least min_class_accuracy accurate when that is given (class-conditional sweeps)."""
    done = table[(table["status"] == "completed") & table["quality"].notna()]
    if min_class_accuracy is not None:
        done = done[done.get(CLASS_ACCURACY, pd.Series(float("nan"), index=done.index)) >= min_class_accuracy]
    if done.empty:
        return None
    mode = done["mode"].iloc[0]
    best = done["quality"].min() if mode == "min" else done["quality"].max()
    slack = tolerance * abs(best)
    good = done[done["quality"] <= best + slack] if mode == "min" else done[done["quality"] >= best - slack]
    return good.sort_values(["nfe", "seconds_per_sample"], kind="stable").iloc[0]


def _finish(spec, name, parent, table, registered, client, out_dir: Path, say) -> SamplerSweepOutcome:
    from pipelines.quality_report import save_quality_plot
    from pipelines.sample_quality import SamplerPoint
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
        order = [k for k in ("sampler", "grid", "guidance_space", "guidance", "nfe") if k in table]
        table = table.sort_values(order, kind="stable").reset_index(drop=True)
        done = done.drop(columns=[headline], errors="ignore").rename(columns={"quality": headline})  # the same values
        points = [SamplerPoint(r.sampler, None if r.grid == "default" else r.grid, int(r.steps), int(r.nfe), {headline: r[headline]},
                               headline, mode, r.seconds_per_sample, spec.n_samples, *_guidance(r)) for _, r in done.iterrows()]
        done["curve"] = [p.label for p in points]
        files.append(save_pareto_plot(done, "nfe", headline, ["min", mode], out_dir / "pareto_nfe.png", log_x=True,
                                      label="curve", title=f"{name}: {headline} against network evaluations"))
        files.append(save_pareto_plot(done, "seconds_per_sample", headline, ["min", mode], out_dir / "pareto_time.png",
                                      log_x=True, label="curve", title=f"{name}: {headline} against seconds per sample"))
        if CLASS_ACCURACY in done:
            files.append(save_pareto_plot(done, CLASS_ACCURACY, headline, ["max", mode], out_dir / "pareto_class_accuracy.png",
                                          label="curve", title=f"{name}: {headline} against class accuracy (guidance)"))
        files.append(save_quality_plot(points, out_dir / "quality_vs_nfe.png", title=f"{name}: quality against NFE"))
        pick = recommend(table, spec.tolerance, spec.min_class_accuracy)
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
        guidance, space = _guidance(pick)
        if guidance is not None:
            recommended.update(guidance=guidance, guidance_space=space)
            recommended["quality"] += f", {CLASS_ACCURACY}={pick[CLASS_ACCURACY]:.3f}"
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


def _guidance(row) -> tuple[float | None, str | None]:
    """(w, space) of a conditional point's table row, (None, None) for an unconditional one."""
    w = row.get("guidance")
    return (None, None) if w is None or pd.isna(w) else (float(w), row["guidance_space"])


def _say_table(table: pd.DataFrame, recommended, registered, say) -> None:
    if table.empty:
        say("no points ran")
        return
    cols = [c for c in ("sampler", "grid", "steps", "guidance", "guidance_space", "nfe", "quality", CLASS_ACCURACY,
                        "seconds_per_sample", "pareto_nfe", "status") if c in table]
    say(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if recommended:
        where = f"; tagged on {registered[0]} v{registered[1]}" if registered else ""
        guided = f", guidance {recommended['guidance']:g} ({recommended['guidance_space']})" if "guidance" in recommended else ""
        say(f"recommended: {recommended['sampler']} ({recommended['grid']} grid) at {recommended['steps']} steps{guided}, "
            f"{recommended['quality']}{where}")
