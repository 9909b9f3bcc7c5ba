"""Benchmark of sample quality per sampler and NFE (not a test): issue 13's target, in one run.

For each data set (the quickstart's digits model, configs/digits_discretised.yaml; the synthetic
mixture and markov sets, configs/synthetic_*.yaml) a small model is trained in this process (no Ray,
no MLflow) with the trainer's own optimisation step and EMA, on the source's training split. Its EMA
weights then draw --n-samples samples with every sampler in bfn_core.SAMPLERS (bfn, ode1, ode2, sde1,
sde2) at every --nfe, the same seed each time, scored by pipelines.sample_quality.measure_sampler:

  * quality: the data set's headline metric (pipelines.quality.metrics.headline): fd_digits, or the
    samples' NLL under the true law of the synthetic sets; a coverage metric beside it where the
    headline rewards mode-seeking (digits_class_entropy, mmd2_true);
  * NFE: network calls as counted by a hook (n steps cost n + 1: the last one for the final draw, so
    a target NFE N runs N - 1 steps), and wall time per sample of the draws alone (eager, fp32; on CPU with
    --threads torch threads, 1 by default: see the option).

Printed: per data set a table sampler x NFE of each metric and of milliseconds per sample, then the
verdict: the best solver at --fast-nfe (10) against the paper's sampler `bfn` at --ref-nfe (100),
their ratio (or difference where a value is not positive) and PASS when the solver is as good or
better. Written: every point to --out (JSON) and a quality-versus-NFE picture beside it (.png).
Run: ``python bench/samplers.py [--steps N] [--nfe 5,10,20] [--datasets digits,markov]``;
``python bench/samplers.py --smoke`` runs every path at toy sizes in seconds (tests keep it working).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bfn_core import SAMPLERS  # noqa: E402
from pipelines.acceleration import Acceleration  # noqa: E402
from pipelines.config import ExperimentConfig, load_config  # noqa: E402
from pipelines.errors import PipelineError  # noqa: E402
from pipelines.model_store import LoadedModel  # noqa: E402
from pipelines.quality.metrics import headline  # noqa: E402
from pipelines.sample_quality import SamplerPoint, draw, measure_sampler  # noqa: E402
from pipelines.worker import build_training, optimisation_step  # noqa: E402

CONFIGS = HERE.parent / "configs"


@dataclass(frozen=True)
class Setting:
    config: str
    dataset: str  # the source's and the quality metrics' name
    steps: int  # default training steps; on one thread of a busy 2-core machine: digits ~4 min, mixture 1, markov 2
    n_samples: int
    coverage: str | None  # a second metric that the headline's mode-seeking optimum would fail
    smoke: dict = field(default_factory=dict)


SETTINGS = {
    "digits": Setting("digits_discretised.yaml", "digits", 1500, 256, "digits_class_entropy",
                      {"model.width": 8, "training.batch_size": 16}),
    "mixture": Setting("synthetic_mixture.yaml", "synthetic-mixture", 5000, 512, "mmd2_true",
                       {"model.hidden": 16, "training.batch_size": 16}),
    "markov": Setting("synthetic_markov.yaml", "synthetic-markov", 3000, 512, None,
                      {"model.width": 16, "model.heads": 2, "training.batch_size": 16}),
}


def experiment(setting: Setting, steps: int, smoke: bool) -> ExperimentConfig:
    # One in-process worker takes the whole global batch; compile off so the draws time the eager network
    # the same way on every device (compiling per sampler and batch shape would dominate the short runs).
    sets = {"training.steps": steps, "scaling.num_workers": 1, "data.val": None, "data.test": None,
            "training.micro_batch_size": None, "training.compile": "off", **(setting.smoke if smoke else {})}
    return load_config(CONFIGS / setting.config, sets)


def source_split(setting: Setting, cfg: ExperimentConfig, split: str = "train") -> tuple[torch.Tensor, np.ndarray | None]:
    """A split of the source in bfn_core's convention for the config's read (what the shards hold), with its
    class labels row for row (None where the source has none)."""
    from pipelines.data.sources import get_source
    from pipelines.data.transforms import make_transform

    source = get_source(setting.dataset)
    part = source.load(split, seed=cfg.training.seed)
    transform = make_transform(source.field, cfg.data.kind, cfg.data.num_classes, default=source.default_read)
    labels = None if part.labels is None else np.asarray(part.labels, np.int64)
    return torch.from_numpy(np.ascontiguousarray(transform(part.data))), labels


def train(cfg: ExperimentConfig, x: torch.Tensor, device: torch.device,
          y: torch.Tensor | None = None) -> tuple[torch.nn.Module, float, float]:
    """The trainer's optimisation step over shuffled epochs of x (with labels y: micro-batches (x, y), which
    optimisation_step drops to the null class at cfg.conditioning.label_dropout); returns (EMA model, seconds,
    mean loss of the last 100 steps in nats per dimension)."""
    accel = Acceleration.resolve(device, cfg.training.precision, "off")
    shape = tuple(x.shape[1:])
    bfn, ema, opt = build_training(cfg, shape, accel)
    bfn.train()
    g = torch.Generator().manual_seed(cfg.training.seed)
    b, dims, losses, order = cfg.training.batch_size, math.prod(shape), [], torch.empty(0, dtype=torch.long)
    start = time.perf_counter()
    for step in range(cfg.training.steps):
        if len(order) < b:
            order = torch.randperm(len(x), generator=g)
        idx, order = order[:b], order[b:]
        batch = x[idx].to(device) if y is None else (x[idx].to(device), y[idx].to(device))
        loss, _ = optimisation_step(bfn, bfn, ema, opt, [batch], cfg, step, dims, accel)
        losses.append(float(loss))
        if (step + 1) % max(1, cfg.training.steps // 5) == 0:  # minutes on a busy CPU: show it is moving
            print(f"  step {step + 1}: loss {np.mean(losses[-100:]):.4g} nats/dim, {time.perf_counter() - start:.0f} s",
                  file=sys.stderr, flush=True)
    return ema.eval(), time.perf_counter() - start, float(np.mean(losses[-100:]))


def measure(loaded: LoadedModel, setting: Setting, args, device: torch.device) -> list[dict]:
    """Every sampler at every target NFE; a point that fails (a diverged sampler) keeps NaN and its error."""
    n = args.n_samples or setting.n_samples
    metric = headline(setting.dataset)
    # warm-up outside the timings: the first calls create kernels and allocator pools
    draw(loaded, n=min(n, args.batch_size), steps=2, seed=args.seed, device=device)
    points = []
    for sampler in SAMPLERS:
        for nfe in args.nfe:
            try:
                p = measure_sampler(loaded, sampler=sampler, steps=nfe - 1, n=n, batch_size=args.batch_size,
                                    seed=args.seed, device=device, dataset=setting.dataset, final=args.final)
                row = {**p.to_dict(), "target_nfe": nfe, "error": None}
            except Exception as err:  # noqa: BLE001 - one bad point must not lose the rest of the run
                p = SamplerPoint(sampler, None, nfe - 1, -1, {metric.name: math.nan}, metric.name, metric.mode,
                                 math.nan, n)
                row = {**p.to_dict(), "target_nfe": nfe, "error": f"{type(err).__name__}: {str(err)[:160]}"}
            points.append(row)
            print(f"  {sampler:<5} NFE {row['nfe']:>4}: {row['metrics'][metric.name]:.4g}"
                  + (f"  ({row['error']})" if row["error"] else ""), file=sys.stderr, flush=True)
    return points


def quality(points: list[dict], sampler: str, nfe: int) -> float:
    return next((p["metrics"][p["headline"]] for p in points if p["sampler"] == sampler and p["target_nfe"] == nfe),
                math.nan)


def verdict(points: list[dict], mode: str, fast: int, ref: int) -> dict:
    """The best non-bfn sampler at `fast` NFE against bfn at `ref` NFE."""
    solvers = [(quality(points, s, fast), s) for s in SAMPLERS if s != "bfn"]
    solvers = [(q, s) for q, s in solvers if math.isfinite(q)]
    base = quality(points, "bfn", ref)
    if not solvers or not math.isfinite(base):
        return {"fast_nfe": fast, "ref_nfe": ref, "status": "n/a"}
    best_q, best = (min if mode == "min" else max)(solvers)
    ok = best_q <= base if mode == "min" else best_q >= base
    ratio = best_q / base if best_q > 0 and base > 0 else None  # a ratio of negative NLLs reads backwards
    return {"fast_nfe": fast, "ref_nfe": ref, "best_solver": best, "best_quality": best_q, "bfn_quality": base,
            "ratio": ratio, "difference": best_q - base, "status": "PASS" if ok else "MISS"}


def table(points: list[dict], nfes: list[int], cell, title: str) -> str:
    lines = [title, f"{'sampler':<8}" + "".join(f" {n:>10}" for n in nfes) + "   (NFE)"]
    for sampler in SAMPLERS:
        row = {p["target_nfe"]: p for p in points if p["sampler"] == sampler}
        lines.append(f"{sampler:<8}" + "".join(f" {cell(row[n]) if n in row else '':>10}" for n in nfes))
    return "\n".join(lines)


def report(name: str, result: dict, nfes: list[int]) -> str:
    points, metric, mode = result["points"], result["headline"], result["mode"]
    better = "lower" if mode == "min" else "higher"
    out = [f"== {name} ({result['dataset']}): {result['train_steps']} training steps in {result['train_seconds']:.0f} s "
           f"(final loss {result['train_loss']:.4g} nats/dim), {result['n_samples']} samples per point",
           table(points, nfes, lambda p: f"{p['metrics'][metric]:.4g}", f"{metric} ({better} is better)")]
    if result["coverage"]:
        cov = result["coverage"]
        out.append(table(points, nfes, lambda p: f"{p['metrics'].get(cov, math.nan):.4g}", cov))
    out.append(table(points, nfes, lambda p: f"{p['seconds_per_sample'] * 1e3:.3f}", "wall time per sample (ms)"))
    off = [f"{p['sampler']}@{p['target_nfe']}: {p['nfe']}" for p in points if p["nfe"] != p["target_nfe"]]
    if off:
        out.append("NFE counted differs from the target: " + ", ".join(off))
    v = result["verdict"]
    if v["status"] == "n/a":
        out.append(f"verdict: n/a (needs --nfe to hold {v['fast_nfe']} and {v['ref_nfe']} with finite points)")
    else:
        cmp = f"ratio {v['ratio']:.3f}" if v["ratio"] is not None else f"difference {v['difference']:+.4g}"
        out.append(f"verdict: best solver at {v['fast_nfe']} NFE ({v['best_solver']}) {v['best_quality']:.4g} vs "
                   f"bfn at {v['ref_nfe']} NFE {v['bfn_quality']:.4g}: {cmp}, {metric} {better} is better   "
                   f"target: matches or beats   {v['status']}")
    return "\n".join(out)


def save_picture(results: dict, path: Path) -> Path:
    """Headline quality against counted NFE, one line per sampler, one panel per data set; the dotted
    line is bfn at the reference NFE, the level the fast solvers have to reach."""
    from pipelines.pictures import _pyplot, save_figure

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 3.8), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        for sampler in SAMPLERS:
            mine = sorted((p for p in r["points"] if p["sampler"] == sampler and p["nfe"] > 0), key=lambda p: p["nfe"])
            ax.plot([p["nfe"] for p in mine], [p["metrics"][r["headline"]] for p in mine], marker="o", label=sampler)
        v = r["verdict"]
        if v["status"] != "n/a":
            ax.axhline(v["bfn_quality"], color="grey", linestyle=":", label=f"bfn @ {v['ref_nfe']}")
        ax.set_xscale("log")
        ticks = sorted({p["nfe"] for p in r["points"] if p["nfe"] > 0})
        ax.set_xticks(ticks, [str(t) for t in ticks])  # the NFEs measured, not powers of ten
        ax.minorticks_off()
        ax.set_xlabel("network evaluations (NFE)")
        ax.set_ylabel(f"{r['headline']} ({'lower' if r['mode'] == 'min' else 'higher'} is better)")
        ax.set_title(f"{name}: {r['train_steps']} training steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def int_list(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or values[0] < 2:
        raise argparse.ArgumentTypeError(f"NFE values must be >= 2 (n steps cost n + 1 network calls), got {text!r}")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}")
    p.add_argument("--steps", type=int, default=None, help="training steps for every data set (default: "
                   + ", ".join(f"{k} {s.steps}" for k, s in SETTINGS.items()) + ")")
    p.add_argument("--nfe", type=int_list, default=[5, 10, 20, 50, 100, 200], help="target NFEs (default 5,...,200)")
    p.add_argument("--n-samples", type=int, default=None, help="samples per point (default: digits 256, synthetic 512)")
    p.add_argument("--batch-size", type=int, default=256, help="samples per sampler call")
    p.add_argument("--fast-nfe", type=int, default=10, help="the solvers' NFE in the verdict")
    p.add_argument("--ref-nfe", type=int, default=100, help="bfn's NFE in the verdict")
    p.add_argument("--final", choices=("sample", "mode"), default="sample", help="the last draw (the paper: sample)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    # One thread by default: on a shared 2-core machine under load, 2 OpenMP threads made the digits training
    # step 16x slower than 1 (3.0 s against 0.18 s), their barriers spinning against other jobs.
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default, every core)")
    p.add_argument("--out", default=None, help="JSON of every point, the picture beside it (default: $BFN_HOME/bench/bench_samplers.json)")
    p.add_argument("--smoke", action="store_true", help="toy sizes: 3 training steps, 8 samples, NFE 2 and 4")
    args = p.parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in args.datasets if d not in SETTINGS]
    if unknown or not args.datasets:
        p.error(f"unknown data set(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(SETTINGS)}")
    if args.smoke:
        args.steps, args.nfe, args.n_samples, args.fast_nfe, args.ref_nfe = args.steps or 3, [2, 4], 8, 2, 4
    if (args.steps is not None and args.steps < 1) or (args.n_samples is not None and args.n_samples < 1) \
            or args.batch_size < 1 or args.threads < 0:
        p.error("--steps, --n-samples and --batch-size must be >= 1, --threads >= 0")
    return args


def bench_device(args) -> torch.device:
    """--device resolved (auto: a GPU when there is one) and torch's CPU threads set to --threads."""
    from pipelines.evaluation import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    return resolve_device(args.device)


def write_json(args, name: str, payload: dict, device) -> Path:
    """payload and the run's settings (every flag but --out, torch's version, threads, device) as --out, else
    $BFN_HOME/bench/NAME."""
    from pipelines.tracking import bfn_home

    out = Path(args.out) if args.out else bfn_home() / "bench" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    out.write_text(json.dumps({**payload, "settings": {**settings, "torch": torch.__version__,
                                                       "threads": torch.get_num_threads(), "device": str(device)}},
                              indent=2))
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    device = bench_device(args)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}; samplers {', '.join(SAMPLERS)}; "
          f"NFE {args.nfe}; final draw: {args.final}{'; SMOKE sizes' if args.smoke else ''}\n", flush=True)
    results = {}
    for name in args.datasets:
        setting = SETTINGS[name]
        cfg = experiment(setting, args.steps or setting.steps, args.smoke)
        x, _ = source_split(setting, cfg)
        print(f"[{name}] training {cfg.training.steps} steps, batch {cfg.training.batch_size}, "
              f"{len(x)} examples ...", file=sys.stderr, flush=True)
        ema, seconds, loss = train(cfg, x.to(device), device)
        loaded = LoadedModel(ema, cfg.model_dump(mode="json"), tuple(x.shape[1:]))
        points = measure(loaded, setting, args, device)
        metric = headline(setting.dataset)
        results[name] = {"dataset": setting.dataset, "config": setting.config, "train_steps": cfg.training.steps,
                         "train_seconds": seconds, "train_loss": loss, "n_samples": points[0]["n_samples"],
                         "headline": metric.name, "mode": metric.mode, "coverage": setting.coverage,
                         "points": points, "verdict": verdict(points, metric.mode, args.fast_nfe, args.ref_nfe)}
        print(report(name, results[name], args.nfe) + "\n", flush=True)
    out = write_json(args, "bench_samplers.json", {"datasets": results}, device)
    picture = save_picture(results, out.with_suffix(".png"))
    print("summary: " + "; ".join(f"{k} {r['verdict']['status']}" for k, r in results.items()))
    print(f"wrote {out} and {picture}")


if __name__ == "__main__":
    try:
        main()
    except PipelineError as err:
        sys.exit(f"error: {err}")
