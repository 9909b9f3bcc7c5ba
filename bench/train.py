"""Benchmark of training throughput (not a test): Ray Train beside a plain PyTorch loop, 2 workers beside 1.

Measured in this one run, on the same model, batch and data (the digits config's U-Net, its shards
written to a temporary folder):

  * plain loop: `pipelines.worker.optimisation_step` in a Python loop over `train_batches`, in this
    process, with T torch threads;
  * Ray Train, 1 worker: the real `train_loop_per_worker` in a TorchTrainer with one worker of T CPUs;
  * Ray Train, 2 workers: two workers of T/2 CPUs each (DDP over gloo), same batch per worker.

Each run takes `--steps` warm-up steps, then times `--steps` more; the Ray figure is the rate the
worker itself measures over its last logging window (startup and the final checkpoint excluded).
Targets: Ray Train (1 worker) >= 0.9 x the plain loop in steps per second, compared at 1 thread and
at T threads; the 2-worker samples per second are printed beside 1 worker's on the same T CPUs.
Run: ``python bench/train.py [--steps 100] [--cpus 2]``.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

from bfn_core import make_bfn  # noqa: E402
from pipelines.config import ExperimentConfig, load_config  # noqa: E402
from pipelines.data.writer import write_shards  # noqa: E402
from pipelines.worker import ema_copy, make_optimizer, optimisation_step, train_batches  # noqa: E402

CONFIG = HERE.parent / "configs" / "digits_discretised.yaml"


def bench_config(manifest: Path, steps: int, workers: int, cpus: int, storage: Path, batch_size: int) -> ExperimentConfig:
    sets = {"data.train": manifest, "data.val": "null", "data.test": "null", "training.steps": 2 * steps,
            "training.log_every": steps, "training.checkpoint_every": 2 * steps, "training.batch_size": batch_size * workers,
            "scaling.num_workers": workers, "scaling.cpus_per_worker": cpus, "storage.path": storage}
    return load_config(CONFIG, {k: str(v) if isinstance(v, Path) else v for k, v in sets.items()})


def plain_loop(cfg: ExperimentConfig, data_shape, threads: int) -> float:
    """Steps per second of the same optimisation step with no Ray: the reference."""
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.training.seed)
    bfn = make_bfn(data_shape=data_shape, **cfg.bfn_kwargs())
    ema = ema_copy(bfn)
    opt = make_optimizer(bfn, cfg)
    batches = train_batches(cfg, 0, 1, 0, torch.device("cpu"))
    dims, window = math.prod(data_shape), cfg.training.log_every
    for step in range(cfg.training.steps):
        if step == window:
            start = time.perf_counter()
        loss, _ = optimisation_step(bfn, bfn, ema, opt, [next(batches)], cfg, step, dims)
        loss.item()  # the Ray loop syncs on the loss every step too
    return window / (time.perf_counter() - start)


def ray_run(cfg: ExperimentConfig, data_shape, threads_per_worker: int) -> float:
    """Samples per second of the real training loop on Ray Train, as its rank 0 measured them."""
    from pipelines.ray_runtime import init_ray

    # one Ray session per layout: OMP_NUM_THREADS is a runtime_env setting, fixed per session; started
    # before importing ray.train, which would fix the node's address to the network's
    init_ray(num_cpus=cfg.scaling.num_workers * cfg.scaling.cpus_per_worker,
             env={"OMP_NUM_THREADS": str(threads_per_worker)})
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.worker import train_loop_per_worker

    try:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"experiment": cfg.model_dump(mode="json"), "data_shape": list(data_shape)},
            scaling_config=ScalingConfig(num_workers=cfg.scaling.num_workers,
                                         resources_per_worker={"CPU": cfg.scaling.cpus_per_worker}),
            run_config=RunConfig(name=f"bench-{cfg.scaling.num_workers}w-{time.time_ns()}", storage_path=cfg.storage.path,
                                 checkpoint_config=CheckpointConfig(num_to_keep=1)),
        )
        return float(trainer.fit().metrics["samples_per_second"])
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="warm-up steps, then as many timed steps")
    parser.add_argument("--cpus", type=int, default=min(2, os.cpu_count() or 1), help="CPUs of the 1-worker runs")
    parser.add_argument("--batch-size", type=int, default=32, help="per worker")
    args = parser.parse_args()
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_shards("digits", "train", str(tmp / "digits"), shard_size=256)
        manifest = tmp / "digits" / "train" / "manifest.json"
        shape, b = (8, 8, 1), args.batch_size
        first = bench_config(manifest, args.steps, 1, args.cpus, tmp / "ray", b)
        print(f"digits U-Net (width {first.model.width}), batch {b} per worker, {args.steps} timed steps, "
              f"torch {torch.__version__}, {os.cpu_count()} cores", flush=True)
        rows, ratios = [], []
        # With as many torch threads as cores, Ray's own processes (controller, raylet) compete with
        # the spinning OpenMP threads; one thread fewer than cores shows the framework's cost alone.
        for threads in sorted({1, args.cpus}):
            cfg = bench_config(manifest, args.steps, 1, threads, tmp / "ray", b)
            plain = plain_loop(cfg, shape, threads)
            rows.append((f"plain PyTorch loop, {threads} thread(s)", plain))
            print(f"{rows[-1][0]:<40} {plain:8.2f} steps/s  {plain * b:9.1f} samples/s", flush=True)
            ray1 = ray_run(cfg, shape, threads) / b
            rows.append((f"Ray Train, 1 worker x {threads} CPU(s)", ray1))
            print(f"{rows[-1][0]:<40} {ray1:8.2f} steps/s  {ray1 * b:9.1f} samples/s", flush=True)
            ratios.append((threads, ray1 / plain))
        half = max(args.cpus // 2, 1)
        two = bench_config(manifest, args.steps, 2, half, tmp / "ray", b)
        ray2_samples = ray_run(two, shape, half)
        print(f"{f'Ray Train, 2 workers x {half} CPU (DDP, gloo)':<40} {ray2_samples / (2 * b):8.2f} steps/s  "
              f"{ray2_samples:9.1f} samples/s", flush=True)
        one_full = rows[-1][1] * b  # 1 worker on all args.cpus CPUs
        print()
        for threads, ratio in ratios:
            print(f"Ray Train 1 worker / plain loop at {threads} thread(s) (steps/s): {ratio:.3f}   target >= 0.9  "
                  f"{'PASS' if ratio >= 0.9 else 'MISS'}")
        print(f"2 workers x {half} CPU / 1 worker x {args.cpus} CPUs (samples/s): {ray2_samples / one_full:.3f}")


if __name__ == "__main__":
    main()
