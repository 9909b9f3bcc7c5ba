"""Benchmark of the GPU training path (not a test): one script, one table, one JSON file.

Measured side by side in one run on one device (the GPU when there is one):

  1. The CIFAR-10 paper network (configs/paper/cifar10_discretised_256.yaml, 256 bins): images/s and
     peak memory of the optimisation step for (a) eager fp32 (NCHW, no TF32), (b) bf16 autocast
     (channels_last, TF32), (c) bf16 + torch.compile (compile time apart), and (b)/(a), (c)/(a);
     model FLOP utilisation of (c): FLOPs per step (torch.utils.flop_counter) / step time / bf16 peak.
  2. The data loader alone over webdataset shards on local disk: examples/s it delivers beside what
     (c) consumes (the headroom).
  3. The real `train_loop_per_worker` on Ray Train (one worker, the GPU, the same shards) beside (c)
     as a plain loop over the same loader: the platform's overhead.
  4. Sampling: samples/s of the 1000-step sampler at batch 256 (per-step time from --sample-steps
     timed steps: every step costs the same); evaluation: examples/s of L^1000 + L^r.
  5. The binarised-MNIST and text8 paper networks: images/s or tokens/s for (a) and (c).

Targets: (c)/(a) >= 2.5 on CIFAR-10, Ray Train >= 0.95 x the plain loop, loader headroom >= 3.
A measurement that fails (out of memory, say) is a row with its error; the others still run.
`--smoke` runs every path at toy sizes on the CPU, compiling with the aot_eager backend (inductor's
C++ build alone takes a minute there), so that a test keeps this script working between GPU runs.
Run: ``python bench/gpu.py [--smoke] [--out FILE]`` (default ``$BFN_HOME/bench/gpu_bench.json``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from bfn_core import make_bfn  # noqa: E402
from pipelines.acceleration import Acceleration, bf16_peak_flops, configure_backends  # noqa: E402
from pipelines.config import ExperimentConfig, load_config  # noqa: E402
from pipelines.worker import build_training, optimisation_step, train_batches  # noqa: E402

PAPER = HERE.parent / "configs" / "paper"
# Toy sizes for --smoke: the same code paths in seconds on a CPU.
SMOKE = {"cifar10_discretised_256": {"model.width": 16, "model.n_blocks": 1, "model.norm_groups": 8},
         "mnist_binarised": {"model.width": 16, "model.blocks_per_level": 1, "model.head_channels": 16},
         "text8": {"model.width": 32, "model.depth": 1, "model.heads": 2}}


def paper_config(name: str, batch: int, smoke: bool, **sets) -> ExperimentConfig:
    overrides = {**(SMOKE[name] if smoke else {}), "training.batch_size": batch, "training.micro_batch_size": None,
                 "scaling.num_workers": 1, **sets}
    return load_config(PAPER / f"{name}.yaml", overrides)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_batch(cfg: ExperimentConfig, shape, batch: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Data of the config's kind: bin centres, class indices or values in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    if cfg.data.kind == "discrete":
        return torch.randint(0, cfg.data.num_classes, (batch, *shape), generator=g).to(device)
    k = cfg.data.num_classes or 256
    return ((2 * torch.randint(0, k, (batch, *shape), generator=g).float() + 1) / k - 1).to(device)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def time_steps(cfg: ExperimentConfig, shape, accel: Acceleration, steps: int, batches=None, tf32: bool = True) -> dict:
    """Examples/s of the optimisation step over `steps` timed steps after a warm-up (the first step's
    time, which holds the compilation, reported apart); on-device random data unless `batches`."""
    if accel.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(accel.device)
    bfn, ema, opt = build_training(cfg, shape, accel)
    configure_backends(accel.device, tf32)  # after the build, which turns TF32 on: (a) is plain float32
    fixed = [random_batch(cfg, shape, cfg.micro_batch_size, accel.device, s) for s in range(4)]
    stream = batches or (fixed[i % 4] for i in range(10**9))
    dims, b = math.prod(shape), cfg.training.batch_size

    def run(n: int, start: int) -> float:
        sync(accel.device)
        t0 = time.perf_counter()
        for s in range(start, start + n):
            optimisation_step(bfn, bfn, ema, opt, [next(stream) for _ in range(cfg.accumulation_steps)], cfg, s, dims,
                              accel)
        sync(accel.device)
        return time.perf_counter() - t0

    first = run(1, 0)
    run(2, 1)  # cuDNN autotuning and allocator warm-up, outside the timed steps
    seconds = run(steps, 3)
    return {"examples_per_s": steps * b / seconds, "step_s": seconds / steps, "first_step_s": first,
            "peak_gib": peak_memory_gib(accel.device)}


def flops_per_step(cfg: ExperimentConfig, shape, device: torch.device) -> float:
    """FLOPs of one forward and backward pass of the loss at the config's batch (eager, counted by op)."""
    from torch.utils.flop_counter import FlopCounterMode

    bfn = make_bfn(data_shape=shape, **cfg.bfn_kwargs()).to(device)
    x = random_batch(cfg, shape, cfg.training.batch_size, device)
    with FlopCounterMode(display=False) as counter:
        bfn(x, cfg.loss.n_steps, n_mc=cfg.loss.n_mc).mean().backward()
    return float(counter.get_total_flops())


def write_fake_shards(cfg_name: str, n: int, folder: Path) -> str:
    """A shard set of random examples with the paper set's schema, written by the real writer."""
    from data import SETS, fake_source  # bench/data.py

    from pipelines.data.writer import write_shards

    real = SETS[{"cifar10_discretised_256": "cifar10_256"}[cfg_name]][0]
    write_shards(fake_source("gpu-bench", real, n), "train", str(folder), shard_size=1024)
    return str(folder / "train" / "manifest.json")


def loader_rate(cfg: ExperimentConfig, device: torch.device, batches: int) -> float:
    """Examples/s the loader delivers to the host (workers decoding, pinned on GPU), nothing consuming them."""
    from pipelines.data.reader import make_loader

    loader, per_epoch = make_loader(cfg.data.train, batch_size=cfg.micro_batch_size, rank=0, world_size=1,
                                    num_workers=cfg.data.loader_workers, data_kind=cfg.data.kind,
                                    num_classes=cfg.data.num_classes, shuffle_buffer=cfg.data.shuffle_buffer,
                                    pin_memory=device.type == "cuda", prefetch_factor=cfg.data.prefetch_batches)
    it, n = iter(loader), 0
    next(it)  # worker start-up is not throughput
    t0 = time.perf_counter()
    for _ in range(min(batches, per_epoch - 1)):
        n += len(next(it)["x"])
    return n / (time.perf_counter() - t0)


def plain_loop_on_shards(cfg: ExperimentConfig, shape, accel: Acceleration, steps: int) -> float:
    """(c) in a plain loop fed by the platform's loader, as the Ray worker is fed."""
    bfn = make_bfn(data_shape=shape, **cfg.bfn_kwargs())
    batches = train_batches(cfg, 0, 1, 0, accel.device, check=bfn.flow.check_data)
    return time_steps(cfg, shape, accel, steps, batches=batches)["examples_per_s"]


def ray_train_rate(cfg: ExperimentConfig, shape, use_gpu: bool, cpus: int) -> float:
    """Examples/s of the real train_loop_per_worker on Ray Train, as its worker measured its last window."""
    from pipelines.ray_runtime import init_ray

    init_ray(num_cpus=cpus)  # before importing ray.train, which would fix the node's address to the network's
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.worker import train_loop_per_worker

    try:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"experiment": cfg.model_dump(mode="json"), "data_shape": list(shape)},
            scaling_config=ScalingConfig(num_workers=1, use_gpu=use_gpu, resources_per_worker={"CPU": cpus}),
            run_config=RunConfig(name=f"bench-gpu-{time.time_ns()}", storage_path=cfg.storage.path,
                                 checkpoint_config=CheckpointConfig(num_to_keep=1)),
        )
        return float(trainer.fit().metrics["samples_per_second"])
    finally:
        ray.shutdown()


def sampling_rates(cfg: ExperimentConfig, shape, accel: Acceleration, batch: int, timed_steps: int) -> dict:
    """Samples/s of the 1000-step sampler and examples/s of L^1000 + L^r, the network as (c) in eval mode."""
    bfn = accel.prepare(make_bfn(data_shape=shape, **cfg.bfn_kwargs()).eval())
    g = torch.Generator(device=accel.device).manual_seed(0)
    with accel.autocast():
        bfn.sample((batch, *shape), 2, generator=g)  # compile for this shape before timing
        sync(accel.device)
        t0 = time.perf_counter()
        bfn.sample((batch, *shape), timed_steps, generator=g)
        sync(accel.device)
        per_step = (time.perf_counter() - t0) / timed_steps
        x = random_batch(cfg, shape, batch, accel.device)
        bfn.nll(x, n_steps=1000, generator=g)
        sync(accel.device)
        t0 = time.perf_counter()
        for _ in range(3):
            bfn.nll(x, n_steps=1000, generator=g)
        sync(accel.device)
        nll_s = (time.perf_counter() - t0) / 3
    return {"samples_per_s_1000_steps": batch / (1000 * per_step), "sample_step_s": per_step,
            "eval_examples_per_s": batch / nll_s}


def attempt(results: dict, key: str, fn, *args, **kwargs):
    """Run one measurement; a failure becomes its row's error (the rest still run)."""
    try:
        results[key] = fn(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - one row's failure must not lose the others
        results[key] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"}
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print(f"  {key}: {results[key]}", file=sys.stderr, flush=True)
    return results[key]


def ratio(results: dict, num: str, den: str, field: str = "examples_per_s") -> float | None:
    a, b = results.get(num, {}), results.get(den, {})
    return a[field] / b[field] if field in a and field in b else None


def fmt(value, spec: str = ".1f", none: str = "n/a") -> str:
    return none if value is None else format(value, spec)


def step_row(label: str, row: dict, unit: str = "images/s", scale: float = 1.0) -> str:
    if "error" in row:
        return f"  {label:<34} FAILED: {row['error']}"
    return (f"  {label:<34} {row['examples_per_s'] * scale:10.1f} {unit:<9} {row['step_s'] * 1e3:9.1f} ms/step  "
            f"peak {fmt(row['peak_gib'], '.2f')} GiB  first step {row['first_step_s']:.1f} s")


def verdict(value: float | None, target: float) -> str:
    return "n/a" if value is None else f"{value:.2f}   target >= {target}  {'PASS' if value >= target else 'MISS'}"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every path at toy sizes on the CPU (a test runs this)")
    parser.add_argument("--out", default=None, help="the JSON file of all figures (default: $BFN_HOME/bench/gpu_bench.json)")
    parser.add_argument("--steps", type=int, help="timed optimisation steps per measurement (default 20; smoke 2)")
    parser.add_argument("--cifar-batch", type=int, help="per-GPU batch of the CIFAR-10 network (default 128)")
    parser.add_argument("--mnist-batch", type=int, help="per-GPU batch of the MNIST network (default 128)")
    parser.add_argument("--text8-batch", type=int, help="per-GPU sequences of the text8 network (default 32)")
    parser.add_argument("--sample-batch", type=int, help="samples drawn together (default 256)")
    parser.add_argument("--sample-steps", type=int, help="timed sampler steps; each of the 1000 costs the same (default 20)")
    parser.add_argument("--backend", help="torch.compile backend (default inductor; smoke aot_eager)")
    args = parser.parse_args(argv)
    smoke = args.smoke
    pick = lambda value, full, toy: value if value is not None else (toy if smoke else full)  # noqa: E731
    steps, sample_steps = pick(args.steps, 20, 2), pick(args.sample_steps, 20, 2)
    backend = pick(args.backend, "inductor", "aot_eager")
    if not smoke and not torch.cuda.is_available():
        sys.exit("error: no GPU visible to PyTorch: run this on a machine with one, or pass --smoke for the toy-size CPU run")
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    peak = bf16_peak_flops(name) if device.type == "cuda" else None
    results: dict = {"device": name, "torch": torch.__version__, "smoke": smoke, "timed_steps": steps,
                     "compile_backend": backend, "bf16_peak_flops": peak}
    bf16 = torch.bfloat16
    eager_fp32 = Acceleration(device, None, False, layout="nchw")
    autocast_bf16 = Acceleration(device, bf16, False)
    compiled_bf16 = Acceleration(device, bf16, True, backend=backend)
    print(f"bench/gpu.py on {name}, torch {torch.__version__}, compile backend {backend}"
          f"{' (smoke: toy sizes)' if smoke else ''}", file=sys.stderr, flush=True)

    # 1. CIFAR-10: (a), (b), (c), MFU
    cifar = paper_config("cifar10_discretised_256", pick(args.cifar_batch, 128, 4), smoke)
    shape = tuple(cifar.data.shape)
    results["cifar10/params"] = sum(p.numel() for p in make_bfn(data_shape=shape, **cifar.bfn_kwargs()).parameters())
    attempt(results, "cifar10/a_eager_fp32", time_steps, cifar, shape, eager_fp32, steps, tf32=False)
    attempt(results, "cifar10/b_bf16_autocast", time_steps, cifar, shape, autocast_bf16, steps)
    attempt(results, "cifar10/c_bf16_compile", time_steps, cifar, shape, compiled_bf16, steps)
    flops = attempt(results, "cifar10/flops_per_step", lambda: {"flops": flops_per_step(cifar, shape, device)})
    c = results["cifar10/c_bf16_compile"]
    mfu = (flops["flops"] / c["step_s"] / peak) if peak and "flops" in flops and "step_s" in c else None
    results["cifar10/mfu_c"] = mfu

    # 2-3. loader headroom and the platform's overhead, on shards written to local disk
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        batch = cifar.training.batch_size
        per_run = batch * (2 * max(steps, 10) + 8)
        sets = {"data.train": write_fake_shards("cifar10_discretised_256", min(per_run, 20000 if not smoke else 64),
                                                tmp / "shards"),
                "data.val": None, "data.test": None, "storage.path": str(tmp / "ray"),
                "training.steps": 2 * max(steps, 10), "training.log_every": max(steps, 10),
                "training.checkpoint_every": 2 * max(steps, 10), "training.num_samples": 2,
                "training.run_model": "final"}
        if smoke:  # the worker's own settings: bf16 eager (inductor would compile for a minute on a CPU)
            sets.update({"data.loader_workers": 1, "scaling.cpus_per_worker": 1, "training.precision": "bf16",
                         "training.compile": "off"})
        fed = paper_config("cifar10_discretised_256", batch, smoke, **sets)
        worker_accel = Acceleration.resolve(device, fed.training.precision, fed.training.compile)
        loader = attempt(results, "cifar10/loader_examples_per_s", lambda: {"examples_per_s": loader_rate(fed, device, 50)})
        results["cifar10/loader_headroom"] = ratio(results, "cifar10/loader_examples_per_s", "cifar10/c_bf16_compile")
        plain = attempt(results, "cifar10/plain_loop_on_shards",
                        lambda: {"examples_per_s": plain_loop_on_shards(fed, shape, worker_accel, max(steps, 10))})
        ray_row = attempt(results, "cifar10/ray_train_1_worker",
                          lambda: {"examples_per_s": ray_train_rate(fed, shape, device.type == "cuda",
                                                                    int(fed.scaling.cpus_per_worker))})
        results["cifar10/ray_over_plain"] = ratio(results, "cifar10/ray_train_1_worker", "cifar10/plain_loop_on_shards")

    # 4. sampling and evaluation
    sampling = attempt(results, "cifar10/sampling", sampling_rates, cifar, shape, compiled_bf16,
                       pick(args.sample_batch, 256, 4), sample_steps)

    # 5. the other paper networks
    for key, batch, unit, per_example in (("mnist_binarised", pick(args.mnist_batch, 128, 4), "images/s", 1),
                                          ("text8", pick(args.text8_batch, 32, 2), "tokens/s", 256)):
        cfg = paper_config(key, batch, smoke)
        shape_k = tuple(cfg.data.shape)
        attempt(results, f"{key}/a_eager_fp32", time_steps, cfg, shape_k, eager_fp32, steps, tf32=False)
        attempt(results, f"{key}/c_bf16_compile", time_steps, cfg, shape_k, compiled_bf16, steps)

    # the table
    print(f"\nCIFAR-10 paper network ({results['cifar10/params']:,} parameters), batch {cifar.training.batch_size}, "
          f"{steps} timed steps, {name}")
    for label, key in (("(a) eager fp32", "a_eager_fp32"), ("(b) bf16 autocast", "b_bf16_autocast"),
                       ("(c) bf16 + torch.compile", "c_bf16_compile")):
        print(step_row(label, results[f"cifar10/{key}"]))
    print(f"  (b)/(a) {fmt(ratio(results, 'cifar10/b_bf16_autocast', 'cifar10/a_eager_fp32'), '.2f')}   "
          f"(c)/(a) {verdict(ratio(results, 'cifar10/c_bf16_compile', 'cifar10/a_eager_fp32'), 2.5)}")
    print("  model FLOP utilisation of (c): "
          + (f"{mfu:.1%} ({flops['flops'] / 1e12:.2f} TFLOP/step, bf16 peak {peak / 1e12:.0f} TFLOP/s)" if mfu is not None
             else f"unknown ({'no bf16 peak known for this device' if not peak else 'a measurement failed'})"))
    print(f"  data loader alone {fmt(loader.get('examples_per_s'))} examples/s ({fed.data.loader_workers} workers); "
          f"headroom over (c) {verdict(results['cifar10/loader_headroom'], 3)}")
    print(f"  plain loop on the shards {fmt(plain.get('examples_per_s'))}, Ray Train 1 worker "
          f"{fmt(ray_row.get('examples_per_s'))} images/s ({worker_accel.describe()}); "
          f"Ray/plain {verdict(results['cifar10/ray_over_plain'], 0.95)}")
    print(f"  sampling, 1000 steps, batch {pick(args.sample_batch, 256, 4)}: "
          f"{fmt(sampling.get('samples_per_s_1000_steps'), '.2f')} samples/s; "
          f"evaluation L^1000 + L^r: {fmt(sampling.get('eval_examples_per_s'))} examples/s")
    for key, label, unit, scale in (("mnist_binarised", "binarised MNIST", "images/s", 1),
                                    ("text8", "text8", "tokens/s", 256)):
        print(f"\n{label} paper network")
        print(step_row("(a) eager fp32", results[f"{key}/a_eager_fp32"], unit, scale))
        print(step_row("(c) bf16 + torch.compile", results[f"{key}/c_bf16_compile"], unit, scale))
        print(f"  (c)/(a) {fmt(ratio(results, f'{key}/c_bf16_compile', f'{key}/a_eager_fp32'), '.2f')}")
    from pipelines.tracking import bfn_home

    out = Path(args.out) if args.out else bfn_home() / "bench" / "gpu_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")
    return results


if __name__ == "__main__":
    main()
