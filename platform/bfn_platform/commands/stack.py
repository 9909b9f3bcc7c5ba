"""`bfn stack up|status|down`: real services on loopback for a multi-process setup on one machine.

up:     an S3 server (bucket `bfn`, checked credentials, every object written through to disk), an
        MLflow tracking server (SQLite store, proxied artifacts on local disk), a Ray head and a worker
        node (token authentication on), every socket on 127.0.0.1; writes $BFN_HOME/stack.env.
        Idempotent; a failed start leaves nothing behind.
status: each service's health, asked of the service itself; every Ray node must be on 127.x.
down:   stops exactly the processes `up` started; all data is already on disk.
"""
from __future__ import annotations

from pathlib import Path

from bfn_platform.commands.common import add_json, group, print_json, subcommand
from bfn_platform.errors import BfnError

EPILOG = """examples:
  bfn stack up                                  # default ports: Ray 6379, dashboard 8265, MLflow 5000, S3 9000
  source .bfn/stack.env                         # point this shell at the stack
  bfn stack status --json
  bfn stack up --ports ray=26379,dashboard=28265,client=20001,mlflow=25000,s3=29000 --home /tmp/bfn2   # outside 10002-19999
  bfn stack down

Data kept in the stack survives `down` / `up` and a crash of any service: MLflow's store and
artifacts live on disk under HOME/stack/, and the S3 server writes each object to HOME/stack/s3-store
before acknowledging it.
"""


def register(sub) -> None:
    ssub = group(sub, "stack", __doc__, help="start / check / stop the local services (Ray, MLflow, S3) on loopback", epilog=EPILOG)
    for name, helptext in (("up", "start what is not running and write the env file"),
                           ("status", "health of each service"), ("down", "stop what `up` started")):
        s = subcommand(ssub, name, help=helptext, epilog=EPILOG)
        s.add_argument("--home", metavar="DIR", help="state folder (default: $BFN_HOME, else ./.bfn)")
        if name == "up":
            s.add_argument("--ports", metavar="NAME=PORT,...",
                           help="override ports: ray, dashboard, client, mlflow, s3 (kept until `down`)")
        add_json(s)
        s.set_defaults(func={"up": run_up, "status": run_status, "down": run_down}[name])


def _home(args) -> Path:
    if args.home:
        return Path(args.home).resolve()
    from pipelines.tracking import bfn_home

    return bfn_home()


def _table(rows: list[dict]) -> None:
    from rich.table import Table

    from bfn_platform.console import console

    table = Table("service", "state", "pid", "detail")
    colours = {"healthy": "green", "unhealthy": "red", "dead": "red", "stopped": "dim"}
    for r in rows:
        table.add_row(r["service"], f"[{colours[r['state']]}]{r['state']}[/]", str(r["pid"] or "-"), r["detail"])
    console.print(table)


def run_up(args) -> int:
    from bfn_platform.console import console
    from bfn_platform.stack import status, up
    from bfn_platform.stack_state import parse_ports

    ports = parse_ports(args.ports)
    quiet = args.json
    stack = up(_home(args), ports, log=(lambda m: None) if quiet else (lambda m: console.print(m, highlight=False)))
    rows = status(stack.home)
    if args.json:
        print_json({"env_file": str(stack.env_file), "services": rows, "ports": stack.ports,
                    "dashboard": stack.dashboard_url, "mlflow": stack.mlflow_url, "s3": stack.s3_url})
    else:
        _table(rows)
        console.print(f"env file: {stack.env_file}\n  source it:  source {stack.env_file}", highlight=False)
        console.print(f"Jobs API: {stack.dashboard_url}   MLflow: {stack.mlflow_url}   S3: {stack.s3_url}", highlight=False)
    bad = [r["service"] for r in rows if r["state"] != "healthy"]
    if bad:
        raise BfnError(f"stack started but {', '.join(bad)} not healthy: see `bfn stack status`")
    return 0


def run_status(args) -> int:
    from bfn_platform.stack import status

    rows = status(_home(args))
    if args.json:
        print_json(rows)
    else:
        _table(rows)
    return 0 if all(r["state"] in ("healthy", "stopped") for r in rows) else 1


def run_down(args) -> int:
    from bfn_platform.console import console
    from bfn_platform.stack import down

    quiet = args.json
    down(_home(args), log=(lambda m: None) if quiet else (lambda m: console.print(m, highlight=False)))
    if args.json:
        print_json({"stopped": True})
    return 0
