"""`bfn runs`: browse MLflow runs: list (with MLflow search filters), show one, compare several."""
from __future__ import annotations

from pathlib import Path

from bfn_platform.commands.common import add_json, group, print_json, subcommand
from pipelines.names import LOSS, test_metric, val_metric
from bfn_platform.errors import BfnError

EPILOG = """examples:
  bfn runs list --experiment digits --filter "metrics.test_bits_inf < 3" --sort metrics.test_bits_inf
  bfn runs list --max 5 --json
  bfn runs show 3f2c9a...
  bfn runs compare 3f2c9a... 81d0e4... --out compare.png

Filters use MLflow's search syntax: metrics.X, params.X, tags.X, attributes.status ...
"""

LIST_METRICS = (LOSS, val_metric("inf"), test_metric("inf"))
CURVES = ("loss_bits_per_dim", val_metric("inf"))  # both in bits/dim: one scale for training and validation


def register(sub) -> None:
    rsub = group(sub, "runs", __doc__, help="browse MLflow runs: list, show, compare", epilog=EPILOG)

    ls = subcommand(rsub, "list", help="runs matching a filter, newest first",
                         epilog='example: bfn runs list --filter "metrics.test_bits_inf < 3" --sort metrics.test_bits_inf')
    ls.add_argument("--experiment", "-e", action="append", default=[], metavar="NAME",
                    help="experiment name (repeatable; default: all active experiments)")
    ls.add_argument("--filter", default="", metavar="EXPR", help='MLflow search filter, e.g. "metrics.test_bits_inf < 3"')
    ls.add_argument("--sort", action="append", default=[], metavar="KEY [ASC|DESC]",
                    help="order, e.g. 'metrics.test_bits_inf' or 'attributes.start_time DESC' (repeatable)")
    ls.add_argument("--max", type=int, default=50, metavar="N", help="at most N runs (default 50)")
    add_json(ls)
    ls.set_defaults(func=run_list)

    s = subcommand(rsub, "show", help="params, metrics, artifacts and the likelihood table of RUN")
    s.add_argument("run", metavar="RUN")
    add_json(s)
    s.set_defaults(func=run_show)

    c = subcommand(rsub, "compare", help="RUNs side by side, and a PNG of their loss / val_bits_inf curves",
                        epilog="example: bfn runs compare 3f2c9a... 81d0e4... --out compare.png")
    c.add_argument("runs", metavar="RUN", nargs="+")
    c.add_argument("--out", metavar="PNG", help="picture of the curves (default: $BFN_HOME/compare/<ids>.png)")
    c.add_argument("--metric", action="append", default=[], metavar="NAME",
                   help=f"curves to draw (default: {', '.join(CURVES)})")
    add_json(c)
    c.set_defaults(func=run_compare)


def _client():
    import mlflow

    from pipelines.tracking import setup_mlflow

    setup_mlflow()
    return mlflow.MlflowClient()


def get_run(client, ref: str):
    """The run of a full id, a unique id prefix or a run name."""
    from mlflow.exceptions import MlflowException

    from pipelines.tracking import resolve_run_id

    run_id = resolve_run_id(ref)
    try:
        return client.get_run(run_id)
    except MlflowException:
        raise BfnError(f"unknown run {run_id}: no such run (find runs with `bfn runs list`)") from None


def _experiments(client, names: list[str]) -> dict[str, str]:
    """experiment id -> name, for the named experiments or all active ones."""
    if not names:
        return {e.experiment_id: e.name for e in client.search_experiments(max_results=1000)}
    out = {}
    for name in names:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise BfnError(f"unknown experiment {name} (list runs of all experiments with `bfn runs list`)")
        out[exp.experiment_id] = name
    return out


def summary(run, experiment: str) -> dict:
    i = run.info
    return {"run_id": i.run_id, "name": i.run_name, "experiment": experiment, "experiment_id": i.experiment_id,
            "status": i.status, "start_time": i.start_time, "end_time": i.end_time,
            "metrics": dict(run.data.metrics), "params": dict(run.data.params),
            "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}}


def run_list(args) -> int:
    from mlflow.exceptions import MlflowException

    from bfn_platform.console import console

    if args.max < 1:
        raise BfnError("--max must be at least 1")
    client = _client()
    exps = _experiments(client, args.experiment)
    if not exps:
        runs = []
    else:
        try:
            runs = client.search_runs(list(exps), filter_string=args.filter, max_results=args.max,
                                      order_by=args.sort or ["attributes.start_time DESC"])
        except MlflowException as err:
            raise BfnError(f"bad --filter or --sort: {err.message.splitlines()[0]} "
                           "(syntax: metrics.test_bits_inf < 3, params.model.width = '16')") from None
    rows = [summary(r, exps.get(r.info.experiment_id, r.info.experiment_id)) for r in runs]
    if args.json:
        print_json(rows)
        return 0
    from rich.table import Table

    table = Table("experiment", "name", "status", "started", *LIST_METRICS)
    table.add_column("run", no_wrap=True, min_width=32)  # whole: what the other commands take
    for r in rows:
        table.add_row(r["experiment"], r["name"] or "", r["status"], _time(r["start_time"]),
                      *(_num(r["metrics"].get(m)) for m in LIST_METRICS), r["run_id"])
    console.print(table if rows else "no runs match")
    return 0


def _time(ms: int | None) -> str:
    import time

    return "-" if not ms else time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000))


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _artifacts(client, run_id: str, path: str | None = None, depth: int = 2) -> list[str]:
    out = []
    for a in client.list_artifacts(run_id, path):
        if a.is_dir and depth > 1:
            out += _artifacts(client, run_id, a.path, depth - 1)
        else:
            out.append(a.path + ("/" if a.is_dir else ""))
    return out


def likelihood_table(run_id: str) -> dict | None:
    """eval/likelihood.json of the run (written by `bfn eval`), or None."""
    import mlflow

    try:
        return mlflow.artifacts.load_dict(f"runs:/{run_id}/eval/likelihood.json")
    except Exception:  # not evaluated yet
        return None


def run_show(args) -> int:
    from rich.table import Table

    from bfn_platform.console import console

    client = _client()
    run = get_run(client, args.run)
    exp = client.get_experiment(run.info.experiment_id)
    info = summary(run, exp.name if exp else run.info.experiment_id)
    info["artifacts"] = _artifacts(client, run.info.run_id)
    info["likelihood"] = likelihood_table(run.info.run_id) if "eval/likelihood.json" in info["artifacts"] else None
    if args.json:
        print_json(info)
        return 0
    console.print(f"[bold]run {info['run_id']}[/] ({info['name']}) in {info['experiment']}: {info['status']}, "
                  f"started {_time(info['start_time'])}", highlight=False)
    for title, values in (("params", info["params"]), ("metrics (last value)", info["metrics"]), ("tags", info["tags"])):
        t = Table("key", "value", title=title)
        for k in sorted(values):
            v = values[k]
            t.add_row(k, f"{v:.6g}" if isinstance(v, float) else str(v))
        console.print(t)
    console.print("artifacts: " + (", ".join(info["artifacts"]) or "none"), highlight=False)
    lik = info["likelihood"]
    if lik:
        unit = lik.get("unit", "dim")
        t = Table("steps", f"bits/{unit}", "± s.e. (examples)", "± s.e. (MC)", "nats",
                  title=f"likelihood ({lik.get('num_examples')} test examples, {lik.get('n_repeats', 1)} repeat(s), "
                        f"manifest sha {lik.get('manifest_sha256', '')[:12]})")
        for r in lik.get("rows", []):
            t.add_row(str(r.get("label", r.get("steps"))), _num(r.get("bits_per_dim")),
                      _num(r.get("bits_se_examples", r.get("bits_per_dim_se"))), _num(r.get("bits_se_mc")), _num(r.get("nats")))
        console.print(t)
    else:
        console.print(f"no likelihood table yet: bfn eval {run.info.run_id}")
    return 0


def run_compare(args) -> int:
    from rich.table import Table

    from bfn_platform.console import console
    from pipelines.tracking import bfn_home

    client = _client()
    runs = [get_run(client, r) for r in args.runs]
    metrics = args.metric or list(CURVES)
    curves = {r.info.run_id: {m: [(h.step, h.value) for h in sorted(client.get_metric_history(r.info.run_id, m),
                                                                      key=lambda h: (h.step, h.timestamp))]
                              for m in metrics} for r in runs}
    out = Path(args.out) if args.out else bfn_home() / "compare" / ("-".join(r.info.run_id[:8] for r in runs) + ".png")
    plot_curves(curves, metrics, out, {r.info.run_id: r.info.run_name or r.info.run_id[:8] for r in runs})
    all_params = sorted({k for r in runs for k in r.data.params})
    differing = [k for k in all_params if len({r.data.params.get(k) for r in runs}) > 1]
    all_metrics = sorted({k for r in runs for k in r.data.metrics})
    if args.json:
        print_json({"runs": [r.info.run_id for r in runs], "picture": str(out),
                    "params": {k: [r.data.params.get(k) for r in runs] for k in differing},
                    "metrics": {k: [r.data.metrics.get(k) for r in runs] for k in all_metrics}})
        return 0
    table = Table("", *(r.info.run_id[:12] for r in runs), title="runs side by side")
    table.add_row("name", *(r.info.run_name or "" for r in runs))
    table.add_row("status", *(r.info.status for r in runs))
    for k in differing:
        table.add_row(f"params.{k}", *(r.data.params.get(k, "-") for r in runs))
    for k in all_metrics:
        table.add_row(k, *(_num(r.data.metrics.get(k)) for r in runs))
    console.print(table)
    console.print(f"curves ({', '.join(metrics)}): {out}", highlight=False)
    return 0


def plot_curves(curves: dict[str, dict[str, list[tuple[int, float]]]], metrics: list[str], out: Path,
                names: dict[str, str] | None = None) -> Path:
    """One panel per metric, one line per run (labelled with its name), against the training step."""
    from pipelines.pictures import _pyplot, save_figure

    plt = _pyplot()
    names = names or {}
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 3.8), dpi=110, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for run_id, series in curves.items():
            points = series.get(metric) or []
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker="o", markersize=2, label=names.get(run_id) or run_id[:8])
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel(_unit(metric))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)


def _unit(metric: str) -> str:
    if "bits" in metric:
        return "bits / dim"
    if "nats" in metric or metric == LOSS:
        return "nats per example"
    return metric
