"""`bfn train CONFIG`: a Ray Train run tracked in MLflow."""
from __future__ import annotations

from bfn_platform.commands.common import add_json, add_overrides, add_ray_address, add_verbose, command, overrides, print_json
from bfn_platform.console import console
from bfn_platform.errors import BfnError

EPILOG = """examples:
  bfn train configs/digits_discretised.yaml
  bfn train configs/digits_discretised.yaml --set training.steps=200 --set scaling.num_workers=2
  bfn train --resume 3f2c9a...            # continue a stopped or failed run from its last checkpoint
environment:
  MLFLOW_TRACKING_URI   tracking server (default: the local store ./.bfn/mlflow.db)
  RAY_ADDRESS           Ray cluster to join (default: a local Ray started in this process)
  AWS_ENDPOINT_URL ...  S3 endpoint and credentials for s3:// data and checkpoints
"""


def register(sub) -> None:
    p = command(sub, "train", __doc__, help="train a BFN on Ray Train, tracked in MLflow", epilog=EPILOG)
    p.add_argument("config", nargs="?", help="experiment config (YAML); see configs/")
    add_overrides(p, "training.steps=100", "config")
    p.add_argument("--resume", metavar="RUN", help="continue a stopped run from its last checkpoint")
    add_ray_address(p)
    add_verbose(p)
    add_json(p, "the outcome")
    p.set_defaults(func=run)


def run(args) -> int:
    from bfn_platform.live import TrainingDisplay, log_path, quiet_output
    from pipelines.config import load_config
    from pipelines.training import train

    if not args.config and not args.resume:
        raise BfnError("bfn train needs a CONFIG file or --resume RUN (see `bfn train --help`)")
    cfg = load_config(args.config, overrides(args)) if args.config else None
    with quiet_output(log_path("train"), args.verbose) as term:
        def started(run_id, config):
            term.print(f"training [bold]{config.model.network}[/] on {config.data.kind} data with "
                       f"{config.scaling.num_workers} worker(s), {config.training.steps} steps: run {run_id}")

        with TrainingDisplay(term) as display:
            outcome = train(cfg, resume_run=args.resume, ray_address=args.address, on_progress=display, on_start=started)
    if args.json:
        print_json({"run_id": outcome.run_id, "model_uri": outcome.model_uri, "checkpoint": outcome.checkpoint_path})
    else:
        console.print(f"run [bold]{outcome.run_id}[/] finished; model {outcome.model_uri}")
        console.print(f"next: bfn eval {outcome.run_id}")
    return 0
