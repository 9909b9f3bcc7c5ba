"""The sweep driver: Ray Tune + OptunaSearch + ASHA over trials that each run a TorchTrainer.

MLflow holds a parent run per sweep (the spec as params and artifact, the results table, plots,
best config) and a nested child run per trial (its config, sampled values, metrics, status).
Tune's experiment state lives beside the checkpoints, so `--resume NAME` restores it: finished
trials are not run again, and unfinished ones continue from their last checkpoint.
"""
from __future__ import annotations

import io
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from ray import tune

from pipelines.errors import PipelineError
from pipelines.names import (
    ENV_MLFLOW_TRACKING_URI,
    STEP,
    TAG_ERROR,
    TAG_RAY_RUN_NAME,
    TAG_SWEEP,
    TAG_SWEEP_BEST_RUN,
    TAG_SWEEP_PARENT,
    TAG_SWEEP_PARETO,
    TAG_SWEEP_STATUS,
    TAG_SWEEP_TRIAL,
)
from pipelines.ray_runtime import init_ray
from sweeps.spec import SweepSpec, check_spec, flat_spec, tune_space
from sweeps.trial import OBJECTIVE, TAG_PARENT, find_trial_run, run_trial

# Tune saves its experiment state at most this often; a killed driver loses at most this much.
TUNE_CHECKPOINT_PERIOD = ("TUNE_GLOBAL_CHECKPOINT_S", "2")


@dataclass
class SweepOutcome:
    name: str
    parent_run_id: str
    table: pd.DataFrame
    best_run_id: str | None
    best_value: float | None
    best_config: Path | None
    model_uri: str | None
    out_dir: Path


def new_sweep_name(spec: SweepSpec) -> str:
    return f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _trial_resources(cfg) -> dict[str, float]:
    per = {"CPU": cfg.scaling.num_workers * cfg.scaling.cpus_per_worker}
    if cfg.scaling.use_gpu:
        per["GPU"] = float(cfg.scaling.num_workers)
    return per


def check_capacity(spec: SweepSpec, base) -> None:
    """More concurrent trials than the cluster holds would wait forever: refuse before starting."""
    import ray

    have = ray.cluster_resources()
    per = _trial_resources(base)
    for res, amount in per.items():
        need = amount * spec.budget.concurrent
        if need > have.get(res, 0) + 1e-9:
            fits = int(have.get(res, 0) // amount) if amount else 0
            raise PipelineError(
                f"budget.concurrent={spec.budget.concurrent} trials of {base.scaling.num_workers} workers x "
                f"{base.scaling.cpus_per_worker if res == 'CPU' else 1} {res} need {need:g} {res}, but the cluster has "
                f"{have.get(res, 0):g}: set budget.concurrent <= {fits} or lower scaling.num_workers")


class TrialStatusToMlflow(tune.Callback):
    """Driver side: records each trial's outcome (completed, stopped early, failed) on its MLflow child run."""

    def __init__(self, experiment_id: str, parent_run_id: str, max_steps: int, say: Callable[[str], None],
                 storage_path: str, storage_filesystem=None):
        self.experiment_id, self.parent_run_id, self.max_steps, self.say = experiment_id, parent_run_id, max_steps, say
        self.storage_path, self.storage_filesystem = storage_path, storage_filesystem

    def __getstate__(self):  # Tune saves callbacks with its experiment state; a console does not pickle
        return {**self.__dict__, "say": print}

    def _mark(self, trial, status: str, mlflow_status: str, error: str | None = None) -> None:
        import mlflow

        client = mlflow.MlflowClient()
        run = find_trial_run(client, self.experiment_id, self.parent_run_id, trial.trial_id)
        if run is None:  # failed before its run existed
            return
        if run.data.tags.get(TAG_SWEEP_STATUS) == status and run.info.status == mlflow_status:
            return  # already recorded (a trial replayed after a resume): keep its end time
        if status != "completed" and run.data.tags.get(TAG_RAY_RUN_NAME):
            from pipelines.training import send_checkpointed_metrics

            # a trial Tune stopped (or that failed) ended before its worker sent its last metrics
            send_checkpointed_metrics(run.info.run_id, run.data.tags[TAG_RAY_RUN_NAME], self.storage_path,
                                      self.storage_filesystem)
        client.set_tag(run.info.run_id, TAG_SWEEP_STATUS, status)
        if error:
            client.set_tag(run.info.run_id, TAG_ERROR, error[:4000])
        client.set_terminated(run.info.run_id, status=mlflow_status)
        last = trial.last_result or {}
        value = last.get(OBJECTIVE)
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else "-"
        self.say(f"trial {trial.trial_id} {status.replace('_', ' ')} at step {last.get('step', 0)}: objective {shown}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        if (trial.last_result or {}).get(STEP, 0) >= self.max_steps:
            self._mark(trial, "completed", "FINISHED")
        else:
            self._mark(trial, "stopped_early", "KILLED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._mark(trial, "failed", "FAILED", error=str(trial.error_file or "trial failed"))


def _parent_run(client, experiment_id: str, spec: SweepSpec, name: str, resume: bool):
    import yaml

    if resume:
        runs = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_SWEEP}` = '{name}' and tags.`{TAG_SWEEP_PARENT}` = 'true'",
                                  max_results=1)
        if not runs:
            raise PipelineError(f"no sweep named {name} in MLflow experiment {spec.experiment or '(the base config)'}: "
                                "nothing to resume (the name is printed when a sweep starts)")
        client.update_run(runs[0].info.run_id, status="RUNNING")
        return runs[0].info.run_id
    run = client.create_run(experiment_id, run_name=name, tags={TAG_SWEEP: name, TAG_SWEEP_PARENT: "true"})
    from mlflow.entities import Param

    params = [Param(k, v[:6000]) for k, v in flat_spec(spec).items()]
    for i in range(0, len(params), 100):
        client.log_batch(run.info.run_id, params=params[i: i + 100])
    client.log_text(run.info.run_id, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), "sweep.yaml")
    return run.info.run_id


def run_sweep(spec: SweepSpec, *, resume: str | None = None, ray_address: str | None = None,
              say: Callable[[str], None] = print) -> SweepOutcome:
    """Run a sweep to its end (or resume one) and write its table, plots, best config and best model."""
    import mlflow
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from pipelines.prepare import prepare
    from pipelines.tracking import bfn_home, ensure_experiment, setup_mlflow

    os.environ.setdefault(*TUNE_CHECKPOINT_PERIOD)
    prep = prepare(check_spec(spec))
    base = prep.cfg
    uri = setup_mlflow()
    init_ray(ray_address, env={ENV_MLFLOW_TRACKING_URI: uri})
    check_capacity(spec, base)

    name = resume or new_sweep_name(spec)
    storage_path, fs = prep.storage_path, prep.storage_filesystem
    experiment_path = f"{storage_path.rstrip('/')}/{name}"
    if resume and not tune.Tuner.can_restore(experiment_path, storage_filesystem=fs):
        raise PipelineError(f"no saved state for sweep {name} under {storage_path}: nothing to resume "
                            "(check the name and the base config's storage.path)")
    client = mlflow.MlflowClient()
    experiment_id = ensure_experiment(base.tracking.experiment)
    parent = _parent_run(client, experiment_id, spec, name, bool(resume))
    say(f"sweep {name}: MLflow parent run {parent}; resume with `bfn sweep {spec.source} --resume {name}`")
    fixed = {"name": name, "prepared": prep, "tracking_uri": uri, "parent_run_id": parent, "experiment_id": experiment_id,
             "goals": [g.metric for g in spec.goals]}
    # The trial function only starts a TorchTrainer, whose workers hold the resources. The trial asks
    # for one byte of memory, not a CPU (Tune refuses an empty request), so `budget.concurrent`
    # trials fit wherever their workers fit.
    trainable = tune.with_resources(tune.with_parameters(run_trial, sweep=fixed), {"memory": 1})
    callbacks = [TrialStatusToMlflow(experiment_id, parent, base.training.steps, say, storage_path, fs)]
    try:
        if resume:
            tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_unfinished=True, resume_errored=False,
                                       param_space=tune_space(spec), storage_filesystem=fs)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=tune_space(spec),
                tune_config=tune.TuneConfig(**_tune_goal(spec), search_alg=make_searcher(spec, name, base.training.steps),
                                            scheduler=make_scheduler(spec, base, ASHAScheduler, FIFOScheduler),
                                            num_samples=spec.budget.trials, max_concurrent_trials=spec.budget.concurrent,
                                            time_budget_s=spec.budget.time_limit_s),
                run_config=tune.RunConfig(name=name, storage_path=storage_path, storage_filesystem=fs, callbacks=callbacks,
                                          verbose=1),
            )
        grid = tuner.fit()
        outcome = _finish(spec, base, name, parent, grid, client, experiment_id, fs, say,
                          Path(bfn_home()) / "sweeps" / name)
    except BaseException as err:
        client.set_tag(parent, TAG_ERROR, f"{type(err).__name__}: {err}"[:4000])
        client.set_terminated(parent, status="KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        if isinstance(err, (KeyboardInterrupt, PipelineError)):
            raise
        raise PipelineError(f"sweep {name} failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} "
                            f"(resume with `bfn sweep {spec.source} --resume {name}`)") from err
    client.set_terminated(parent, status="FINISHED")
    return outcome


def _tune_goal(spec: SweepSpec) -> dict[str, Any]:
    """Tune's metric and mode: the objective under one name, or none for a multi-objective sweep
    (its searcher holds the metrics, and no scheduler ranks the trials on one of them)."""
    if len(spec.goals) > 1:
        return {}
    return {"metric": OBJECTIVE, "mode": spec.goals[0].mode}


def make_searcher(spec: SweepSpec, name: str, max_steps: int):
    import optuna

    from sweeps.searcher import StepKeyedOptunaSearch, make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = make_sampler(spec.sampler, spec.search.seed, spec.budget.trials)
    storage = None
    if spec.search.storage:
        try:
            from pipelines.prepare import expand_env

            storage = optuna.storages.RDBStorage(expand_env(spec.search.storage))
        except Exception as err:
            raise PipelineError(f"search.storage {spec.search.storage}: cannot open the Optuna storage "
                                f"({type(err).__name__}: {str(err).splitlines()[0][:160]})") from None
    goal = {} if len(spec.goals) == 1 else {"metric": [g.metric for g in spec.goals], "mode": [g.mode for g in spec.goals]}
    return StepKeyedOptunaSearch(sampler=sampler, study_name=name, storage=storage, max_steps=max_steps, **goal)


def make_scheduler(spec: SweepSpec, base, asha_cls, fifo_cls):
    if not spec.early_stopping:
        return fifo_cls()
    return asha_cls(time_attr=STEP, max_t=base.training.steps, grace_period=spec.asha.grace_period,
                    reduction_factor=spec.asha.reduction_factor)


def _finish(spec, base, name, parent, grid, client, experiment_id, fs, say, out_dir: Path) -> SweepOutcome:
    """Results table, plots and best config (local and on the parent run); the best trial's model."""
    from ray.train import Checkpoint

    from pipelines.training import log_run_models
    from sweeps.results import best_row, results_table, save_pareto, save_plots, save_table, trial_status, write_best_config

    children = {r.data.tags.get(TAG_SWEEP_TRIAL): r.info.run_id for r in client.search_runs(
        [experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{parent}'", max_results=10000)}
    rows, histories, checkpoints = [], {}, {}
    for result in grid:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or Path(result.path).name
        params = result.config or {}
        last_step = metrics.get(STEP)
        value = metrics.get(OBJECTIVE)
        rows.append({"trial_id": trial_id, "status": trial_status(result.error, last_step, base.training.steps),
                     "run_id": children.get(trial_id), **{f"param.{k}": params.get(k) for k in spec.space},
                     "objective": float(value) if isinstance(value, (int, float)) else math.nan,
                     "metric": spec.goals[0].metric, "steps": last_step or 0,
                     **{g.metric: _number(metrics.get(g.metric)) for g in spec.goals[1:]}})
        try:
            histories[trial_id] = result.metrics_dataframe
        except Exception:  # a trial that never reported has no history
            pass
        if metrics.get("checkpoint_path"):
            checkpoints[trial_id] = metrics["checkpoint_path"]
    table = results_table(rows, spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = save_table(table, out_dir)
    files += save_plots(table, spec, out_dir, {k: v for k, v in histories.items() if v is not None})
    if len(spec.goals) > 1:
        front, pareto_files = save_pareto(table, spec, out_dir)
        files += pareto_files
        client.set_tag(parent, TAG_SWEEP_PARETO, ",".join(str(r) for r in front["run_id"]))
        say(f"Pareto front ({' vs '.join(g.metric for g in spec.goals)}): {len(front)} trials: "
            + ", ".join(str(t) for t in front["trial_id"]))
    best = best_row(table)
    best_config = model_uri = None
    if best is not None:
        best_config = write_best_config(base, best, spec, name, out_dir / "best_config.yaml")
        files.append(best_config)
        client.set_tag(parent, TAG_SWEEP_BEST_RUN, str(best["run_id"]))
        client.log_metric(parent, f"best_{best['metric']}", float(best["objective"]))
        path = checkpoints.get(best["trial_id"])
        if path and best["run_id"]:
            model_uri, _ = log_run_models(Checkpoint(path, filesystem=fs), best["run_id"])
    for status, count in table["status"].value_counts().items():
        client.log_metric(parent, f"trials_{status}", float(count))
    for f in files:
        client.log_artifact(parent, str(f), "results")
    _print_table(table, say)
    if best is not None:
        say(f"best: trial {best['trial_id']} (run {best['run_id']}), {best['metric']} = {best['objective']:.4f}; "
            f"config {best_config}")
    return SweepOutcome(name, parent, table, None if best is None else best["run_id"],
                        None if best is None else float(best["objective"]), best_config, model_uri, out_dir)


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def _print_table(table: pd.DataFrame, say) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="sweep results (best first)")
    for col in table.columns:
        t.add_column(col.removeprefix("param."), overflow="fold")
    for _, row in table.iterrows():
        t.add_row(*[_fmt(v) for v in row.tolist()])
    text = Console(file=io.StringIO(), width=max(120, len(table.columns) * 14))
    text.print(t)
    say(text.file.getvalue().rstrip())


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return "-" if value is None else str(value)
