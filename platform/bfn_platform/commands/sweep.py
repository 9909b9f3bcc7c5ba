"""`bfn sweep SPEC`: Ray Tune + Optuna + ASHA over accuracy schedules and the training loss (one objective,
or several for a Pareto front); or, for a spec with `kind: sampler`, sampler x step count on a trained
model with the Pareto front of quality against NFE. Tracked in MLflow."""
from __future__ import annotations

from bfn_platform.commands.common import add_json, add_overrides, add_ray_address, add_verbose, command, overrides, print_json
from bfn_platform.console import console

EPILOG = """examples:
  bfn sweep configs/sweeps/digits_sigma.yaml
  bfn sweep configs/sweeps/digits_sigma.yaml --set budget.trials=16 --set budget.concurrent=2
  bfn sweep configs/sweeps/digits_sigma.yaml --resume digits-sigma-20261129-101500   # after the driver died
  bfn sweep configs/sweeps/digits_pareto.yaml                  # two objectives: NSGA-II, Pareto front
  bfn sweep configs/sweeps/digits_samplers.yaml --set model=models:/digits@champion   # samplers x steps
  optuna-dashboard sqlite:///.bfn/optuna.db      # when the spec sets search.storage
outputs:
  MLflow parent run (spec, results table, plots, best config) with a nested run per trial;
  the same files under .bfn/sweeps/NAME/; the best trial's model is logged for `bfn models register`.
  A sampler sweep: a nested run per point, the Pareto fronts and a recommended sampler, set on the
  registered model version when the model is one (shown by `bfn models show`).
"""


def register(sub) -> None:
    p = command(sub, "sweep", __doc__, help="search sigma_1 / beta_1 and the loss (Ray Tune, Optuna, ASHA), or samplers x steps on a model", epilog=EPILOG)
    p.add_argument("spec", help="sweep spec (YAML); see configs/sweeps/")
    add_overrides(p, "budget.trials=4", "spec")
    p.add_argument("--resume", metavar="NAME", help="continue an interrupted sweep; finished trials are not run again")
    add_ray_address(p)
    add_verbose(p)
    add_json(p, "the outcome as JSON on the last line")
    p.set_defaults(func=run)


def run(args) -> int:
    from sweeps.sampler_spec import is_sampler_spec
    from sweeps.spec import check_spec, load_spec

    if is_sampler_spec(args.spec):
        return run_samplers(args)
    spec = load_spec(args.spec, overrides(args))
    check_spec(spec)  # every bad value fails here, before Ray starts
    from sweeps.run import run_sweep

    from bfn_platform.live import log_path, quiet_output

    with quiet_output(log_path("sweep"), args.verbose) as term:
        outcome = run_sweep(spec, resume=args.resume, ray_address=args.address, say=term.print)
    console.print(f"results: {outcome.out_dir}")
    if outcome.best_config:
        console.print(f"next: bfn train {outcome.best_config}   or   bfn models register {outcome.best_run_id} --name {spec.name}")
    if args.json:
        print_json({"name": outcome.name, "parent_run_id": outcome.parent_run_id, "best_run_id": outcome.best_run_id,
                    "best_value": outcome.best_value, "best_config": str(outcome.best_config) if outcome.best_config else None,
                    "model_uri": outcome.model_uri, "trials": outcome.table["status"].value_counts().to_dict()})
    return 0


def run_samplers(args) -> int:
    from pipelines.errors import PipelineError
    from sweeps.sampler_spec import load_sampler_spec
    from sweeps.sampler_sweep import run_sampler_sweep

    if args.resume:
        raise PipelineError("--resume is for training sweeps: a sampler sweep trains nothing, run it again")
    spec = load_sampler_spec(args.spec, overrides(args))
    from bfn_platform.live import log_path, quiet_output

    with quiet_output(log_path("sweep"), args.verbose) as term:
        outcome = run_sampler_sweep(spec, ray_address=args.address, say=term.print)
    console.print(f"results: {outcome.out_dir}")
    if args.json:
        print_json({"name": outcome.name, "parent_run_id": outcome.parent_run_id, "recommended": outcome.recommended,
                    "registered": list(outcome.registered) if outcome.registered else None,
                    "points": outcome.table.astype(object).where(outcome.table.notna(), None).to_dict(orient="records")})
    return 0
