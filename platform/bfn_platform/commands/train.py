"""`bfn train CONFIG`: a Ray Train run tracked in MLflow."""
from __future__ import annotations

import argparse

from bfn_platform.console import console

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
    p = sub.add_parser("train", help="train a BFN on Ray Train, tracked in MLflow", description=__doc__,
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="experiment config (YAML); see configs/")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. training.steps=100 (repeatable)")
    p.add_argument("--resume", metavar="RUN", help="continue a stopped run from its last checkpoint")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from pipelines.config import load_config
    from pipelines.errors import PipelineError
    from pipelines.train import train

    if not args.config and not args.resume:
        raise PipelineError("bfn train needs a CONFIG file or --resume RUN (see `bfn train --help`)")
    cfg = load_config(args.config, args.overrides) if args.config else None
    if cfg is not None:
        console.print(f"training [bold]{cfg.model.network}[/] on {cfg.data.kind} data with {cfg.scaling.num_workers} worker(s), "
                      f"{cfg.training.steps} steps")
    outcome = train(cfg, resume_run=args.resume, ray_address=args.address)
    if args.json:
        print(json.dumps({"run_id": outcome.run_id, "model_uri": outcome.model_uri, "checkpoint": outcome.checkpoint_path}))
    else:
        console.print(f"run [bold]{outcome.run_id}[/] finished; model {outcome.model_uri}")
        console.print(f"next: bfn eval {outcome.run_id}")
    return 0
