"""Benchmark of the sweep's search (not a test): TPE + ASHA beside random search, against a grid.

The task: a discretised BFN (K = 16 bins, an MLP) on a 2-D Gaussian mixture, trained for
`--steps` steps with sigma_1 as the only searched value. Every training is seeded (weights, data,
loss noise) and validated with a fixed generator, so the objective (validation bits per dimension
of the continuous-time bound) is a fixed function of sigma_1. In this one run:

  * grid: a fine log-spaced grid of sigma_1, each trained for the full `--steps`: the curve and its best;
  * TPE + ASHA: the sweep's own searcher and scheduler (sweeps.run._searcher/_scheduler), `--trials` trials;
  * random: Optuna's random sampler, the same number of trials, every trial trained to the end.

Trials run as Ray Tune function trainables on a local Ray (the search is what is measured here;
each trial's TorchTrainer is benchmarked in bench/train.py). Printed: best objective of each, its
gap to the grid's best, and the training steps each search spent.
Target: TPE + ASHA within 2% of the grid's best, with at most half the training steps of random search.
Run: ``python bench/sweep.py [--trials 16] [--steps 600] [--grid 24]``; writes bench_sweep.png.
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

from pipelines.ray_runtime import init_ray  # noqa: E402  (first: a local Ray on loopback)

import torch  # noqa: E402

SIGMA_RANGE = (1e-3, 0.5)
K = 16
REPORT_EVERY = 50


def mixture(n: int, generator: torch.Generator) -> torch.Tensor:
    """Points of a 4-component mixture, discretised to K bins on [-1, 1]."""
    centres = torch.tensor([[-0.5, -0.5], [0.5, 0.5], [-0.5, 0.5], [0.5, -0.5]])
    x = centres[torch.randint(0, 4, (n,), generator=generator)] + 0.12 * torch.randn(n, 2, generator=generator)
    bins = ((x.clamp(-1, 1) + 1) / 2 * K).floor().clamp(0, K - 1)
    return (bins + 0.5) / K * 2 - 1


def train_and_report(config: dict, max_steps: int, report) -> float:
    """Train one sigma_1 (seeded), reporting the objective every REPORT_EVERY steps; returns the last."""
    from bfn_core import evaluate_likelihood, make_bfn

    torch.set_num_threads(1)
    torch.manual_seed(0)
    bfn = make_bfn("discretised", (2,), network="mlp", num_classes=K, sigma_1=config["sigma_1"], hidden=64, depth=2)
    opt = torch.optim.AdamW(bfn.parameters(), lr=3e-3)
    data_g, noise_g = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    val = mixture(2048, torch.Generator().manual_seed(3))
    value = math.nan
    for step in range(1, max_steps + 1):
        loss = bfn.loss(mixture(256, data_g), generator=noise_g).mean() / 2
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bfn.parameters(), 1.0)
        opt.step()
        if step % REPORT_EVERY == 0 or step == max_steps:
            table = evaluate_likelihood(bfn, [val], steps=[None], generator=torch.Generator().manual_seed(4))
            value = table.rows[0].bits_per_dim
            report({"objective": value, "step": step})
    return value


def tune_trial(config: dict, max_steps: int) -> None:
    from ray import tune

    train_and_report(config, max_steps, tune.report)


def search(kind: str, trials: int, steps: int, storage: str, seed: int) -> tuple[float, int, list]:
    """(best full-length objective, total training steps, [(sigma_1, objective, steps)]) of one search."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from sweeps.run import make_scheduler, make_searcher
    from sweeps.spec import load_spec

    spec = load_spec(HERE.parent / "configs" / "sweeps" / "digits_sigma.yaml", [
        f"search.sampler={'tpe' if kind == 'tpe+asha' else 'random'}", f"search.seed={seed}", f"budget.trials={trials}",
        f"asha.enabled={'true' if kind == 'tpe+asha' else 'false'}", "asha.grace_period=100", "asha.reduction_factor=3", "search.storage=null"])
    base = spec.base_config().model_copy(update={"training": spec.base_config().training.model_copy(update={"steps": steps})})
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(tune_trial, max_steps=steps), {"CPU": 1}),
        param_space={"sigma_1": tune.loguniform(*SIGMA_RANGE)},
        tune_config=tune.TuneConfig(metric="objective", mode="min", search_alg=make_searcher(spec, f"bench-{kind}-{time.time_ns()}"),
                                    scheduler=make_scheduler(spec, base, ASHAScheduler, FIFOScheduler), num_samples=trials,
                                    max_concurrent_trials=2),
        run_config=tune.RunConfig(name=f"bench-{kind.replace('+', '-')}-{time.time_ns()}", storage_path=storage, verbose=0),
    )
    grid = tuner.fit()
    done = [(r.config["sigma_1"], r.metrics["objective"], r.metrics["step"]) for r in grid if r.metrics]
    full = [v for _, v, s in done if s >= steps]
    return min(full) if full else math.inf, sum(s for _, _, s in done), done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--grid", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench_sweep.png")
    args = parser.parse_args()
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    init_ray(num_cpus=min(2, os.cpu_count() or 1))
    sigmas = [SIGMA_RANGE[0] * (SIGMA_RANGE[1] / SIGMA_RANGE[0]) ** (i / (args.grid - 1)) for i in range(args.grid)]
    print(f"grid: {args.grid} values of sigma_1 in {SIGMA_RANGE}, {args.steps} steps each", flush=True)
    start = time.perf_counter()
    curve = [train_and_report({"sigma_1": s}, args.steps, lambda m: None) for s in sigmas]
    grid_best = min(curve)
    print(f"  best {grid_best:.4f} bits/dim at sigma_1 = {sigmas[curve.index(grid_best)]:.4g}  "
          f"({args.grid * args.steps} steps, {time.perf_counter() - start:.0f} s)", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("tpe+asha", "random"):
            start = time.perf_counter()
            best, spent, points = search(kind, args.trials, args.steps, tmp, args.seed)
            results[kind] = (best, spent, points)
            print(f"{kind:>9}: best {best:.4f} bits/dim ({100 * (best - grid_best) / grid_best:+.2f}% vs grid), "
                  f"{spent} training steps, {args.trials} trials, {time.perf_counter() - start:.0f} s", flush=True)
    (tb, ts, _), (rb, rs, _) = results["tpe+asha"], results["random"]
    gap, ratio = (tb - grid_best) / grid_best, ts / rs
    print()
    print(f"TPE+ASHA gap to the grid's best: {100 * gap:.2f}%   target <= 2%    {'PASS' if gap <= 0.02 else 'MISS'}")
    print(f"TPE+ASHA steps / random steps:   {ratio:.3f}    target <= 0.5  {'PASS' if ratio <= 0.5 else 'MISS'}")
    print(f"random gap to the grid's best:   {100 * (rb - grid_best) / grid_best:.2f}%")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(sigmas, curve, "k-", lw=1, label=f"grid ({args.steps} steps)")
    for kind, colour in (("tpe+asha", "tab:blue"), ("random", "tab:orange")):
        pts = results[kind][2]
        full = [(s, v) for s, v, n in pts if n >= args.steps]
        part = [(s, v) for s, v, n in pts if n < args.steps]
        if full:
            ax.scatter(*zip(*full), color=colour, s=24, label=f"{kind} (trained to the end)")
        if part:
            ax.scatter(*zip(*part), color=colour, s=24, marker="x", label=f"{kind} (stopped early, last value)")
    ax.set_xscale("log")
    ax.set_xlabel("sigma_1")
    ax.set_ylabel("validation bits/dim")
    ax.set_title("sigma_1 search: TPE + ASHA vs random vs grid", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"picture: {args.out}")


if __name__ == "__main__":
    main()
