"""One sweep trial: a Ray Tune function trainable that runs the training pipeline's TorchTrainer.

Each trial is a nested MLflow run under the sweep's parent run, found again by its Tune trial id
when a resumed sweep restarts an unfinished trial: the trainer then continues from that run's last
checkpoint (same Ray Train run name and storage) instead of from step 0.
"""
from __future__ import annotations

import os
from typing import Any

TAG_PARENT = "mlflow.parentRunId"
TAG_SWEEP = "bfn.sweep"
TAG_TRIAL = "bfn.sweep.trial_id"
TAG_STATUS = "bfn.sweep.status"  # completed | stopped_early | failed | running
OBJECTIVE = "objective"


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
                              f"tags.`{TAG_TRIAL}` = '{trial_id}'", max_results=1)
    return runs[0] if runs else None


def run_trial(config: dict[str, Any], sweep: dict[str, Any]) -> None:
    """Tune trainable: `config` holds the sampled values, `sweep` the driver's fixed settings."""
    import mlflow
    from ray import tune

    from pipelines.config import ExperimentConfig
    from pipelines.train import make_trainer, start_run, storage_location
    from sweeps.spec import objective_metric, trial_config

    fixed, sampled = sweep, dict(config)
    os.environ["MLFLOW_TRACKING_URI"] = fixed["tracking_uri"]
    mlflow.set_tracking_uri(fixed["tracking_uri"])
    client = mlflow.MlflowClient()
    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(ExperimentConfig.model_validate(fixed["base"]), sampled)
    data_shape = tuple(fixed["data_shape"])
    existing = find_trial_run(client, fixed["experiment_id"], fixed["parent_run_id"], trial_id)
    if existing is None:
        tags = {TAG_PARENT: fixed["parent_run_id"], TAG_SWEEP: fixed["name"], TAG_TRIAL: trial_id, TAG_STATUS: "running",
                "mlflow.runName": f"{fixed['name']}-{trial_id}"}
        run_id, ray_name = start_run(cfg, data_shape, storage_location(cfg.storage.path)[0], extra_tags=tags)
        for key, value in sampled.items():
            client.log_param(run_id, f"sampled.{key}", str(value))
    elif existing.data.tags.get(TAG_STATUS) in ("completed", "stopped_early"):
        # The driver died after this trial ended but before Tune saved that: report its result again
        # instead of training it again.
        _replay(client, existing, objective_metric(fixed["objective"], sampled))
        return
    else:  # restarted by a resumed sweep: continue the same run from its checkpoint
        run_id, ray_name = existing.info.run_id, existing.data.tags["bfn.ray_run_name"]
        client.update_run(run_id, status="RUNNING")
    trainer = make_trainer(cfg, data_shape, run_id=run_id, tracking_uri=fixed["tracking_uri"], name=ray_name,
                           callbacks=[_objective_callback(objective_metric(fixed["objective"], sampled))])
    trainer.fit()


def _replay(client, run, metric: str) -> None:
    from ray import tune

    history = client.get_metric_history(run.info.run_id, metric)
    if history:
        last = max(history, key=lambda m: m.step)
        tune.report({"step": last.step, metric: last.value, OBJECTIVE: last.value})
