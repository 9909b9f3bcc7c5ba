"""Benchmark of class-conditional digits sampling with classifier-free guidance (not a test).

Two small digits models are trained in this process (no Ray, no MLflow) with the trainer's own
optimisation step and EMA (pipelines.worker.optimisation_step) on the Digits source's training split,
configs/digits_discretised.yaml at bench/samplers.py's settings: one class-conditional (a conditioning
block, labels 0..9 from the source, --label-dropout of them trained as the null class) and one
unconditional, the same steps and seed. Then --n-samples samples (the ten classes cycled) from the
conditional model at every guidance weight w of --guidance, in both guidance spaces (output: the network
outputs combined; params: p_O's bin probabilities combined), and from the unconditional model, the same
sampler, steps and seed each time, are scored with pipelines.sample_quality.measure_sampler:

  * class accuracy: the digits classifier's (pipelines/quality/digits_classifier.py) agreement with the
    class each sample was drawn for, overall and per class;
  * quality: fd_digits (Fréchet distance to the test split in the classifier's features, lower is better).

Target: at the best point, class accuracy >= 0.9 while fd_digits is within 20% of the unconditional
model's (<= 1.2 x).

Inpainting, alongside (no target): the top half of --n-samples test digits is given, the unconditional
model draws the bottom half (pipelines.sampling's mask, for every --resample R: RePaint's resampling), and
the classifier reads the completed digits against their true labels; the true digits and the digits with
a blank bottom half bracket the figure. A picture shows the first ten: given, completed per R, true. Printed: the table and the verdict; written: every point to --out (JSON) and a picture
of accuracy and fd_digits against w, both spaces, beside it (.png).
Run: ``python bench/conditional.py [--steps N] [--guidance 0,1,2]``; ``--smoke`` runs every path at toy sizes.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipelines.config import ExperimentConfig  # noqa: E402
from pipelines.errors import PipelineError  # noqa: E402
from pipelines.model_store import LoadedModel  # noqa: E402
from pipelines.sample_quality import measure_sampler  # noqa: E402
from samplers import SETTINGS, bench_device, experiment, source_split, train, write_json  # noqa: E402  (bench/samplers.py: the same digits setup)

SPACES = ("output", "params")
CLASSES = list(range(10))
ACCURACY_TARGET, QUALITY_SLACK = 0.9, 1.2


def labelled(cfg: ExperimentConfig, label_dropout: float) -> ExperimentConfig:
    """cfg with a conditioning block: the ten digit classes, label_dropout of them trained as the null class."""
    return ExperimentConfig.model_validate({**cfg.model_dump(mode="json"),
                                            "conditioning": {"num_classes": 10, "label_dropout": label_dropout}})


def verdict(points: list[dict], uncond_fd: float) -> dict:
    """The most class-accurate point whose fd_digits is within QUALITY_SLACK of the unconditional model's."""
    ok = [p for p in points if math.isfinite(p["fd_digits"]) and p["fd_digits"] <= QUALITY_SLACK * uncond_fd]
    if not ok:
        best = max(points, key=lambda p: p["class_accuracy"])
        return {"status": "MISS", "reason": "no point within the quality bound", "best": best}
    best = max(ok, key=lambda p: (p["class_accuracy"], -p["fd_digits"]))  # a tie goes to the better quality
    accurate = [p for p in ok if p["class_accuracy"] >= ACCURACY_TARGET]
    sharpest = min(accurate, key=lambda p: p["fd_digits"]) if accurate else None  # the other end of the trade-off
    return {"status": "PASS" if best["class_accuracy"] >= ACCURACY_TARGET else "MISS", "best": best,
            "best_quality_on_target": sharpest}


def report(result: dict) -> str:
    u, v = result["unconditional"], result["verdict"]
    lines = [f"== digits: {result['train_steps']} training steps each (conditional {result['train_seconds']['conditional']:.0f} s, "
             f"unconditional {result['train_seconds']['unconditional']:.0f} s), label dropout {result['label_dropout']}, "
             f"{result['n_samples']} samples per point, {result['sampler']} x {result['sample_steps']} steps",
             f"{'space':<7} {'w':>5} {'class acc':>10} {'fd_digits':>10} {'fd / uncond':>12} {'worst class':>12}"]
    for p in result["points"]:
        per = {k: p[k] for k in p if k.startswith("class_accuracy_")}
        worst = min(per, key=per.get) if per else None
        lines.append(f"{p['space']:<7} {p['guidance']:>5g} {p['class_accuracy']:>10.3f} {p['fd_digits']:>10.4g} "
                     f"{p['fd_digits'] / u['fd_digits']:>12.3f} "
                     + (f"{worst.rsplit('_', 1)[1]}: {per[worst]:.2f}" if worst else "").rjust(12))
    lines.append(f"unconditional model: fd_digits {u['fd_digits']:.4g}, class entropy {u['digits_class_entropy']:.3f} nats")
    b = v["best"]
    lines.append(f"best: {b['space']} space, w = {b['guidance']:g}: class accuracy {b['class_accuracy']:.3f}, fd_digits "
                 f"{b['fd_digits']:.4g} ({b['fd_digits'] / u['fd_digits']:.2f} x unconditional)   target: class accuracy >= "
                 f"{ACCURACY_TARGET} with fd_digits <= {QUALITY_SLACK} x unconditional   {v['status']}"
                 + (f" ({v['reason']})" if v.get("reason") else ""))
    q = v.get("best_quality_on_target")
    if q:
        lines.append(f"best quality at class accuracy >= {ACCURACY_TARGET}: {q['space']} space, w = {q['guidance']:g}: "
                     f"class accuracy {q['class_accuracy']:.3f}, fd_digits {q['fd_digits']:.4g} "
                     f"({q['fd_digits'] / u['fd_digits']:.2f} x unconditional)")
    return "\n".join(lines)


def save_picture(result: dict, path: Path) -> Path:
    from pipelines.pictures import _pyplot, save_figure

    plt = _pyplot()
    fig, (acc, fd) = plt.subplots(1, 2, figsize=(9, 3.6))
    for space in SPACES:
        mine = sorted((p for p in result["points"] if p["space"] == space), key=lambda p: p["guidance"])
        ws = [p["guidance"] for p in mine]
        acc.plot(ws, [p["class_accuracy"] for p in mine], marker="o", label=f"{space} space")
        fd.plot(ws, [p["fd_digits"] for p in mine], marker="o", label=f"{space} space")
    u = result["unconditional"]["fd_digits"]
    acc.axhline(ACCURACY_TARGET, color="grey", linestyle=":", label=f"target {ACCURACY_TARGET}")
    fd.axhline(u, color="black", linestyle="--", label="unconditional model")
    fd.axhline(QUALITY_SLACK * u, color="grey", linestyle=":", label=f"{QUALITY_SLACK} x unconditional")
    acc.set_ylabel("class accuracy (higher is better)")
    fd.set_ylabel("fd_digits (lower is better)")
    for ax in (acc, fd):
        ax.set_xlabel("guidance weight w")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"class-conditional digits: {result['train_steps']} training steps, "
                 f"{result['sampler']} x {result['sample_steps']}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def inpainting(model: LoadedModel, cfg: ExperimentConfig, args, device) -> dict:
    """Class accuracy of test digits completed from their top half, per resample count, with its bounds."""
    from pipelines.quality.conditional import class_accuracy
    from pipelines.sample_quality import draw
    from pipelines.sampling import Conditioning

    x, y = source_split(SETTINGS["digits"], cfg, "test")
    truth, labels = x.numpy()[: args.n_samples].astype(np.float32), y[: args.n_samples]
    mask = np.zeros_like(truth, dtype=bool)
    mask[:, : truth.shape[1] // 2] = True  # the top half known
    blank = np.where(mask, truth, -1.0).astype(np.float32)  # the bottom half as background

    def accuracy(images):
        return class_accuracy("digits", images, labels, levels=cfg.data.num_classes)["class_accuracy"]

    out = {"n": len(truth), "known": "top half", "truth": accuracy(truth), "blank_bottom": accuracy(blank), "points": []}
    completed = {}
    for r in args.resample:
        cond = Conditioning(observed=truth, mask=mask, resample=r)
        images, nfe, seconds = draw(model, n=len(truth), steps=args.sample_steps, sampler=args.sampler,
                                    batch_size=args.batch_size, seed=args.seed, device=device, conditioning=cond)
        assert np.array_equal(images[mask], truth[mask])
        completed[r] = images
        out["points"].append({"resample": r, "class_accuracy": accuracy(images), "nfe": nfe,
                              "seconds_per_sample": seconds / len(truth)})
        print(f"  inpainting R {r}: class accuracy {out['points'][-1]['class_accuracy']:.3f}", file=sys.stderr, flush=True)
    rows = [blank[:10], *(completed[r][:10] for r in args.resample), truth[:10]]
    out["picture_rows"] = ["given (top half)", *(f"completed, R = {r}" for r in args.resample), "true digit"]
    out["tiles"] = np.concatenate(rows), np.repeat(np.arange(len(rows)), [len(r) for r in rows])
    return out


def inpainting_report(result: dict) -> str:
    inp = result["inpainting"]
    lines = [f"== inpainting: {inp['n']} test digits, {inp['known']} given, the unconditional model completes the rest "
             f"({result['sampler']} x {result['sample_steps']} steps)",
             f"{'':<24} {'class acc':>10} {'NFE':>5} {'ms/sample':>10}",
             f"{'true digits':<24} {inp['truth']:>10.3f}",
             f"{'bottom half blank':<24} {inp['blank_bottom']:>10.3f}"]
    for p in inp["points"]:
        lines.append(f"{'completed, R = ' + str(p['resample']):<24} {p['class_accuracy']:>10.3f} {p['nfe']:>5} "
                     f"{p['seconds_per_sample'] * 1e3:>10.2f}")
    return "\n".join(lines)


def float_list(text: str) -> list[float]:
    try:
        return sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=SETTINGS["digits"].steps, help="training steps of each model")
    p.add_argument("--label-dropout", type=float, default=0.15, help="null-class probability in training (0.1-0.2)")
    p.add_argument("--guidance", type=float_list, default=[0.0, 0.5, 1.0, 2.0, 4.0], help="guidance weights w")
    p.add_argument("--n-samples", type=int, default=500, help="samples per point, the ten classes cycled")
    p.add_argument("--resample", type=lambda t: sorted({int(v) for v in t.split(",")}), default=[1, 5],
                   help="inpainting: RePaint resample counts to compare (default 1,5)")
    p.add_argument("--sampler", default="ode2", help="sampler of every point (default ode2)")
    p.add_argument("--sample-steps", type=int, default=20, help="sampling steps of every point")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (bench/samplers.py says why 1)")
    p.add_argument("--out", default=None, help="JSON (picture beside it); default $BFN_HOME/bench/bench_conditional.json")
    p.add_argument("--smoke", action="store_true", help="toy sizes: 3 training steps, 20 samples, w in {0, 1}")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.n_samples, args.guidance, args.sample_steps, args.resample = 3, 20, [0.0, 1.0], 2, [1, 2]
    if min(args.steps, args.n_samples, args.sample_steps, args.batch_size, *args.resample) < 1 or not args.guidance:
        p.error("--steps, --n-samples, --sample-steps and --batch-size must be >= 1, --guidance non-empty")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    device = bench_device(args)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}; guidance {args.guidance} in "
          f"{', '.join(SPACES)} space{'; SMOKE sizes' if args.smoke else ''}\n", flush=True)
    setting = SETTINGS["digits"]
    base = experiment(setting, args.steps, args.smoke)
    cond_cfg = labelled(base, args.label_dropout)
    x, y = source_split(setting, base)
    y = torch.from_numpy(y)
    models, seconds = {}, {}
    for name, cfg, labels in (("conditional", cond_cfg, y), ("unconditional", base, None)):
        print(f"[{name}] training {cfg.training.steps} steps, batch {cfg.training.batch_size}, {len(x)} examples ...",
              file=sys.stderr, flush=True)
        ema, seconds[name], _ = train(cfg, x.to(device), device, labels)
        models[name] = LoadedModel(ema, cfg.model_dump(mode="json"), tuple(x.shape[1:]))
    opts = dict(sampler=args.sampler, steps=args.sample_steps, n=args.n_samples, batch_size=args.batch_size,
                seed=args.seed, device=device, dataset="digits")
    points = []
    for space in SPACES:
        for w in args.guidance:
            metrics = measure_sampler(models["conditional"], classes=CLASSES, guidance=w, guidance_space=space, **opts).metrics
            points.append({"space": space, "guidance": w, **metrics})
            print(f"  {space:<6} w {w:>4g}: class accuracy {metrics['class_accuracy']:.3f}, fd_digits "
                  f"{metrics['fd_digits']:.4g}", file=sys.stderr, flush=True)
    uncond = measure_sampler(models["unconditional"], **opts).metrics
    inpainted = inpainting(models["unconditional"], base, args, device)
    tiles, rows = inpainted.pop("tiles")
    result = {"dataset": "digits", "config": setting.config, "train_steps": base.training.steps,
              "train_seconds": seconds, "label_dropout": args.label_dropout, "n_samples": args.n_samples,
              "sampler": args.sampler, "sample_steps": args.sample_steps, "points": points, "unconditional": uncond,
              "verdict": verdict(points, uncond["fd_digits"]), "inpainting": inpainted}
    print(report(result), flush=True)
    print(inpainting_report(result), flush=True)
    out = write_json(args, "bench_conditional.json", result, device)
    picture = save_picture(result, out.with_suffix(".png"))
    from pipelines.pictures import save_image_rows

    grid = save_image_rows(tiles, rows, out.with_name(out.stem + "_inpainting.png"),
                           title="rows: " + "; ".join(inpainted["picture_rows"]))
    print(f"wrote {out}, {picture} and {grid}")


if __name__ == "__main__":
    try:
        main()
    except PipelineError as err:
        sys.exit(f"error: {err}")
