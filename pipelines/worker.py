"""One Ray Train worker: `train_loop_per_worker(config)` is the whole training program of a worker.

It builds the BFN, restores the last checkpoint, and trains with DDP: each optimiser step takes the
global batch (`training.batch_size`) as `accumulation_steps` micro-batches per worker, clips,
steps AdamW and updates the EMA. The EMA model is kept in eval mode, so validation and the sample
pictures measure the network without dropout. Metric history reaches MLflow from rank 0 only, in
step with the checkpoints (see MetricBuffer), so a run that fails and resumes records one history.

While the MLflow tracking server is unreachable, training goes on: the worker never fails because of it.
Each MLflow request gives up after the bounded retries of tracking.MLFLOW_HTTP_DEFAULTS (the driver's
settings reach the worker in its config, whatever the worker's environment); metrics not taken stay
pending, travel in every checkpoint and go out with the next send that succeeds, or, when the server
is still down at the end, with `bfn train --resume RUN` (the driver says so; see
pipelines.training). A sample picture that cannot be logged is skipped, with a warning.
"""
from __future__ import annotations

import copy
import math
import os
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from bfn_core import LikelihoodAccumulator, accumulate_likelihood, make_bfn
from pipelines.acceleration import (
    Acceleration,
    configure_backends,
    ddp_options,
    fused_adamw_available,
    match_optimizer_layout,
)
from pipelines.checkpoints import load_checkpoint, opened, save_checkpoint
from pipelines.config import ExperimentConfig
from pipelines.errors import one_line
from pipelines.model_store import model_meta
from pipelines.names import (
    CHECKPOINT_SCORE,
    ENV_MLFLOW_TRACKING_URI,
    LOSS,
    RESUMED_FROM_STEP,
    SAMPLES_PER_SECOND,
    STEP,
    val_metric,
)
from pipelines.progress import ProgressSender
from pipelines.seeds import derive_seed
from pipelines.tracking import MetricBuffer, system_metrics

def lr_factor(step: int, warmup: int) -> float:
    return 1.0 if warmup == 0 else min(1.0, (step + 1) / warmup)


def train_batches(cfg: ExperimentConfig, rank: int, world: int, start_step: int, device, check=None):
    """Endless micro-batches of this rank's share on `device`, from optimiser step `start_step` on. The
    epoch (and so its shuffle) follows from the step, and a resumed run skips the batches its checkpoint
    had already seen: the data order is the one an uninterrupted run would have had. Loader workers
    decode ahead; on a GPU each batch is copied from pinned memory one step ahead, overlapping the step.
    `check` (the flow's check_data) sees each batch on the host, before the copy, where it costs no
    wait for the GPU; the loss is then called with check_data=False."""
    from pipelines.data.reader import make_loader

    loader, per_epoch = make_loader(cfg.data.train, batch_size=cfg.micro_batch_size, rank=rank, world_size=world,
                                    num_workers=cfg.data.loader_workers, data_kind=cfg.data.kind,
                                    num_classes=cfg.data.num_classes, seed=cfg.training.seed,
                                    shuffle_buffer=cfg.data.shuffle_buffer, pin_memory=device.type == "cuda",
                                    prefetch_factor=cfg.data.prefetch_batches, verify_sha256=cfg.data.verify_sha256,
                                    labels=cfg.conditioning is not None)
    skip = start_step * cfg.accumulation_steps
    epoch, skip = skip // per_epoch, skip % per_epoch  # straight to the checkpoint's epoch

    def host_batches():
        nonlocal epoch, skip
        while True:
            loader.set_epoch(epoch)
            for i, batch in enumerate(loader):
                if i >= skip:
                    yield batch["x"], batch.get("y")
            skip = 0
            epoch += 1

    ahead = None
    for x, y in host_batches():
        if check is not None:
            check(x)
        x = x.to(device, non_blocking=True)
        batch = x if y is None else (x, y.to(device, non_blocking=True))
        if ahead is not None:
            yield ahead
        ahead = batch


def ema_copy(bfn: nn.Module) -> nn.Module:
    """The EMA model: a frozen copy in eval mode (no dropout when it validates or samples)."""
    return copy.deepcopy(bfn).requires_grad_(False).eval()


def make_optimizer(bfn: nn.Module, cfg: ExperimentConfig, fused: bool = False) -> torch.optim.AdamW:
    """AdamW over the network (one fused kernel with `fused`, on GPU); with weight_decay_on 'weights' only
    linear and convolution weights decay."""
    o = cfg.optimizer
    if o.weight_decay_on == "all":
        groups = [{"params": list(bfn.parameters()), "weight_decay": o.weight_decay}]
    else:
        decayed = {id(m.weight) for m in bfn.modules()
                   if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.weight is not None}
        params = list(bfn.parameters())
        groups = [{"params": [p for p in params if id(p) in decayed], "weight_decay": o.weight_decay},
                  {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, fused=fused or None)


@torch.no_grad()
def validate(ema: nn.Module, cfg: ExperimentConfig, rank: int, world: int, device,
             accel: Acceleration | None = None) -> dict[str, float]:
    """The bound on this rank's validation batches, reduced over ranks: val_bits_<n> (and val_nats_<n>),
    and the checkpoint score (the bound at the first of training.val_steps); the network under accel's
    autocast, as in training."""
    from pipelines.data.reader import evaluation_batches

    t = cfg.training
    steps = list(t.val_steps)
    batches = evaluation_batches(cfg.data.val, batch_size=cfg.micro_batch_size, rank=rank, world_size=world,
                                 data_kind=cfg.data.kind, num_classes=cfg.data.num_classes, device=device,
                                 seed=t.seed, max_batches=t.val_batches, verify_sha256=cfg.data.verify_sha256,
                                 labels=cfg.conditioning is not None)  # a conditional model's bound is -ln p(x | y)
    with (accel or Acceleration.resolve(device, t.precision, "off")).autocast():
        acc = accumulate_likelihood(ema, batches, LikelihoodAccumulator(steps, n_repeats=t.val_repeats))
    table = acc.all_reduce(device).table()
    out = {}
    for row in table.rows:
        out[val_metric(row.label)] = row.bits_per_dim
        out[val_metric(row.label, "nats")] = row.nats
    out[CHECKPOINT_SCORE] = table.rows[0].bits_per_dim
    return out


def _headline_val(report: dict) -> float | None:
    """The validation bound to show: continuous time where validated, else the first step count."""
    values = [v for k, v in report.items() if k.startswith("val_bits_")]
    return report.get(val_metric("inf"), values[0] if values else None)


def sample_pictures(ema: nn.Module, cfg: ExperimentConfig, data_shape, step: int, folder: Path,
                    accel: Acceleration | None = None) -> Path:
    """A picture of samples of the EMA model, drawn with the run's seed (the same noise every time)."""
    from pipelines.pictures import save_samples

    device = next(ema.parameters()).device
    g = torch.Generator(device=device).manual_seed(cfg.training.seed)
    n = cfg.training.num_samples
    # a conditional model's picture cycles through the classes (conditional, unguided samples)
    labels = {"y": torch.arange(n, device=device) % cfg.label_classes} if cfg.label_classes else {}
    with (accel or Acceleration.resolve(device, cfg.training.precision, "off")).autocast():
        samples = ema.sample((n, *data_shape), cfg.training.sample_steps, generator=g, **labels)
    return save_samples(samples.cpu().numpy(), cfg.data.kind, folder / f"samples_step{step:07d}", title=f"step {step}")


def _log_samples(ema, cfg: ExperimentConfig, data_shape, step: int, run_id: str | None, accel: Acceleration) -> None:
    if run_id is None:
        return
    from mlflow import MlflowClient
    from PIL import Image

    # an image keyed by step: the UI shows the grids over training with a step slider; text samples
    # (sequences) stay text files, one per step
    with tempfile.TemporaryDirectory() as tmp:
        picture = sample_pictures(ema, cfg, data_shape, step, Path(tmp), accel)
        try:
            if picture.suffix != ".png":
                MlflowClient().log_artifact(run_id, str(picture), "samples")
                return
            with Image.open(picture) as image:
                MlflowClient().log_image(run_id, image.convert("RGB"), key="samples", step=step)
        except Exception as err:  # MLflow unreachable: a picture is not worth stopping training for
            warnings.warn(f"the samples of step {step} were not logged to run {run_id} ({type(err).__name__}: "
                          f"{one_line(err, 200)})", stacklevel=2)


def build_training(cfg: ExperimentConfig, data_shape, accel: Acceleration):
    """The BFN (seeded: the same initial weights on every rank), its EMA and AdamW, on accel's device,
    laid out and compiled as accel says. Returns (bfn, ema, optimizer)."""
    configure_backends(accel.device)
    torch.manual_seed(cfg.training.seed)
    bfn = accel.place(make_bfn(data_shape=data_shape, **cfg.bfn_kwargs()))
    ema = ema_copy(bfn)  # before compiling: a compiled module does not deep-copy
    opt = make_optimizer(bfn, cfg, fused=fused_adamw_available(accel.device))
    return accel.compile_network(bfn), accel.compile_network(ema), opt


def optimisation_step(model, bfn, ema, opt, micro_batches: list, cfg: ExperimentConfig, step: int,
                      dims: int, accel: Acceleration | None = None, data_checked: bool = False):
    """One AdamW step on the loss in nats per dimension over the micro-batches (gradients accumulated,
    synchronised once), the network under accel's autocast (default: the config's precision on the
    batches' device; the loss in float32 either way, see BFN.loss), clipped, then the EMA.

    `model` is what the forward pass goes through (DDP-wrapped or not), `bfn` owns the parameters;
    `data_checked`: the batches were checked on the host (see train_batches), so the loss skips it.
    A micro-batch is x, or (x, y) for a conditional model (labels dropped to the null class at
    conditioning.label_dropout). Returns (mean loss, grad norm before clipping) as tensors."""
    t = cfg.training
    micro_batches = [mb if isinstance(mb, tuple) else (mb, None) for mb in micro_batches]
    device = micro_batches[0][0].device
    accel = accel or Acceleration.resolve(device, t.precision, "off")
    labelled = {"label_dropout": cfg.conditioning.label_dropout} if cfg.conditioning is not None else {}
    for group in opt.param_groups:
        group["lr"] = cfg.optimizer.lr * lr_factor(step, cfg.optimizer.warmup_steps)
    n_steps = cfg.loss.n_steps
    total = torch.zeros((), device=device)
    for i, (x, y) in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with accel.autocast():
                if y is None:
                    loss = model(x, n_steps, n_mc=cfg.loss.n_mc, check_data=not data_checked)
                else:
                    loss = model(x, n_steps, n_mc=cfg.loss.n_mc, check_data=not data_checked, y=y, **labelled)
                loss = loss.mean() / dims
            (loss / len(micro_batches)).backward()
        total += loss.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(bfn.parameters(), t.grad_clip or float("inf"))
    opt.step()
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():  # one multi-tensor kernel, not one launch per parameter
        torch._foreach_lerp_(list(ema.parameters()), list(bfn.parameters()), 1.0 - t.ema_decay)
    return total / len(micro_batches), grad_norm


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker: build, restore, train with DDP, validate, checkpoint."""
    import ray.train
    import ray.train.torch

    cfg = ExperimentConfig.model_validate(config["experiment"])
    data_shape = tuple(config["data_shape"])
    if config.get("tracking_uri"):
        os.environ[ENV_MLFLOW_TRACKING_URI] = config["tracking_uri"]
    os.environ.update(config.get("mlflow_http") or {})  # the driver's bounded retries, not MLflow's minutes
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    accel = Acceleration.resolve(device, cfg.training.precision, cfg.training.compile)
    bfn, ema, opt = build_training(cfg, data_shape, accel)
    t = cfg.training
    step = 0
    metrics = MetricBuffer(config.get("mlflow_run_id") if rank == 0 else None)
    progress_queue = config.get("progress_queue") if rank == 0 else None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with opened(checkpoint) as (folder, location):  # errors name the stored checkpoint, not the download
            step = load_checkpoint(folder, model=bfn, ema=ema, optimizer=opt, location=location)
            metrics.resume(folder, location)
        match_optimizer_layout(opt)
    torch.manual_seed(derive_seed("training-noise", cfg.training.seed, rank, step))  # per rank and per restart
    model = ray.train.torch.prepare_model(bfn, parallel_strategy_kwargs=ddp_options(cfg.accumulation_steps))
    if checkpoint is not None:
        metrics.add(step, **{RESUMED_FROM_STEP: step})  # one point per restart: where training picked up
    dims = math.prod(data_shape)
    batches = train_batches(cfg, rank, world, step, device, check=bfn.flow.check_data)
    saved_config = model_meta(cfg.model_dump(mode="json"), data_shape, cfg.bfn_kwargs())
    tick, tick_step, rate = time.perf_counter(), step, float("nan")
    progress = ProgressSender(progress_queue, t.steps, step)
    with system_metrics(metrics.run_id, cfg.tracking.system_metrics, device.type == "cuda"):
        while step < t.steps:
            micro = [next(batches) for _ in range(cfg.accumulation_steps)]
            loss, grad_norm = optimisation_step(model, bfn, ema, opt, micro, cfg, step, dims, accel, data_checked=True)
            step += 1
            validated = bool(cfg.data.val) and (step % t.val_every == 0 or step == t.steps)
            checkpointed = validated or step % t.checkpoint_every == 0 or step == t.steps
            if step % t.log_every and not checkpointed:
                continue  # no .item() on other steps: the host queues the next step while the GPU runs this one
            loss_value = loss.item()
            if step % t.log_every == 0 or step == t.steps:
                now = time.perf_counter()
                rate = (step - tick_step) * t.batch_size / max(now - tick, 1e-9)
                tick, tick_step = now, step
                metrics.add(step, **{LOSS: loss_value, SAMPLES_PER_SECOND: rate}, loss_bits_per_dim=loss_value / math.log(2),
                            grad_norm=grad_norm.item(), lr=opt.param_groups[0]["lr"])
            report = {STEP: step, LOSS: loss_value, SAMPLES_PER_SECOND: rate, CHECKPOINT_SCORE: math.inf}
            if validated:
                val = validate(ema, cfg, rank, world, device, accel)
                report.update(val)
                metrics.add(step, **{k: v for k, v in val.items() if k != CHECKPOINT_SCORE})
                if rank == 0:
                    _log_samples(ema, cfg, data_shape, step, metrics.run_id, accel)
            # Every validated step is checkpointed too: Ray keeps the best-scoring checkpoint beside the latest.
            if checkpointed:
                with tempfile.TemporaryDirectory() as tmp:
                    if rank == 0:
                        save_checkpoint(tmp, model=bfn, ema=ema, optimizer=opt, step=step, config=saved_config)
                        metrics.save(tmp)
                    ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None)
                metrics.checkpoint_reported(step)
            progress.send(step, loss_bits=loss_value / math.log(2), samples_per_second=rate,
                          val_bits=_headline_val(report) if validated else None, checkpoint_step=step if checkpointed else None)
        metrics.flush()
