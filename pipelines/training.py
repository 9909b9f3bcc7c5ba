"""Distributed training on Ray Train, tracked in MLflow: the driver.

`train(cfg)` checks the tracking server and the data, opens the MLflow run, starts a TorchTrainer
running `pipelines.worker.train_loop_per_worker`, and on success logs the EMA weights of the final
checkpoint and of the best-validation checkpoint as MLflow models, one of them the run's model.

Which failures are retried. Ray Train restarts the worker group from the last checkpoint up to
`scaling.max_failures` times on any worker error: right for a killed worker or node, or an endpoint
that did not answer, wasted on a corrupt shard or checkpoint, which fails the same way every time
(and a `--resume` would meet it again). Ray Train 2.60 (V2) has no public way to classify worker
errors: its FailurePolicy is built inside `DataParallelTrainer.fit` by `create_failure_policy`, which
always returns `DefaultFailurePolicy` (ray/train/v2/_internal/execution/failure_handling/factory.py),
and that policy retries every WorkerGroupError up to max_failures (default.py,
`_is_retryable_error`). It does give a controller-side hook that sees each worker's exception,
`UserCallback.after_exception` (ray/train/v2/api/callback.py, called from the worker group's poll by
_internal/callbacks/user_callback.py), and it never retries a ControllerError other than a worker
group start-up failure (default.py, RETRYABLE_CONTROLLER_ERRORS). So `stop_on_deterministic_error`'s
callback raises ControllerError(the deterministic error) from that hook: the controller's loop routes it to
the failure policy (controller.py, `_run_control_loop_iteration`), which decides RAISE; the worker
group is shut down and `fit()` raises that ControllerError. Every other error reaches the default
policy unchanged and is retried as before. The driver then ends the run FAILED with one line naming
the shard or stored checkpoint, and no resume hint (pipelines.errors.DeterministicError says which
errors these are).

The tracking server going away does not stop training (see pipelines.worker); if it is still away
when training ends, the driver cannot record the models or the end of the run, and says to finish
it with `bfn train --resume RUN` once the server answers (the run's unsent metrics are in its
checkpoints).
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

from pipelines.checkpoints import load_weights, opened, read_config
from pipelines.config import ExperimentConfig
from pipelines.errors import PipelineError, deterministic_cause, one_line
from pipelines.names import (
    CHECKPOINT_SCORE,
    ENV_MLFLOW_TRACKING_URI,
    TAG_DATA_SHAPE,
    TAG_ERROR,
    TAG_KIND,
    TAG_RAY_RUN_NAME,
    TAG_STORAGE,
    tag_data,
)
from pipelines.prepare import Prepared, prepare
from pipelines.progress import ProgressFn, ProgressReceiver
from pipelines.tracking import METRICS_FILE, log_missing_metrics, mlflow_http_settings
from pipelines.worker import train_loop_per_worker


@dataclass
class TrainOutcome:
    run_id: str
    model_uri: str
    checkpoint_path: str
    metrics: dict


def start_run(prep: Prepared, extra_tags: dict | None = None, extra_params: dict | None = None) -> tuple[str, str]:
    """A new MLflow run holding the config (params and config.yaml) and the data's digests; returns
    (run id, the Ray Train run name that ties the run to its checkpoints)."""
    import mlflow

    from pipelines.lineage import context_tags, dataset_inputs
    from pipelines.tracking import ensure_experiment

    cfg = prep.cfg
    client = mlflow.MlflowClient()
    exp_id = ensure_experiment(cfg.tracking.experiment)
    tags = {**context_tags(), **cfg.tracking.tags, TAG_DATA_SHAPE: ",".join(map(str, prep.data_shape)),
            TAG_STORAGE: prep.storage_path, TAG_KIND: cfg.data.kind, **(extra_tags or {})}
    for split, digest in prep.digests.items():
        tags[tag_data(split, "sha256")] = digest
        tags[tag_data(split, "manifest")] = prep.manifest_urls[split]
    run = client.create_run(exp_id, run_name=cfg.tracking.run_name, tags=tags)
    run_id = run.info.run_id
    ray_name = ray_run_name(run_id)
    client.set_tag(run_id, TAG_RAY_RUN_NAME, ray_name)
    if "mlflow.runName" not in (extra_tags or {}):  # readable, and unique: the config's name and a short id
        client.set_tag(run_id, "mlflow.runName", f"{cfg.tracking.run_name or cfg.tracking.experiment}-{run_id[:8]}")
    client.log_inputs(run_id, datasets=dataset_inputs(prep.manifests, prep.digests, prep.manifest_urls))
    log_config(run_id, cfg, extra_params)
    return run_id, ray_name


def ray_run_name(run_id: str) -> str:
    """The Ray Train run (checkpoint folder) of an MLflow run."""
    return f"bfn-{run_id}"


def log_config(run_id: str, cfg: ExperimentConfig, extra_params: dict | None = None) -> None:
    """The config as params and config.yaml. Logging the same values again is allowed, so a run whose
    first attempt died between creating it and logging them (a sweep driver killed) is completed."""
    import mlflow
    import yaml

    client = mlflow.MlflowClient()
    values = {**cfg.flat(), **(extra_params or {})}
    params = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in values.items()]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i: i + 100])
    client.log_text(run_id, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), "config.yaml")


def stop_on_deterministic_error():
    """A Ray Train callback, run in the controller, that ends training at once, without a retry, when a
    worker failed with a DeterministicError (the module's docstring says why this way).

    Built here, not at module level, because Ray must not be imported before `init_ray` has set up a
    local cluster (ray_runtime); cloudpickle sends the class to the controller by value, so the
    controller imports only pipelines.errors, not this module and torch."""
    from ray.train import ControllerError, UserCallback

    class StopOnDeterministicError(UserCallback):
        def after_exception(self, run_context, worker_exceptions: dict) -> None:
            for rank in sorted(worker_exceptions):
                cause = deterministic_cause(worker_exceptions[rank])
                if cause is not None:
                    raise ControllerError(cause)

    return StopOnDeterministicError()


def make_trainer(prep: Prepared, *, run_id: str | None, tracking_uri: str | None, name: str,
                 callbacks: list | None = None, progress_queue=None):
    """The TorchTrainer of one run. Its storage folder is `name` under the prepared storage path:
    started again under the same name, Ray Train continues from the latest checkpoint there. Ray
    keeps the latest checkpoint and the one with the best validation bound (unvalidated ones score
    +inf). Worker failures are retried up to scaling.max_failures times, except deterministic ones."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = prep.cfg
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"experiment": cfg.model_dump(mode="json"), "data_shape": list(prep.data_shape),
                           "mlflow_run_id": run_id, "tracking_uri": tracking_uri, "progress_queue": progress_queue,
                           "mlflow_http": mlflow_http_settings()},
        scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                     resources_per_worker={"CPU": cfg.scaling.cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=prep.storage_path, storage_filesystem=prep.storage_filesystem,
                             callbacks=[*(callbacks or []), stop_on_deterministic_error()],
                             failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=CHECKPOINT_SCORE,
                                                                checkpoint_score_order="min")),
    )


def send_checkpointed_metrics(run_id: str, ray_name: str, storage_path: str, filesystem=None) -> None:
    """Send the metrics that travel inside a run's checkpoints and never reached MLflow: a trial that Tune
    stopped ended before its worker sent them (see worker.MetricBuffer)."""
    import json

    import pyarrow.fs

    fs = filesystem or pyarrow.fs.LocalFileSystem()
    folder = f"{storage_path.rstrip('/')}/{ray_name}"
    rows = []
    for info in fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True)):
        if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_"):
            try:
                with fs.open_input_stream(f"{info.path}/{METRICS_FILE}") as f:
                    rows += json.loads(f.read())
            except (FileNotFoundError, OSError):
                continue  # a checkpoint still being written, or one from before metrics travelled in them
    if rows:
        log_missing_metrics(run_id, rows)


def best_checkpoint(result):
    """The checkpoint of a Result with the lowest validation bound, or None where none was validated."""
    # a resumed run's earlier checkpoints come back from Ray's JSON snapshot, where +inf (unvalidated) is null
    scored = [(m.get(CHECKPOINT_SCORE), c) for c, m in (getattr(result, "best_checkpoints", None) or [])]
    scored = [(score, c) for score, c in scored if isinstance(score, (int, float)) and math.isfinite(score)]
    return min(scored, key=lambda sc: sc[0])[1] if scored else None


def log_run_models(result, run_id: str, run_model: str = "final") -> tuple[str, str]:
    """Log the EMA weights of the final checkpoint of a Result (or of a bare checkpoint) as an MLflow
    model, and those of the best-validation checkpoint beside it; `run_model` says which of the two is
    the run's model. Returns (the run's model URI, its checkpoint path)."""
    from pipelines.model_store import build, log_model

    final = getattr(result, "checkpoint", result)
    if final is None:
        raise PipelineError("training ended without a checkpoint")
    best = best_checkpoint(result)
    if best is not None and best.path == final.path:  # the last validation was the best: one model, two roles
        best, final_roles = None, ("final", "best")
    else:
        final_roles = ("final",)
    logged = {}
    for roles, checkpoint in ((final_roles, final), (("best",), best)):
        if checkpoint is None:
            continue
        with opened(checkpoint) as (folder, location):
            meta = read_config(folder, location)
            model = build(meta, load_weights(folder, "ema", location))
        uri = log_model(model, meta, run_id, roles=roles, is_run_model=run_model in roles)
        logged.update({role: (uri, checkpoint.path) for role in roles})
    if run_model not in logged:
        raise PipelineError(f"training.run_model is {run_model!r} but no checkpoint was validated: validation needs "
                            "data.val, and val_every within training.steps")
    return logged[run_model]


def _resumed(client, run_id: str) -> tuple[ExperimentConfig, str]:
    """The config and Ray Train run name of a run to resume."""
    import mlflow
    import yaml

    try:
        run = client.get_run(run_id)
    except Exception:
        raise PipelineError(f"unknown run {run_id}: nothing to resume (find runs with `bfn runs list`)") from None
    if TAG_RAY_RUN_NAME not in run.data.tags:
        raise PipelineError(f"run {run_id} is not a bfn training run: it has no {TAG_RAY_RUN_NAME} tag")
    if run.info.status == "FINISHED":
        raise PipelineError(f"run {run_id} finished: nothing to resume (to train longer, start a new run with a higher "
                            "training.steps)")
    cfg = ExperimentConfig.model_validate(yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml")))
    return cfg, run.data.tags[TAG_RAY_RUN_NAME]


def train(cfg: ExperimentConfig | None, *, resume_run: str | None = None, ray_address: str | None = None,
          num_cpus: int | None = None, on_progress: ProgressFn | None = None,
          on_start: Callable[[str, ExperimentConfig], None] | None = None) -> TrainOutcome:
    """Run (or resume) a training run: MLflow run -> Ray TorchTrainer -> the run's EMA models in MLflow.
    on_start(run id, config) is called once the run exists; on_progress gets rank 0's progress records
    (pipelines.progress) while it trains."""
    import mlflow

    from pipelines.ray_runtime import init_ray
    from pipelines.tracking import resolve_run_id, setup_mlflow

    uri = setup_mlflow()
    client = mlflow.MlflowClient()
    if resume_run:
        resume_run = resolve_run_id(resume_run)
        cfg, ray_name = _resumed(client, resume_run)
        prep, run_id = prepare(cfg), resume_run
        client.update_run(run_id, status="RUNNING")
    else:
        prep = prepare(cfg)
        run_id, ray_name = start_run(prep)

    if on_start:
        on_start(run_id, prep.cfg)
    previous_handler = None
    _STOPPED_BY.clear()
    try:
        init_ray(ray_address, num_cpus=num_cpus, env={ENV_MLFLOW_TRACKING_URI: uri})
        previous_handler = _stop_on_sigterm()  # after Ray's driver set its own (a plain exit)
        with ProgressReceiver(on_progress) if on_progress else nullcontext() as receiver:
            trainer = make_trainer(prep, run_id=run_id, tracking_uri=uri, name=ray_name,
                                   progress_queue=receiver.queue if receiver else None)
            result = trainer.fit()
        model_uri, ckpt_path = log_run_models(result, run_id, prep.cfg.training.run_model)
        client.set_terminated(run_id, status="FINISHED")
    except BaseException as err:
        message = f"stopped by {_STOPPED_BY[0]}" if _STOPPED_BY else failure_message(err)
        recorded = _record_end(client, run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED", message)
        if isinstance(err, KeyboardInterrupt):
            raise
        resume = f"`bfn train --resume {run_id}`"
        if deterministic_cause(err) is not None:  # no resume hint: a resume would meet the same fault
            raise PipelineError(f"training run {run_id} failed: {message}") from err
        if not recorded:
            raise PipelineError(f"training run {run_id} stopped: the MLflow tracking server {uri} did not take its records "
                                f"({one_line(message, 160)}); its unsent metrics are kept in its checkpoints: once the "
                                f"server answers, finish the run with {resume}") from err
        if isinstance(err, PipelineError):
            raise
        raise PipelineError(f"training run {run_id} failed: {message} (resume with {resume})") from err
    finally:
        _restore_sigterm(previous_handler)
    return TrainOutcome(run_id, model_uri, ckpt_path, dict(result.metrics or {}))


def _record_end(client, run_id: str, status: str, message: str) -> bool:
    """Mark the run ended with its error; False when the tracking server did not take it."""
    try:
        client.set_tag(run_id, TAG_ERROR, message[:4000])
        client.set_terminated(run_id, status=status)
    except Exception:  # the tracking server is away: the caller says what to do once it is back
        return False
    return True


_STOPPED_BY: list[str] = []  # the signal that stopped training, once one has


def _stop_on_sigterm():
    """SIGTERM (a scheduler, `kill`, `bfn jobs stop`) ends training like Ctrl-C: the run is marked
    KILLED instead of being left RUNNING by a process that died without a word. Only the main
    thread can take signals; elsewhere (a notebook's worker thread) nothing changes."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        def stop(signum, frame):
            _STOPPED_BY[:] = [signal.Signals(signum).name]  # Ray may re-raise a bare KeyboardInterrupt
            raise KeyboardInterrupt(f"stopped by {_STOPPED_BY[0]}")

        return signal.signal(signal.SIGTERM, stop)
    return None


def _restore_sigterm(previous) -> None:
    import signal

    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def failure_message(err: BaseException) -> str:
    """One line for a (Ray-wrapped) failure: a deterministic error's own message (it names the shard or
    checkpoint), else the innermost cause's type and last line; cut at a word, never inside one."""
    cause = deterministic_cause(err)
    if cause is not None:
        return one_line(cause, 1000)
    seen = err
    while True:
        nxt = getattr(seen, "cause", None) or getattr(seen, "controller_failure", None) or seen.__cause__
        if nxt is None or nxt is seen:
            break
        seen = nxt
    return one_line(f"{type(seen).__name__}: {one_line(seen, 10**6, last=True) or type(seen).__name__}", 500)
