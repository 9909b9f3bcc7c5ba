"""`bfn submit -- COMMAND...`: run any bfn command as a Ray job on a cluster (Ray Jobs API).

The job carries the project as its working_dir (without .venv, .bfn, .git, data and large files)
and the MLflow and S3 settings of this shell (MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL, BFN_*) as
env_vars. Credentials never travel as values (Ray writes a job's env_vars to its logs and returns
them from the Jobs API): AWS keys reach the job as the path of a 0600 credentials file (the local
stack's, or one written under $BFN_HOME/credentials from this shell's keys), and on a remote cluster
the nodes' own identity (IAM role, service account, the Secret bfn-credentials) supplies them.
"""
from __future__ import annotations

import argparse
import shlex
import time

from bfn_platform.commands.common import add_jobs_address, command
from bfn_platform.errors import BfnError
from pipelines.names import ENV_MLFLOW_TRACKING_PASSWORD, ENV_MLFLOW_TRACKING_URI

EPILOG = """examples:
  bfn submit --address http://127.0.0.1:8265 -- bfn train configs/digits_discretised.yaml
  bfn submit --name sigma-sweep --no-wait -- bfn sweep configs/sweeps/digits_sigma.yaml
  bfn submit --follow -- bfn eval 3f2c9a... --steps 10,inf
then:
  bfn jobs status JOB   |   bfn jobs logs JOB --follow   |   bfn jobs stop JOB
address: --address, else RAY_ADDRESS (http://...), else BFN_RAY_DASHBOARD (.bfn/stack.env), else the local stack.
"""
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def register(sub) -> None:
    p = command(sub, "submit", __doc__, help="run a bfn command as a Ray job on a cluster", epilog=EPILOG)
    add_jobs_address(p)
    p.add_argument("--name", help="job name (the job id starts with it)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    mode.add_argument("--follow", action="store_true", help="stream the job's log until it ends")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="stop waiting after S seconds (exit 1)")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND...", help="the bfn command to run")
    p.set_defaults(func=run)


def entrypoint(command: list[str]) -> str:
    """The job's shell command; only bfn commands (the platform's own entry point) are accepted."""
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise BfnError("nothing to submit: give the command after --, e.g. `bfn submit -- bfn train CONFIG`")
    if command[0] != "bfn":
        raise BfnError(f"bfn submit runs bfn commands (got {command[0]!r}): write `bfn submit -- bfn {shlex.join(command)}`")
    return shlex.join(command)


def run(args) -> int:
    import os

    from bfn_platform.console import err_console
    from bfn_platform.jobs import client, redact, runtime_env, submission_id
    from pipelines.tracking import check_tracking_server

    command = entrypoint(args.command)
    uri = os.environ.get(ENV_MLFLOW_TRACKING_URI)
    if uri:
        check_tracking_server(uri)  # a job that cannot log is a wasted job: fail before submitting
    else:
        err_console.print("[yellow]note[/]: MLFLOW_TRACKING_URI is not set: the job tracks runs in its own BFN_HOME store",
                          highlight=False)
    if os.environ.get(ENV_MLFLOW_TRACKING_PASSWORD):
        err_console.print("[yellow]note[/]: MLFLOW_TRACKING_PASSWORD is not sent to the job (credentials never travel in a "
                          "job's env): the cluster's nodes need it from their own identity (Secret bfn-credentials)",
                          highlight=False)
    jobs = client(args.address)
    env = runtime_env()
    job_id = jobs.submit_job(entrypoint=command, runtime_env=env, submission_id=submission_id(args.name),
                             metadata={"name": args.name or "", "submitted_by": "bfn submit"})
    print(job_id, flush=True)
    if args.no_wait:
        err_console.print(f"follow it with: bfn jobs logs {job_id} --follow", highlight=False)
        return 0
    status = follow(jobs, job_id, args.timeout) if args.follow else wait(jobs, job_id, args.timeout)
    if status != "SUCCEEDED":
        raise BfnError(redact(f"job {job_id} ended {status}: {failure_line(jobs, job_id)} "
                              f"(its log: `bfn jobs logs {job_id}`)"))
    err_console.print(f"job {job_id} SUCCEEDED", highlight=False)
    return 0


def failure_line(jobs, job_id: str) -> str:
    """The bfn command's own `error: ...` line from the job's log, else the last line of Ray's message."""
    try:
        lines = [ln.strip() for ln in jobs.get_job_logs(job_id).splitlines() if ln.strip()]
    except Exception:  # the log is gone (e.g. the node died): fall back to the job's status message
        lines = []
    errors = [ln[len("error: "):] for ln in lines if ln.startswith("error: ")]
    if errors:
        return errors[-1]
    message = (jobs.get_job_info(job_id).message or "").strip().splitlines()
    return message[-1] if message else "no message"


def wait(jobs, job_id: str, timeout: float | None) -> str:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = str(jobs.get_job_status(job_id).value)
        if status in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise BfnError(f"job {job_id} still {status} after {timeout:.0f} s: it keeps running "
                           f"(`bfn jobs status {job_id}`, `bfn jobs stop {job_id}`)")
        time.sleep(1.0)


def follow(jobs, job_id: str, timeout: float | None) -> str:
    import asyncio
    import sys

    from bfn_platform.jobs import redact

    async def tail() -> None:
        async for chunk in jobs.tail_job_logs(job_id):
            sys.stdout.write(redact(chunk))
            sys.stdout.flush()

    try:
        asyncio.run(asyncio.wait_for(tail(), timeout))
    except asyncio.TimeoutError:
        raise BfnError(f"job {job_id} still running after {timeout:.0f} s: it keeps running "
                       f"(`bfn jobs status {job_id}`)") from None
    return wait(jobs, job_id, 60)
