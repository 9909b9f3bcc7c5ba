"""`bfn eval RUN_OR_MODEL_URI`: the likelihood table on the test shards, logged to the run."""
from __future__ import annotations

from bfn_platform.commands.common import add_json, command, print_json
from bfn_platform.console import console

EPILOG = """examples:
  bfn eval 3f2c9a...                             # a run id: its model and its config's test shards
  bfn eval models:/digits@champion --steps 10,100,inf --repeats 4
  bfn eval runs:/3f2c9a.../model --data s3://bucket/digits/test/manifest.json --workers 4
  bfn submit -- bfn eval models:/cifar10@champion --workers 8 --device cuda --repeats 100 --steps 10,25,50,100,1000,inf
                                                 # paper scale: the CIFAR-10 test set on 8 GPUs of the cluster

The bound is averaged over --repeats Monte Carlo draws per example; the table reports two standard
errors: across test examples, and Monte Carlo across repeats (with --repeats 2 or more).
"""


def register(sub) -> None:
    p = command(sub, "eval", __doc__, help="likelihood table of a trained model on its test shards", epilog=EPILOG)
    p.add_argument("model", metavar="RUN_OR_MODEL_URI", help="run id, runs:/RUN/model, models:/NAME@ALIAS or models:/NAME/VERSION")
    p.add_argument("--steps", default="10,25,50,100,1000,inf", help="step counts, 'inf' for continuous time (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=1, help="Monte Carlo repeats per example (default 1)")
    p.add_argument("--batch-size", type=int, default=64, help="test examples per forward pass (default 64)")
    p.add_argument("--data", help="test manifest URL (default: the run config's data.test)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: a GPU when there is one (default)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="the network's autocast; auto: bf16 on GPU, as in training (fp32 for exact float32 figures)")
    p.add_argument("--workers", type=int, default=0,
                   help="Ray tasks that each evaluate a share of the test set (a GPU each on GPUs); 0: this process")
    p.add_argument("--seed", type=int, default=0)
    add_json(p, "the table")
    p.set_defaults(func=run)


def run(args) -> int:
    from bfn_core import parse_steps
    from bfn_platform.console import progress_bar
    from pipelines.evaluate import evaluate

    steps = parse_steps(args.steps)
    with progress_bar() as bar:
        task = bar.add_task("evaluate", total=None, info=f"steps {args.steps}, {args.repeats} repeat(s)")
        outcome = evaluate(args.model, steps=steps, repeats=args.repeats, batch_size=args.batch_size, manifest=args.data,
                           workers=args.workers, device=args.device, precision=args.precision, seed=args.seed,
                           on_start=lambda total: bar.update(task, total=total),
                           on_progress=lambda k: bar.update(task, advance=k))
    if args.json:
        print_json(outcome.table.to_dict())
    else:
        console.print(outcome.table.format())
        if outcome.run_id:
            console.print(f"logged to run {outcome.run_id}: metrics test_bits_*, artifacts {', '.join(outcome.artifacts)}")
    return 0
