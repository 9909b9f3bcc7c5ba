"""`bfn jobs list|status|logs|stop`: the Ray jobs of a cluster (the Jobs API of its dashboard)."""
from __future__ import annotations


from bfn_platform.commands.common import add_jobs_address, add_json, group, print_json, subcommand

EPILOG = """examples:
  bfn jobs list --json
  bfn jobs status train-digits-1a2b3c4d
  bfn jobs logs train-digits-1a2b3c4d --follow
  bfn jobs stop train-digits-1a2b3c4d
address: --address, else RAY_ADDRESS (http://...), else BFN_RAY_DASHBOARD (.bfn/stack.env), else the local stack.
"""


def register(sub) -> None:
    jsub = group(sub, "jobs", __doc__, help="list, inspect, follow and stop Ray jobs", epilog=EPILOG)
    for name, helptext in (("list", "jobs of the cluster, newest first"), ("status", "one job's state"),
                           ("logs", "one job's driver log"), ("stop", "stop a running job")):
        s = subcommand(jsub, name, help=helptext, epilog=EPILOG)
        add_jobs_address(s)
        if name != "list":
            s.add_argument("job", metavar="JOB", help="job (submission) id")
        if name in ("list", "status"):
            add_json(s)
        if name == "logs":
            s.add_argument("--follow", "-f", action="store_true", help="stream until the job ends")
        s.set_defaults(func={"list": run_list, "status": run_status, "logs": run_logs, "stop": run_stop}[name])


def run_list(args) -> int:
    from rich.table import Table

    from bfn_platform.console import console
    from bfn_platform.jobs import client, info_dict

    # Ray also lists every driver that connected with ray.init() (a notebook, a probe): keep submitted jobs
    jobs = [j for j in client(args.address).list_jobs() if getattr(j, "submission_id", None)]
    rows = sorted((info_dict(j) for j in jobs), key=lambda r: -(r["start_time"] or 0))
    if args.json:
        print_json(rows)
        return 0
    table = Table("job", "status", "entrypoint", "message")
    for r in rows:
        table.add_row(r["job_id"], r["status"], r["entrypoint"], (r["message"] or "")[:80])
    console.print(table if rows else "no jobs")
    return 0


def run_status(args) -> int:
    from bfn_platform.console import console
    from bfn_platform.jobs import client, info_dict, job_info

    info = info_dict(job_info(client(args.address), args.job))
    if args.json:
        print_json(info)
    else:
        console.print(f"{info['job_id']}: {info['status']}  {info['entrypoint']}\n{info['message'] or ''}", highlight=False)
    return 0


def run_logs(args) -> int:
    import sys

    from bfn_platform.jobs import client, job_info

    jobs = client(args.address)
    job_info(jobs, args.job)  # unknown job: one clear line
    if args.follow:
        from bfn_platform.commands.submit import follow

        follow(jobs, args.job, None)
    else:
        from bfn_platform.jobs import redact

        sys.stdout.write(redact(jobs.get_job_logs(args.job)))
    return 0


def run_stop(args) -> int:
    from bfn_platform.console import console
    from bfn_platform.jobs import client, job_info

    jobs = client(args.address)
    job_info(jobs, args.job)
    stopped = jobs.stop_job(args.job)
    console.print(f"{args.job}: {'stop requested' if stopped else 'already finished'}", highlight=False)
    return 0
