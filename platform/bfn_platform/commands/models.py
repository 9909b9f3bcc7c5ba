"""`bfn models`: register trained runs' models, list and show them, promote and roll back aliases.

Promotion is guarded by the likelihood results of `bfn eval`: the candidate must have been
evaluated on the same test shards (sha256) as the current champion and beat it by more than the
combined standard error at the chosen step count. Every promotion records who, when, why and the
previous champion (model-version tags, a `previous-champion` alias and the model's history).
"""
from __future__ import annotations


from bfn_platform.commands.common import add_json, group, print_json, subcommand
from bfn_platform.errors import BfnError
from pipelines.names import TAG_RECOMMENDED, test_metric, test_se_metric

EPILOG = """examples:
  bfn models register 3f2c9a... --name digits
  bfn models list
  bfn models show digits --json
  bfn models promote digits 3                      # guarded: must beat @champion at steps=inf
  bfn models promote digits 3 --steps 100          # compare test_bits_n100 instead
  bfn models promote digits 2 --force --reason "rollback of a bad data fix"
  bfn models rollback digits                       # @champion back to @previous-champion
  bfn sample models:/digits@champion --n 16
"""


def register(sub) -> None:
    msub = group(sub, "models", __doc__, help="model registry: register, list, show, promote, roll back", epilog=EPILOG)

    r = subcommand(msub, "register", help="register a run's logged model as a new version of NAME",
                        epilog="example: bfn models register 3f2c9a... --name digits")
    r.add_argument("run", metavar="RUN", help="run id of a finished training run")
    r.add_argument("--name", required=True, help="registered model name (created if new)")
    add_json(r)
    r.set_defaults(func=run_register)

    ls = subcommand(msub, "list", help="registered models with their versions and aliases")
    add_json(ls)
    ls.set_defaults(func=run_list)

    s = subcommand(msub, "show", help="versions, aliases, likelihood results and promotion history of NAME",
                        epilog="example: bfn models show digits --steps 100")
    s.add_argument("name", metavar="NAME")
    s.add_argument("--steps", default="inf", help="step label to show (default: inf)")
    add_json(s)
    s.set_defaults(func=run_show)

    pr = subcommand(msub, "promote", help="move an alias (default champion) to VERSION, guarded by likelihood",
                    epilog="examples:\n  bfn models promote digits 3\n"
                           "  bfn models promote digits 2 --force --reason \"test set changed\"")
    pr.add_argument("name", metavar="NAME")
    pr.add_argument("version", metavar="VERSION")
    pr.add_argument("--alias", default="champion", help="alias to move (default: champion)")
    pr.add_argument("--steps", default="inf", help="step count of the compared bound: an integer or inf (default inf)")
    pr.add_argument("--force", action="store_true", help="promote even if the guard refuses (needs --reason)")
    pr.add_argument("--reason", help="why: recorded with the promotion (required with --force)")
    add_json(pr)
    pr.set_defaults(func=run_promote)

    rb = subcommand(msub, "rollback", help="move @champion back to @previous-champion",
                         epilog="example: bfn models rollback digits --reason \"v4 samples look wrong\"")
    rb.add_argument("name", metavar="NAME")
    rb.add_argument("--alias", default="champion", help="alias to roll back (default: champion)")
    rb.add_argument("--reason", help="why: recorded in the history")
    add_json(rb)
    rb.set_defaults(func=run_rollback)


def step_label(text: str) -> str:
    """'inf' / '100' / 'n100' -> the metric label ('inf', 'n100')."""
    from bfn_core import parse_steps, steps_label

    text = text.strip().lower()
    if text.startswith("n") and text[1:].isdigit():
        text = text[1:]
    steps = parse_steps(text)
    if len(steps) != 1:
        raise BfnError(f"--steps takes one step count, got {text!r}")
    return steps_label(steps[0])


def _client():
    import mlflow

    from pipelines.tracking import setup_mlflow

    setup_mlflow()
    return mlflow.MlflowClient()


def run_register(args) -> int:
    from bfn_platform.console import console
    from bfn_platform.promotion import register_run

    _client()  # the tracking store, checked
    mv = register_run(args.run, args.name)
    model_id = mv.source.removeprefix("models:/")
    if args.json:
        print_json({"name": mv.name, "version": str(mv.version), "run_id": mv.run_id, "model_id": model_id})
    else:
        console.print(f"registered [bold]{mv.name}[/] version {mv.version} from run {mv.run_id}")
        console.print(f"next: bfn models promote {mv.name} {mv.version}")
    return 0


def _models(client) -> list:
    from bfn_platform.registry_lock import is_lock

    out, token = [], None
    while True:
        page = client.search_registered_models(max_results=100, page_token=token)
        out += [m for m in page if not is_lock(m.name)]
        token = page.token
        if not token:
            return out


def run_list(args) -> int:
    from bfn_platform.console import console

    client = _client()
    rows = []
    for m in _models(client):
        versions = client.search_model_versions(f"name='{m.name}'")
        rows.append({"name": m.name, "versions": len(versions),
                     "latest": max((int(v.version) for v in versions), default=None),
                     "aliases": {a: str(v) for a, v in (m.aliases or {}).items()},
                     "updated": m.last_updated_timestamp})
    if args.json:
        print_json(rows)
        return 0
    from rich.table import Table

    table = Table("name", "versions", "latest", "aliases")
    for r in rows:
        table.add_row(r["name"], str(r["versions"]), str(r["latest"] or "-"),
                      ", ".join(f"@{a}=v{v}" for a, v in sorted(r["aliases"].items())) or "-")
    console.print(table if rows else "no registered models (register one with `bfn models register RUN --name NAME`)")
    return 0


def describe(client, name: str, label: str) -> dict:
    """Everything `show` prints, as plain data."""
    from mlflow.exceptions import MlflowException

    from bfn_platform.promotion import evaluation_of, record_unguarded
    from bfn_platform.registry_history import history

    try:
        model = client.get_registered_model(name)
    except MlflowException:
        raise BfnError(f"unknown model {name}: no such registered model (list them with `bfn models list`)") from None
    unguarded = record_unguarded(client, name)
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    versions = []
    for mv in sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version)):
        ev = evaluation_of(client, mv, label)
        versions.append({"version": str(mv.version), "aliases": sorted(aliases.get(str(mv.version), [])),
                         "run_id": mv.run_id, "status": mv.status, "created": mv.creation_timestamp,
                         test_metric(label): ev.bits, test_se_metric(label): ev.se, "test_sha256": ev.test_sha,
                         "tags": dict(mv.tags)})
    return {"name": name, "aliases": {a: str(v) for a, v in (model.aliases or {}).items()}, "steps": label,
            "versions": versions, "history": history(client, name), "unguarded": unguarded}


def run_show(args) -> int:
    from rich.table import Table

    from bfn_platform.console import console

    label = step_label(args.steps)
    info = describe(_client(), args.name, label)
    if args.json:
        print_json(info)
        return 0
    table = Table("version", "aliases", "run", test_metric(label), "± s.e. (examples)", "test sha256", "promoted by",
                  title=f"model {info['name']}")
    for v in info["versions"]:
        bits, se = v[test_metric(label)], v[test_se_metric(label)]
        table.add_row(v["version"], " ".join("@" + a for a in v["aliases"]) or "-", (v["run_id"] or "-")[:12],
                      "-" if bits is None else f"{bits:.4f}", "-" if se is None else f"{se:.4f}",
                      (v["test_sha256"] or "-")[:12], v["tags"].get("bfn.promoted_by", "-"))
    console.print(table)
    for entry in info["unguarded"]:
        console.print(f"[yellow]warning[/]: @{entry['alias']} was moved to v{entry['version']} outside bfn (no likelihood "
                      "guard); recorded as unguarded in the history", highlight=False)
    for v in info["versions"]:
        rec = {k.removeprefix(TAG_RECOMMENDED + "."): val for k, val in v["tags"].items() if k.startswith(TAG_RECOMMENDED + ".")}
        if rec.get("sampler"):
            guided = f", guidance {rec['guidance']} ({rec.get('guidance_space')})" if "guidance" in rec else ""
            console.print(f"v{v['version']} recommended sampler: {rec['sampler']} ({rec.get('grid', 'default')} grid) at "
                          f"{rec.get('steps')} steps{guided}: {rec.get('quality', '')} (sampler sweep run {rec.get('sweep', '-')})",
                          highlight=False)
    if info["history"]:
        hist = Table("#", "action", "alias", "version", "previous", "by", "at", "reason", title="promotion history")
        for i, h in enumerate(info["history"], 1):
            hist.add_row(str(i), h["action"] + (" (forced)" if h.get("forced") else ""), h["alias"], "v" + h["version"],
                         "v" + h["previous"] if h.get("previous") else "-", h["by"], h["at"], (h.get("reason") or "")[:60])
        console.print(hist)
    return 0


def run_promote(args) -> int:
    from bfn_platform.console import console
    from bfn_platform.promotion import promote

    label = step_label(args.steps)
    if args.force and not (args.reason or "").strip():
        raise BfnError("--force needs --reason TEXT: say why the guard is overridden (it is recorded)")
    result = promote(_client(), args.name, args.version, alias=args.alias, label=label, force=args.force,
                     reason=args.reason)
    if args.json:
        print_json({"name": result.name, "version": result.version, "alias": result.alias,
                    "previous": result.previous, "forced": result.forced, "guard": result.verdict.reason})
        return 0
    prev = f" (previous: v{result.previous}, now @previous-{result.alias})" if result.previous else ""
    console.print(f"{result.name} v{result.version} is now @{result.alias}{prev}", highlight=False)
    console.print(("[yellow]forced[/]: " if result.forced else "guard: ") + result.verdict.reason, highlight=False)
    return 0


def run_rollback(args) -> int:
    from bfn_platform.console import console
    from bfn_platform.promotion import rollback

    src, dst = rollback(_client(), args.name, alias=args.alias, reason=args.reason)
    if args.json:
        print_json({"name": args.name, "alias": args.alias, "from": src, "to": dst})
    else:
        console.print(f"{args.name} @{args.alias}: v{src} -> v{dst}", highlight=False)
    return 0
