"""`bfn check CONFIG`: validate a config and size what it would run, without starting Ray."""
from __future__ import annotations

from bfn_platform.commands.common import add_json, add_overrides, command, overrides, print_json

EPILOG = """examples:
  bfn check configs/paper/cifar10_discretised_256.yaml --no-data
  bfn check configs/paper/text8.yaml --set scaling.num_workers=4 --json
  bfn check configs/digits_discretised.yaml          # also reads each manifest (data.train/val/test)

Prints the network's parameter count (built at full size on PyTorch's meta device: no memory, no
arithmetic), the activation memory one example costs in a training forward pass (float32; bf16
autocast roughly halves it), the global batch and how it is split over workers and gradient
accumulation, and whether every data manifest is reachable and readable as the config's data.
Exit status 1 when the config is invalid or a manifest is not usable.
"""


def register(sub) -> None:
    p = command(sub, "check", __doc__, help="validate a config, count its parameters and memory, check its data", epilog=EPILOG)
    p.add_argument("config", help="experiment config (YAML); see configs/")
    add_overrides(p, "scaling.num_workers=4", "config")
    p.add_argument("--no-data", action="store_true", help="do not read the data manifests (uses data.shape)")
    add_json(p, "the report")
    p.set_defaults(func=run)


def run(args) -> int:

    from bfn_platform.console import console
    from bfn_platform.errors import BfnError
    from pipelines.check import check, human_bytes
    from pipelines.config import load_config

    cfg = load_config(args.config, overrides(args))
    report = check(cfg, look_at_data=not args.no_data)
    if args.json:
        print_json(report.to_dict())
    else:
        per_pass = report.activation_bytes_per_example * report.micro_batch
        console.print(f"[bold]{args.config}[/]: valid ({cfg.data.kind} data, {cfg.model.network})", highlight=False)
        rows = [
            ("parameters", f"{report.parameters:,} ({report.parameters / 1e6:.2f}M)"),
            ("data shape", " x ".join(map(str, report.data_shape))),
            ("activations", f"{human_bytes(report.activation_bytes_per_example)} per example (float32), "
                            f"{human_bytes(per_pass)} per forward pass of {report.micro_batch}"),
            ("batch", f"{report.global_batch} global = {report.workers} worker(s) x {report.micro_batch} x "
                      f"{report.accumulation_steps} accumulation step(s)" + (", on GPUs" if report.use_gpu else ", on CPUs")),
        ]
        for d in report.data:
            rows.append((f"data.{d.split}", f"ok, {d.examples:,} examples  {d.url}" if d.ok else f"NOT USABLE: {d.problem}"))
        if args.no_data:
            rows.append(("data", "not checked (--no-data)"))
        for key, value in rows:
            console.print(f"  {key:<12} {value}", highlight=False, soft_wrap=True)
    if not report.data_ok:
        bad = next(d for d in report.data if not d.ok)
        raise BfnError(f"data.{bad.split} is not usable: {bad.problem}")
    return 0
