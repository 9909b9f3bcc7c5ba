"""`bfn eval RUN_OR_MODEL_URI`: the likelihood table on the test shards, logged to the run."""
from __future__ import annotations

from bfn_platform.commands.common import add_json, add_verbose, command, print_json
from bfn_platform.console import console

EPILOG = """examples:
  bfn eval 3f2c9a...                             # a run id: its model and its config's test shards
  bfn eval models:/digits@champion --steps 10,100,inf --repeats 4
  bfn eval runs:/3f2c9a.../model --data s3://bucket/digits/test/manifest.json --workers 4
  bfn submit -- bfn eval models:/cifar10@champion --workers 8 --device cuda --repeats 100 --steps 10,25,50,100,1000,inf
                                                 # paper scale: the CIFAR-10 test set on 8 GPUs of the cluster

  bfn eval models:/digits@champion --quality                      # sample quality per sampler and step count
  bfn eval 3f2c9a... --quality --sampler bfn,ode2 --steps 5,10,20,50,100 --n 1000
  bfn eval 3f2c9a... --quality --class all --guidance 0,1,2 --guidance-space output,params --sampler ode2 --steps 20
                                                 # a conditional model: quality and class accuracy per guidance

The bound is averaged over --repeats Monte Carlo draws per example; the table reports two standard
errors: across test examples, and Monte Carlo across repeats (with --repeats 2 or more).
With --quality, samples are drawn instead and scored with the data set's quality metric (digits: Frechet
distance in a classifier's features; synthetic sets: exact NLL under the true law; text8: spelling
accuracy; MNIST / CIFAR-10: FID), logged as metrics quality_<metric>_<sampler>_<steps>, one table and a
quality-versus-NFE picture. With --class, a conditional model's samples are drawn for those classes
(cycled) at every --guidance weight and space, and their class accuracy (digits' classifier) is
measured too: metrics quality_<metric>_<sampler>_<steps>_w<w>_<space>.
"""


def register(sub) -> None:
    p = command(sub, "eval", __doc__, help="likelihood table of a trained model on its test shards", epilog=EPILOG)
    p.add_argument("model", metavar="RUN_OR_MODEL_URI", help="run id, runs:/RUN/model, models:/NAME@ALIAS or models:/NAME/VERSION")
    p.add_argument("--steps", help="step counts, 'inf' for continuous time (default: 10,25,50,100,1000,inf; "
                                   "with --quality 10,20,50,100)")
    p.add_argument("--repeats", type=int, default=1, help="Monte Carlo repeats per example (default 1)")
    p.add_argument("--batch-size", type=int, default=64, help="test examples per forward pass (default 64)")
    p.add_argument("--data", help="test manifest URL (default: the run config's data.test)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: a GPU when there is one (default)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="the network's autocast; auto: bf16 on GPU, as in training (fp32 for exact float32 figures)")
    p.add_argument("--workers", type=int, default=0,
                   help="Ray tasks that each evaluate a share of the test set (a GPU each on GPUs); 0: this process")
    p.add_argument("--seed", type=int, default=0, help="random seed of the noise (default 0): the same seed, the same result")
    q = p.add_argument_group("sample quality")
    q.add_argument("--quality", action="store_true", help="sample quality per sampler and step count, not the bound")
    q.add_argument("--sampler", default="bfn,ode1,ode2,sde1,sde2", help="samplers to compare (default: %(default)s)")
    q.add_argument("--n", "--n-samples", dest="n_samples", type=int, default=256, metavar="N",
                   help="samples per sampler and step count (default 256)")
    q.add_argument("--dataset", help="the data set whose quality metric applies (default: the model's training data)")
    q.add_argument("--class", dest="classes", metavar="CLASSES",
                   help="a conditional model: draw for these classes, cycled (an id, names, 0,1,2 or 'all')")
    q.add_argument("--guidance", help="classifier-free guidance weights with --class, e.g. 0,1,2 (default 0)")
    q.add_argument("--guidance-space", default="output", help="output, params or output,params (default: %(default)s)")
    add_verbose(p)
    add_json(p, "the table")
    p.set_defaults(func=run)


def run(args) -> int:
    from bfn_core import parse_steps
    from bfn_platform.console import progress_bar
    from bfn_platform.live import log_path, quiet_output
    from pipelines.evaluation import evaluate

    if args.quality:
        return run_quality(args)
    steps = parse_steps(args.steps or "10,25,50,100,1000,inf")
    with quiet_output(log_path("eval"), args.verbose) as term, progress_bar(term) as bar:
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


def run_quality(args) -> int:
    from bfn_core import parse_steps
    from bfn_platform.console import progress_bar
    from bfn_platform.live import log_path, quiet_output
    from pipelines.errors import PipelineError
    from pipelines.quality_report import evaluate_quality, format_points
    from pipelines.sample_quality import guidance_weights, point_grid

    steps = parse_steps(args.steps or "10,20,50,100")
    if None in steps:
        raise PipelineError("--quality takes finite step counts (e.g. 10,20,50,100), not 'inf'")
    samplers = [s.strip() for s in args.sampler.split(",") if s.strip()]
    guidance = None if args.guidance is None else parse_floats(args.guidance, "--guidance")
    spaces = [s.strip() for s in args.guidance_space.split(",") if s.strip()]
    with quiet_output(log_path("eval"), args.verbose) as term, progress_bar(term) as bar:
        total = len(point_grid(samplers, steps, guidance=guidance_weights(args.classes, guidance), spaces=spaces))
        task = bar.add_task("quality", total=total, info=f"{len(samplers)} samplers x {len(steps)} step counts"
                            + (f" x {len(guidance)} guidance weights" if guidance else ""))
        points, run_id, artifacts = evaluate_quality(
            args.model, samplers=samplers, steps=steps, n=args.n_samples, batch_size=args.batch_size, seed=args.seed,
            device=args.device, precision=args.precision, dataset=args.dataset, classes=args.classes,
            guidance=guidance, guidance_spaces=spaces, on_point=lambda p: bar.update(task, advance=1))
    if args.json:
        print_json({"run_id": run_id, "points": [p.to_dict() for p in points]})
    else:
        console.print(format_points(points))
        if run_id:
            console.print(f"logged to run {run_id}: metrics quality_*, artifacts {', '.join(artifacts)}")
    return 0


def parse_floats(text: str, flag: str) -> list[float]:
    """Comma-separated numbers, e.g. 0,1,2.5."""
    from pipelines.errors import PipelineError

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise PipelineError(f"{flag} takes comma-separated numbers (e.g. 0,1,2), got {text!r}") from None
    if not values:
        raise PipelineError(f"{flag} takes comma-separated numbers (e.g. 0,1,2), got {text!r}")
    return values
