"""Distributed training on Ray Train, tracked in MLflow: the driver.

`train(cfg)` checks the tracking server and the data, opens the MLflow run, starts a TorchTrainer
running `pipelines.worker.train_loop_per_worker`, and on success logs the EMA weights of the final
checkpoint and of the best-validation checkpoint as MLflow models, one of them the run's model.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from pipelines.checkpoints import load_weights, read_config
from pipelines.config import ExperimentConfig, absolute_urls
from pipelines.errors import PipelineError
from pipelines.check import check_data
from pipelines.worker import CHECKPOINT_SCORE, train_loop_per_worker

RUN_TAG_RAY_NAME = "bfn.ray_run_name"
RUN_TAG_STORAGE = "bfn.storage_path"
RUN_TAG_DATA_SHAPE = "bfn.data_shape"


@dataclass
class TrainOutcome:
    run_id: str
    model_uri: str
    checkpoint_path: str
    metrics: dict


def storage_location(path: str | None):
    """(storage_path, pyarrow filesystem or None) for RunConfig: local folder or s3://bucket/prefix.
    Unset, it is $BFN_STORAGE_PATH (the stack's and the cluster's checkpoint store), else ./.bfn/ray_results."""
    from pipelines.tracking import bfn_home

    path = path or os.environ.get("BFN_STORAGE_PATH") or str(bfn_home() / "ray_results")
    if path.startswith("s3://"):
        import pyarrow.fs

        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        kwargs = {}
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs = {"endpoint_override": host or scheme, "scheme": scheme if host else "https"}
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        if region:
            kwargs["region"] = region
        return path[len("s3://"):].rstrip("/"), pyarrow.fs.S3FileSystem(**kwargs)
    if path.startswith("file://"):
        path = path[len("file://"):]
    return str(Path(path).resolve()), None


def manifest_digest(manifest_url: str) -> str:
    """A content digest of a shard set: sha256 over its shards' sha256 (not the creation time)."""
    import hashlib

    from pipelines.data.manifest import load_manifest

    m = load_manifest(manifest_url)
    text = "\n".join([m.dataset, m.split] + [f"{s.name}:{s.sha256}" for s in m.shards])
    return hashlib.sha256(text.encode()).hexdigest()


def manifest_tags(cfg: ExperimentConfig) -> dict[str, str]:
    tags = {}
    for split in ("train", "val", "test"):
        url = getattr(cfg.data, split)
        if url:
            tags[f"bfn.data.{split}.sha256"] = manifest_digest(url)
            tags[f"bfn.data.{split}.manifest"] = url
    return tags


def start_run(cfg: ExperimentConfig, data_shape, storage_path: str, extra_tags: dict | None = None) -> tuple[str, str]:
    """A new MLflow run holding the config (params and config.yaml) and the data's digests; returns
    (run id, the Ray Train run name that ties the run to its checkpoints)."""
    import mlflow
    import yaml

    from pipelines.tracking import ensure_experiment, git_commit

    client = mlflow.MlflowClient()
    exp_id = ensure_experiment(cfg.tracking.experiment)
    tags = {**cfg.tracking.tags, **manifest_tags(cfg), RUN_TAG_DATA_SHAPE: ",".join(map(str, data_shape)),
            RUN_TAG_STORAGE: storage_path, "bfn.kind": cfg.data.kind, **(extra_tags or {})}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    run = client.create_run(exp_id, run_name=cfg.tracking.run_name, tags=tags)
    run_id = run.info.run_id
    ray_name = f"bfn-{run_id}"
    client.set_tag(run_id, RUN_TAG_RAY_NAME, ray_name)
    params = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in cfg.flat().items()]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i: i + 100])
    client.log_text(run_id, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), "config.yaml")
    return run_id, ray_name


def make_trainer(cfg: ExperimentConfig, data_shape, *, run_id: str | None, tracking_uri: str | None, name: str,
                 callbacks: list | None = None):
    """The TorchTrainer of one run. Its storage folder is `name` under cfg.storage.path: started
    again under the same name, Ray Train continues from the latest checkpoint there. Ray keeps the
    latest checkpoint and the one with the best validation bound (unvalidated ones score +inf)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage_path, fs = storage_location(cfg.storage.path)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"experiment": cfg.model_dump(mode="json"), "data_shape": list(data_shape),
                           "mlflow_run_id": run_id, "tracking_uri": tracking_uri},
        scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                     resources_per_worker={"CPU": cfg.scaling.cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=storage_path, storage_filesystem=fs, callbacks=callbacks,
                             failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute=CHECKPOINT_SCORE,
                                                                checkpoint_score_order="min")),
    )


def best_checkpoint(result):
    """The checkpoint of a Result with the lowest validation bound, or None where none was validated."""
    scored = [(m.get(CHECKPOINT_SCORE, math.inf), c) for c, m in (getattr(result, "best_checkpoints", None) or [])]
    scored = [(score, c) for score, c in scored if math.isfinite(score)]
    return min(scored, key=lambda sc: sc[0])[1] if scored else None


def log_final_model(result, run_id: str, run_model: str = "final") -> tuple[str, str]:
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
        with checkpoint.as_directory() as folder:
            meta = read_config(folder)
            model = build(meta, load_weights(folder, "ema"))
        uri = log_model(model, meta, run_id, roles=roles, is_run_model=run_model in roles)
        logged.update({role: (uri, checkpoint.path) for role in roles})
    if run_model not in logged:
        raise PipelineError(f"training.run_model is {run_model!r} but no checkpoint was validated: validation needs "
                            "data.val, and val_every within training.steps")
    return logged[run_model]


def train(cfg: ExperimentConfig, *, resume_run: str | None = None, ray_address: str | None = None,
          num_cpus: int | None = None) -> TrainOutcome:
    """Run (or resume) a training run: MLflow run -> Ray TorchTrainer -> final EMA model in MLflow."""
    import mlflow

    from pipelines.ray_runtime import init_ray
    from pipelines.tracking import setup_mlflow

    uri = setup_mlflow()
    client = mlflow.MlflowClient()
    if resume_run:
        try:
            run = client.get_run(resume_run)
        except Exception:
            raise PipelineError(f"unknown run {resume_run}: nothing to resume (find runs with `bfn runs list`)") from None
        if RUN_TAG_RAY_NAME not in run.data.tags:
            raise PipelineError(f"run {resume_run} is not a bfn training run: it has no {RUN_TAG_RAY_NAME} tag")
        import yaml

        cfg = ExperimentConfig.model_validate(yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{resume_run}/config.yaml")))
        run_id, ray_name = resume_run, run.data.tags[RUN_TAG_RAY_NAME]
        data_shape = tuple(int(v) for v in run.data.tags[RUN_TAG_DATA_SHAPE].split(","))
        client.update_run(run_id, status="RUNNING")
    else:
        cfg = absolute_urls(cfg)
        data_shape = check_data(cfg)
        storage_path, _ = storage_location(cfg.storage.path)
        run_id, ray_name = start_run(cfg, data_shape, storage_path)

    try:
        init_ray(ray_address, num_cpus=num_cpus, env={"MLFLOW_TRACKING_URI": uri})
        result = make_trainer(cfg, data_shape, run_id=run_id, tracking_uri=uri, name=ray_name).fit()
        model_uri, ckpt_path = log_final_model(result, run_id, cfg.training.run_model)
    except BaseException as err:
        message = _failure_message(err)
        client.set_tag(run_id, "bfn.error", message[:4000])
        client.set_terminated(run_id, status="KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        if isinstance(err, KeyboardInterrupt):
            raise
        if isinstance(err, PipelineError):
            raise
        raise PipelineError(f"training run {run_id} failed: {message} (resume with `bfn train --resume {run_id}`)") from err
    client.set_terminated(run_id, status="FINISHED")
    return TrainOutcome(run_id, model_uri, ckpt_path, dict(result.metrics or {}))


def _failure_message(err: BaseException) -> str:
    """The innermost cause of a (Ray-wrapped) failure, one line."""
    seen = err
    while True:
        nxt = getattr(seen, "cause", None) or seen.__cause__
        if nxt is None or nxt is seen:
            break
        seen = nxt
    text = str(seen).strip().splitlines()
    last = next((ln for ln in reversed(text) if ln.strip()), type(seen).__name__)
    return f"{type(seen).__name__}: {last.strip()}"[:500]
