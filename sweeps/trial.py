"""One sweep trial: a Ray Tune function trainable that runs the training pipeline's TorchTrainer.

Each trial is a nested MLflow run under the sweep's parent run, found again by its Tune trial id
when a resumed sweep restarts an unfinished trial: the trainer then continues from that run's last
checkpoint (same Ray Train run name and storage) instead of from step 0.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from pipelines.names import ENV_MLFLOW_TRACKING_URI, STEP, TAG_RAY_RUN_NAME, TAG_SWEEP, TAG_SWEEP_STATUS, TAG_SWEEP_TRIAL

TAG_PARENT = "mlflow.parentRunId"  # MLflow's own nesting tag
OBJECTIVE = "objective"  # the trial's (first) objective under one name, for ASHA, Optuna and the table


def _objective_callback(metric: str):
    """TuneReportCallback that also reports the trial's objective under one name for ASHA and Optuna."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class ObjectiveReport(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metric in metrics[0]:
                metrics = [{**metrics[0], OBJECTIVE: metrics[0][metric]}, *metrics[1:]]
            super().after_report(run_context, metrics, checkpoint)

    return ObjectiveReport()


def find_trial_run(client, experiment_id: str, parent_run_id: str, trial_id: str):
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}' and "
                              f"tags.`{TAG_SWEEP_TRIAL}` = '{trial_id}'", max_results=1)
    return runs[0] if runs else None


def run_trial(config: dict[str, Any], sweep: dict[str, Any]) -> None:
    """Tune trainable: `config` holds the sampled values, `sweep` the driver's fixed settings."""
    import mlflow
    from ray import tune

    from pipelines.prepare import Prepared
    from pipelines.training import log_config, make_trainer, ray_run_name, start_run
    from sweeps.spec import trial_config

    fixed, sampled = sweep, dict(config)
    os.environ[ENV_MLFLOW_TRACKING_URI] = fixed["tracking_uri"]
    mlflow.set_tracking_uri(fixed["tracking_uri"])
    client = mlflow.MlflowClient()
    trial_id = tune.get_context().get_trial_id()
    base: Prepared = fixed["prepared"]  # the base config, its data checked once by the driver
    prep = dataclasses.replace(base, cfg=trial_config(base.cfg, sampled))
    existing = find_trial_run(client, fixed["experiment_id"], fixed["parent_run_id"], trial_id)
    if existing is None:
        tags = {TAG_PARENT: fixed["parent_run_id"], TAG_SWEEP: fixed["name"], TAG_SWEEP_TRIAL: trial_id, TAG_SWEEP_STATUS: "running",
                "mlflow.runName": f"{fixed['name']}-{trial_id}"}
        run_id, ray_name = start_run(prep, extra_tags=tags, extra_params={f"sampled.{k}": v for k, v in sampled.items()})
    elif existing.data.tags.get(TAG_SWEEP_STATUS) in ("completed", "stopped_early"):
        # The driver died after this trial ended but before Tune saved that: report its result again
        # instead of training it again.
        _replay(client, existing, fixed["goals"])
        return
    else:  # restarted by a resumed sweep: continue the same run from its checkpoint
        run_id = existing.info.run_id
        ray_name = existing.data.tags.get(TAG_RAY_RUN_NAME) or ray_run_name(run_id)
        client.set_tag(run_id, TAG_RAY_RUN_NAME, ray_name)
        client.update_run(run_id, status="RUNNING")
        if not any(k.startswith("sampled.") for k in existing.data.params):  # its first attempt died before logging them
            log_config(run_id, prep.cfg, {f"sampled.{k}": v for k, v in sampled.items()})
    trainer = make_trainer(prep, run_id=run_id, tracking_uri=fixed["tracking_uri"], name=ray_name,
                           callbacks=[_objective_callback(fixed["goals"][0])])
    trainer.fit()


def _replay(client, run, metrics: list[str]) -> None:
    from ray import tune

    last = {}
    for metric in metrics:
        history = client.get_metric_history(run.info.run_id, metric)
        if history:
            last[metric] = max(history, key=lambda m: m.step)
    if len(last) == len(metrics):
        first = last[metrics[0]]
        tune.report({STEP: first.step, **{k: m.value for k, m in last.items()}, OBJECTIVE: first.value})
