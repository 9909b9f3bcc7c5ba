"""`bfn quickstart`: train, evaluate and sample a small discretised BFN on the shipped digits set."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bfn_platform.console import console, progress_bar

EPILOG = """examples:
  bfn quickstart                       # about 3 minutes on 2 CPU cores
  bfn quickstart --steps 300 --out /tmp/qs
"""


def register(sub) -> None:
    p = sub.add_parser("quickstart", help="train, evaluate and sample a small BFN on the digits set",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1000, help="training steps (default 1000)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default=".bfn/quickstart", help="folder for the table and pictures")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    from sklearn.datasets import load_digits

    from bfn_core import bin_centres, evaluate_likelihood, make_bfn
    from pipelines.baselines import independent_pixel_bits_per_dim
    from pipelines.pictures import save_image_grid, save_likelihood_plot

    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    levels = 17
    images = load_digits().images.astype(np.int64)[..., None]  # (N, 8, 8, 1), values 0..16
    order = np.random.default_rng(args.seed).permutation(len(images))
    train_idx, test_idx = order[:1500], order[1500:]
    centres = bin_centres(levels)
    train = centres[torch.from_numpy(images[train_idx])]
    test = centres[torch.from_numpy(images[test_idx])]

    bfn = make_bfn("discretised", (8, 8, 1), network="unet", num_classes=levels, sigma_1=0.01,
                   width=32, channel_mults=(1, 2), attention_resolutions=(4,), fourier_exponents=())
    opt = torch.optim.AdamW(bfn.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    console.print(f"[bold]training[/] a discretised BFN (K={levels}, sigma_1=0.01, "
                  f"{sum(p.numel() for p in bfn.parameters()) / 1e6:.2f}M params) on {len(train)} digits")
    t0 = time.time()
    with progress_bar() as bar:
        task = bar.add_task("train", total=args.steps, info="")
        for step in range(args.steps):
            x = train[torch.randint(0, len(train), (args.batch_size,))]
            loss = bfn.loss(x).mean() / x[0].numel()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(bfn.parameters(), 1.0)
            opt.step()
            sched.step()
            bar.update(task, advance=1, info=f"loss {loss.item():.3f} nats/dim")
    console.print(f"trained in {time.time() - t0:.0f} s")

    with progress_bar() as bar:
        task = bar.add_task("evaluate", total=len(test), info="")
        table = evaluate_likelihood(bfn, test.split(128), n_repeats=2,
                                    generator=torch.Generator().manual_seed(1), progress=lambda n: bar.update(task, advance=n))
    baseline = independent_pixel_bits_per_dim(images[train_idx], images[test_idx], levels)
    console.print(table.format())
    best = min(r.bits_per_dim for r in table.rows)
    console.print(f"test bits/dim: BFN {table.row(None).bits_per_dim:.3f} (continuous time), "
                  f"independent-pixel baseline {baseline:.3f}")
    (out / "likelihood.json").write_text(json.dumps(dict(table.to_dict(), baseline_bits_per_dim=baseline), indent=2))
    save_likelihood_plot(table.to_dict(), out / "likelihood.png", title="digits: bound versus steps")
    samples = bfn.sample((64, 8, 8, 1), 100, generator=torch.Generator().manual_seed(2))
    save_image_grid(samples.numpy(), out / "samples.png", title="BFN samples, 100 steps")
    console.print(f"wrote {out / 'likelihood.json'}, {out / 'likelihood.png'}, {out / 'samples.png'}")
    if best >= baseline:
        console.print("[red]the model did not beat the independent-pixel baseline[/]")
        return 1
    return 0
