"""`bfn quickstart`: the whole platform on one machine, in a few minutes on CPU.

Shards scikit-learn's digits into webdataset shards, trains a small discretised BFN with 2 Ray
Train workers, evaluates the likelihood table on the test shards, draws a sample grid, logs all of
it to the local MLflow store, compares the model with the independent-pixel baseline, and registers
it as a version of the model `quickstart-digits`, promoted to @champion through the likelihood guard
(so the first thing the MLflow UI shows is a champion).
"""
from __future__ import annotations

from pathlib import Path

from bfn_platform.commands.common import add_verbose, command
from bfn_platform.errors import BfnError

EPILOG = """examples:
  bfn quickstart                      # ~5 minutes on 2 CPU cores; everything lands in ./.bfn
  bfn quickstart --train-steps 200    # a shorter run
then:
  mlflow ui --backend-store-uri sqlite:///.bfn/mlflow.db      (or: bfn ui)
"""

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "digits_discretised.yaml"
MODEL_NAME = "quickstart-digits"
# With 2 repeats the table's L^50 came out below L^100 (Monte Carlo noise); with 20 it falls with n
# within its standard errors.
EVAL_REPEATS = 20


def register(sub) -> None:
    p = command(sub, "quickstart", __doc__, help="shard digits, train on Ray, evaluate, sample: all locally", epilog=EPILOG)
    p.add_argument("--train-steps", type=int, default=None, metavar="N",
                   help="training steps (default: the config's, 600); --steps is sampling steps everywhere")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers (default 2)")
    p.add_argument("--config", default=str(CONFIG), help="experiment config (default: configs/digits_discretised.yaml)")
    p.add_argument("--repeats", type=int, default=EVAL_REPEATS,
                   help=f"Monte Carlo repeats of the test bound per example (default {EVAL_REPEATS})")
    add_verbose(p)
    p.set_defaults(func=run)


def _register_and_promote(run_id: str, console) -> dict:
    """Register the run's model and promote it to @champion if the guard allows (a better earlier
    quickstart keeps the title; that is said, not an error)."""
    import mlflow

    from bfn_platform.promotion import promote, register_run

    client = mlflow.MlflowClient()
    mv = register_run(run_id, MODEL_NAME)
    version = str(mv.version)
    try:
        result = promote(client, MODEL_NAME, version)
        console.print(f"registered {MODEL_NAME} v{version}, now @champion ({result.verdict.reason})", highlight=False)
        return {"name": MODEL_NAME, "version": version, "champion": True}
    except BfnError as err:
        console.print(f"registered {MODEL_NAME} v{version}; @champion stays: {err}", highlight=False)
        return {"name": MODEL_NAME, "version": version, "champion": False}


def run(args) -> int:
    from bfn_platform.live import log_path, quiet_output

    with quiet_output(log_path("quickstart"), args.verbose) as term:
        return _quickstart(args, term)


def _quickstart(args, console) -> int:
    import json

    from bfn_platform.live import TrainingDisplay
    from bfn_core import steps_label
    from pipelines.baselines import independent_pixel_bits_per_dim
    from pipelines.config import load_config
    from pipelines.data.sources import get_source
    from pipelines.data.writer import write_shards
    from pipelines.evaluation import evaluate
    from pipelines.sampling import sample_to_files
    from pipelines.tracking import bfn_home, tracking_uri
    from pipelines.training import train

    if not Path(args.config).is_file():
        raise BfnError(f"quickstart config {args.config} not found: run from a checkout of bfn-platform or pass --config")
    home = bfn_home()
    data = home / "data" / "digits"
    source = get_source("digits")
    from bfn_platform.console import progress_bar

    with progress_bar(console) as bar:
        for split in ("train", "val", "test"):
            task = bar.add_task(f"shard {split}", total=None, info="")
            write_shards(source, split, str(data), shard_size=50,
                         on_progress=lambda done, total, name, t=task: bar.update(t, completed=done, total=total, info=name))
    overrides = {f"data.{s}": str(data / s / "manifest.json") for s in ("train", "val", "test")}
    overrides.update({"scaling.num_workers": args.workers, "tracking.experiment": "quickstart"})
    if args.train_steps:
        overrides["training.steps"] = args.train_steps
    cfg = load_config(args.config, overrides)
    console.print(f"[bold]training[/] a discretised BFN (K={cfg.data.num_classes}) on digits: {cfg.training.steps} steps, "
                  f"{cfg.scaling.num_workers} Ray Train workers x batch {cfg.training.batch_size}")
    with TrainingDisplay(console) as display:
        outcome = train(cfg, on_progress=display)
    console.print(f"[bold]evaluating[/] run {outcome.run_id} on the test shards")
    baseline = independent_pixel_bits_per_dim(source.load("train").data, source.load("test").data, cfg.data.num_classes)
    ev = evaluate(outcome.run_id, steps=[10, 25, 50, 100, 1000, None], repeats=args.repeats,
                  baseline=("independent-pixel baseline", baseline))
    files = sample_to_files(outcome.run_id, n=64, steps=100, out=str(home / "quickstart" / "samples"))

    console.print(ev.table.format())
    best = ev.table.row(None)
    for fewer, more in ev.table.monotone_violations():
        console.print(f"[yellow]note: the bound at {more} exceeds the bound at {fewer} by more than 2 Monte Carlo "
                      "standard errors: evaluate with more --repeats[/]")
    console.print(f"\n[bold]test bits/dim[/]  BFN (continuous time) {best.bits_per_dim:.3f} ± {best.bits_se_examples:.3f}"
                  f"   |   independent-pixel baseline {baseline:.3f}")
    summary = {"run_id": outcome.run_id, "model_uri": outcome.model_uri, "baseline_bits_per_dim": baseline,
               "repeats": args.repeats, "table": ev.table.to_dict(),
               **{f"test_bits_{steps_label(r.steps)}": r.bits_per_dim for r in ev.table.rows}}
    (home / "quickstart").mkdir(parents=True, exist_ok=True)
    (home / "quickstart" / "summary.json").write_text(json.dumps(summary, indent=2))
    champion = _register_and_promote(outcome.run_id, console)
    summary["registered"] = champion
    (home / "quickstart" / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"samples: {files[1]}   likelihood plot: MLflow run {outcome.run_id}, artifact eval/likelihood.png")
    console.print(f"look at everything with:  bfn ui   (the MLflow UI on {tracking_uri()}; @champion is {MODEL_NAME})")
    if best.bits_per_dim >= baseline:
        console.print("[red]the model did not beat the independent-pixel baseline: train longer (--train-steps)[/]")
        return 1
    return 0
