"""Distributed training on Ray Train, tracked in MLflow.

`train_loop_per_worker(config)` is the whole training program of one worker; `train(cfg)` is the
driver: it checks the tracking server and the data, opens the MLflow run, starts a TorchTrainer,
and on success logs the final EMA model. Metric history reaches MLflow from rank 0 only, in step
with the checkpoints (see MetricBuffer), so a run that fails and resumes records one history.
"""
from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bfn_core import LikelihoodAccumulator, make_bfn, steps_label
from pipelines.checkpoints import load_checkpoint, load_weights, read_config, save_checkpoint
from pipelines.config import ExperimentConfig
from pipelines.errors import PipelineError

RUN_TAG_RAY_NAME = "bfn.ray_run_name"
RUN_TAG_STORAGE = "bfn.storage_path"
RUN_TAG_DATA_SHAPE = "bfn.data_shape"


# ---------------------------------------------------------------------------------------------
# the worker


class MetricBuffer:
    """Metrics of rank 0, held until the checkpoint that covers their step is persisted.

    After a failure the run resumes from the last checkpoint; metrics of the steps after it were
    never sent, so the MLflow history has each step once.
    """

    def __init__(self, run_id: str | None):
        self.run_id, self.pending = run_id, []

    def add(self, step: int, **values: float) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now, step) for k, v in values.items() if v is not None and math.isfinite(v)]

    def flush(self) -> None:
        if self.run_id is None or not self.pending:
            return
        from mlflow import MlflowClient

        client = MlflowClient()
        for i in range(0, len(self.pending), 500):
            client.log_batch(self.run_id, metrics=self.pending[i: i + 500])
        self.pending = []


def _lr_factor(step: int, warmup: int) -> float:
    return 1.0 if warmup == 0 else min(1.0, (step + 1) / warmup)


def _train_batches(cfg: ExperimentConfig, rank: int, world: int, start_step: int, device):
    """Endless batches of this rank's share. The epoch (and so its shuffle) follows from the step, and
    a resumed run skips the batches its checkpoint had already seen: the data order is the one an
    uninterrupted run would have had."""
    from pipelines.data.reader import make_loader

    epoch, skip = 0, start_step
    while True:
        loader, per_epoch = make_loader(cfg.data.train, batch_size=cfg.training.batch_size, rank=rank, world_size=world,
                                        num_workers=cfg.data.loader_workers, data_kind=cfg.data.kind,
                                        num_classes=cfg.data.num_classes, seed=cfg.training.seed, epoch=epoch,
                                        shuffle_buffer=cfg.data.shuffle_buffer)
        if skip >= per_epoch > 0:
            epoch, skip = skip // per_epoch, skip % per_epoch  # jump straight to the checkpoint's epoch
            continue
        for i, batch in enumerate(loader):
            if i >= skip:
                yield batch["x"].to(device, non_blocking=True)
        skip = 0
        epoch += 1


def _reduce_accumulator(acc: LikelihoodAccumulator, steps, device) -> LikelihoodAccumulator:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return acc
    vec = torch.tensor([float(acc.count)] + [acc.sums.get(s, 0.0) for s in steps] + [acc.sq_sums.get(s, 0.0) for s in steps],
                       dtype=torch.float64, device=device)
    dist.all_reduce(vec)
    out = LikelihoodAccumulator(list(steps), count=int(vec[0].item()), dims=acc.dims)
    out.sums = {s: vec[1 + i].item() for i, s in enumerate(steps)}
    out.sq_sums = {s: vec[1 + len(steps) + i].item() for i, s in enumerate(steps)}
    return out


@torch.no_grad()
def validate(bfn, cfg: ExperimentConfig, rank: int, world: int, device) -> dict[str, float]:
    """The bound on this rank's validation batches, reduced over ranks: val_bits_<n> (and val_nats_<n>)."""
    from bfn_core import evaluate_likelihood
    from pipelines.data.reader import make_loader

    steps = list(cfg.training.val_steps)
    loader, _ = make_loader(cfg.data.val, batch_size=cfg.training.batch_size, rank=rank, world_size=world,
                            num_workers=0, data_kind=cfg.data.kind, num_classes=cfg.data.num_classes,
                            seed=cfg.training.seed, epoch=0, shuffle=False, shuffle_buffer=0)
    batches = []
    for i, batch in enumerate(loader):
        if i >= cfg.training.val_batches:
            break
        x = batch["x"][~batch["pad"]]  # padding repeats samples: count each once
        if len(x):
            batches.append(x.to(device))
    acc = LikelihoodAccumulator(steps)
    evaluate_likelihood(bfn, batches, steps=steps, generator=None, accumulator=acc)
    table = _reduce_accumulator(acc, steps, device).table()
    out = {}
    for row in table.rows:
        out[f"val_bits_{steps_label(row.steps)}"] = row.bits_per_dim
        out[f"val_nats_{steps_label(row.steps)}"] = row.nats
    return out


def _log_samples(bfn, cfg: ExperimentConfig, data_shape, step: int, run_id: str | None) -> None:
    from pipelines.pictures import save_samples

    if run_id is None:
        return
    from mlflow import MlflowClient

    g = torch.Generator(device=next(bfn.parameters()).device).manual_seed(cfg.training.seed)
    samples = bfn.sample((cfg.training.num_samples, *data_shape), cfg.training.sample_steps, generator=g).cpu().numpy()
    with tempfile.TemporaryDirectory() as tmp:
        path = save_samples(samples, cfg.data.kind, Path(tmp) / f"samples_step{step:07d}", title=f"step {step}")
        MlflowClient().log_artifact(run_id, str(path), "samples")


def _maybe_fail(cfg: ExperimentConfig, step: int) -> None:
    """Test-only switch: fail once at a given step (a marker file remembers that it happened)."""
    t = cfg.training
    if t.fail_at_step == step and t.fail_once_marker and not os.path.exists(t.fail_once_marker):
        Path(t.fail_once_marker).write_text(f"failed at step {step}\n")
        raise RuntimeError(f"injected failure at step {step} (training.fail_at_step)")


def optimisation_step(model, bfn, ema, opt, x, cfg: ExperimentConfig, step: int, dims: int):
    """One AdamW step on the loss in nats per dimension (bf16 autocast on GPU), clipped, then the EMA.

    `model` is what the forward pass goes through (DDP-wrapped or not), `bfn` owns the parameters.
    Returns (loss, grad norm before clipping) as tensors."""
    t = cfg.training
    for group in opt.param_groups:
        group["lr"] = cfg.optimizer.lr * _lr_factor(step, cfg.optimizer.warmup_steps)
    n_steps = cfg.loss.n_steps if cfg.loss.type == "discrete_time" else None
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
        loss = model(x, n_steps, n_mc=cfg.loss.n_mc).mean() / dims
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(bfn.parameters(), t.grad_clip or float("inf"))
    opt.step()
    with torch.no_grad():
        for e, p in zip(ema.parameters(), bfn.parameters()):
            e.lerp_(p, 1.0 - t.ema_decay)
    return loss.detach(), grad_norm


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker: build, restore, train with DDP, validate, checkpoint."""
    import ray.train
    import ray.train.torch

    cfg = ExperimentConfig.model_validate(config["experiment"])
    data_shape = tuple(config["data_shape"])
    if config.get("tracking_uri"):
        os.environ["MLFLOW_TRACKING_URI"] = config["tracking_uri"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.training.seed)  # same initial weights on every rank

    bfn = make_bfn(data_shape=data_shape, **cfg.bfn_kwargs()).to(device)
    ema = copy.deepcopy(bfn).requires_grad_(False)
    t = cfg.training
    opt = torch.optim.AdamW(bfn.parameters(), lr=cfg.optimizer.lr, betas=cfg.optimizer.betas,
                            weight_decay=cfg.optimizer.weight_decay)
    step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            step = load_checkpoint(folder, model=bfn, ema=ema, optimizer=opt)
    torch.manual_seed(cfg.training.seed * 7919 + rank + step)  # different noise per rank and per restart
    model = ray.train.torch.prepare_model(bfn)
    metrics = MetricBuffer(config.get("mlflow_run_id") if rank == 0 else None)
    if checkpoint is not None:
        metrics.add(step, resumed_from_step=step)  # one point per restart: where training picked up
    dims = math.prod(data_shape)
    batches = _train_batches(cfg, rank, world, step, device)
    saved_config = {"experiment": cfg.model_dump(mode="json"), "data_shape": list(data_shape),
                    "bfn": cfg.bfn_kwargs(), "format": 1}
    tick, tick_step, rate = time.perf_counter(), step, float("nan")
    while step < t.steps:
        loss, grad_norm = optimisation_step(model, bfn, ema, opt, next(batches), cfg, step, dims)
        step += 1
        _maybe_fail(cfg, step)
        if step % t.log_every == 0 or step == t.steps:
            now = time.perf_counter()
            rate = (step - tick_step) * t.batch_size * world / max(now - tick, 1e-9)
            tick, tick_step = now, step
            metrics.add(step, loss=loss.item(), loss_bits_per_dim=loss.item() / math.log(2), grad_norm=grad_norm.item(),
                        lr=opt.param_groups[0]["lr"], samples_per_second=rate)
        report = {"step": step, "loss": loss.item(), "samples_per_second": rate}
        if cfg.data.val and (step % t.val_every == 0 or step == t.steps):
            val = validate(ema, cfg, rank, world, device)
            report.update(val)
            metrics.add(step, **val)
            if rank == 0:
                _log_samples(ema, cfg, data_shape, step, metrics.run_id)
        if step % t.checkpoint_every == 0 or step == t.steps:
            with tempfile.TemporaryDirectory() as tmp:
                if rank == 0:
                    save_checkpoint(tmp, model=bfn, ema=ema, optimizer=opt, step=step, config=saved_config)
                ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None)
            metrics.flush()
        elif any(k.startswith("val_") for k in report):
            ray.train.report(report)


# ---------------------------------------------------------------------------------------------
# the driver


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


def data_shape_of(manifest_url: str, kind: str, num_classes: int | None) -> tuple[int, ...]:
    """Read the training manifest (a missing one fails here, before Ray starts) and check that it
    can be read as (kind, K): transforms are elementwise, so the stored shape is the data shape."""
    from pipelines.data.manifest import load_manifest
    from pipelines.data.transforms import make_transform

    manifest = load_manifest(manifest_url)
    try:
        make_transform(manifest.field, kind, num_classes, default=manifest.default_read)
    except ValueError as err:
        raise PipelineError(f"data {manifest_url} cannot be read as {kind} data with K={num_classes}: {err}") from None
    return tuple(manifest.field.shape)


def expand_env(url: str) -> str:
    """${VAR} in a config URL (e.g. ${BFN_DATA_URL}/cifar10/train/manifest.json) from the environment."""
    out = os.path.expandvars(url)
    if "$" in out:
        raise PipelineError(f"{url}: environment variable {out[out.index('$'):].split('/')[0]} is not set "
                            "(export it, e.g. `source .bfn/stack.env`, or write the URL out)")
    return out


def absolute_urls(cfg: ExperimentConfig) -> ExperimentConfig:
    """Local paths made absolute: Ray workers do not run in the driver's working directory."""
    def fix(url):
        if not url:
            return url
        url = expand_env(url)
        return url if "://" in url else str(Path(url).resolve())

    data = cfg.data.model_copy(update={k: fix(getattr(cfg.data, k)) for k in ("train", "val", "test")})
    storage = cfg.storage.model_copy(update={"path": fix(cfg.storage.path)})
    training = cfg.training.model_copy(update={"fail_once_marker": fix(cfg.training.fail_once_marker)})
    return cfg.model_copy(update={"data": data, "storage": storage, "training": training})


def check_data(cfg: ExperimentConfig) -> tuple[int, ...]:
    """Every manifest of the config exists and reads as the config's data kind; returns the data shape."""
    shape = data_shape_of(cfg.data.train, cfg.data.kind, cfg.data.num_classes)
    for split in ("val", "test"):
        url = getattr(cfg.data, split)
        if url and data_shape_of(url, cfg.data.kind, cfg.data.num_classes) != shape:
            raise PipelineError(f"data.{split} {url} holds examples of another shape than data.train {cfg.data.train}")
    return shape


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
    again under the same name, Ray Train continues from the latest checkpoint there."""
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
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )


def log_final_model(checkpoint, run_id: str) -> tuple[str, str]:
    """Log the EMA weights of a final checkpoint (or a Result holding one) as the run's MLflow model;
    returns (model URI, checkpoint path)."""
    from pipelines.model_store import build, log_model

    checkpoint = getattr(checkpoint, "checkpoint", checkpoint)
    if checkpoint is None:
        raise PipelineError("training ended without a checkpoint")
    with checkpoint.as_directory() as folder:
        meta = read_config(folder)
        model = build(meta, load_weights(folder, "ema"))
    return log_model(model, meta, run_id), checkpoint.path


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
        model_uri, ckpt_path = log_final_model(result, run_id)
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
