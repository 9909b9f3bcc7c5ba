"""Benchmark of bfn_core (not a test): the BFN math alone, full training steps, and sampling.

Prints, for three reference shapes, median times over repeats, peak memory, and the ratio of the
discretised discrete-time loss against a plain torch.distributions.MixtureSameFamily formulation
of the same loss, all measured in this one run.  Run: `make bench` or `python bench/core.py`.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import distributions as D

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bfn_core import BFN, bin_centres, make_bfn, make_loss  # noqa: E402
from bfn_core.losses import per_example  # noqa: E402


@dataclass(frozen=True)
class Shape:
    name: str
    kind: str
    data_shape: tuple
    batch: int
    k: int
    network: str
    net_kwargs: dict
    sigma_1: float | None = None
    beta_1: float | None = None


UNET_1M = dict(width=32, channel_mults=(1, 2, 2), blocks_per_level=1, fourier_exponents=())
SHAPES = [
    Shape("binarised_mnist", "discrete", (28, 28, 1), 32, 2, "unet", dict(UNET_1M, attention_resolutions=(7,)), beta_1=9.0),
    Shape("cifar10_256", "discretised", (32, 32, 3), 16, 256, "unet", dict(UNET_1M, attention_resolutions=(8,), fourier_exponents=(6, 7)), sigma_1=0.001),
    Shape("text8", "discrete", (256,), 16, 27, "transformer", dict(width=128, depth=2, heads=4), beta_1=0.5625),
]


def make_data(s: Shape, g: torch.Generator) -> torch.Tensor:
    shape = (s.batch, *s.data_shape)
    idx = torch.randint(0, s.k, shape, generator=g)
    return bin_centres(s.k)[idx] if s.kind == "discretised" else idx


def linear_bfn(s: Shape) -> BFN:
    """The BFN math with the network replaced by one fixed per-dimension linear layer."""
    loss = make_loss(s.kind, num_classes=s.k, sigma_1=s.sigma_1, beta_1=s.beta_1)
    lin = torch.nn.Linear(loss.flow.net_in_channels, loss.factory.net_out_channels)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x, t):
            return self.lin(x)

    return BFN(Net(), loss)


def reference_bfn(s: Shape) -> BFN:
    return make_bfn(s.kind, s.data_shape, network=s.network, num_classes=s.k, sigma_1=s.sigma_1, beta_1=s.beta_1, **s.net_kwargs)


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def msf_discretised_loss(bfn: BFN, x: torch.Tensor, n_steps: int) -> torch.Tensor:
    """The same discrete-time loss as DiscretisedLoss, written plainly with torch.distributions."""
    u = torch.rand(x.shape[0])
    t = torch.floor(u * n_steps) / n_steps
    theta = bfn.flow.flow_sample(x, t)
    dist = bfn.output_distribution(theta, t)
    alpha = bfn.flow.alpha_at_step(t, n_steps).reshape(-1, *([1] * (x.dim() - 1)))
    std = alpha.rsqrt()
    sender = D.Normal(x, std)
    y = sender.sample()
    receiver = D.MixtureSameFamily(
        D.Categorical(probs=dist.probs.clamp_min(1e-12)),
        D.Normal(bin_centres(dist.K).expand(*x.shape, dist.K), std.unsqueeze(-1).expand(*x.shape, dist.K)),
    )
    return per_example(n_steps * (sender.log_prob(y) - receiver.log_prob(y)))


def _loss_step(bfn, x, which):
    if which == "msf":
        loss = msf_discretised_loss(bfn, x, 100)
    else:
        loss = bfn.loss(x, None if which == "cts" else 100)
    loss.mean().backward()


def _train_step(bfn, opt, x):
    loss = bfn.loss(x).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _peak_rss_worker(task, queue):
    """Runs in a fresh process: peak resident memory of one step above the memory held before it (bytes)."""
    s_name, which = task
    s = next(x for x in SHAPES if x.name == s_name)
    torch.manual_seed(0)
    x = make_data(s, torch.Generator().manual_seed(0))
    if which == "train":
        bfn = reference_bfn(s)
        opt = torch.optim.AdamW(bfn.parameters(), lr=1e-4)
        fn = lambda: _train_step(bfn, opt, x)  # noqa: E731
    else:
        bfn = linear_bfn(s)
        fn = lambda: _loss_step(bfn, x, which)  # noqa: E731
    fn()  # first call allocates lazily created state (optimiser moments, kernels)
    base = _reset_peak_rss()
    fn()
    queue.put(_status_kib("VmHWM") * 1024 - base)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (Linux clear_refs) and return the current RSS in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") * 1024


def peak_memory(s: Shape, which: str) -> float:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_peak_rss_worker, args=((s.name, which), q))
    p.start()
    out = q.get()
    p.join()
    return out


def train_step_samples_per_second(repeats: int = 5) -> dict[str, float]:
    """Samples per second one worker consumes in a full training step of each reference model."""
    rates = {}
    for s in SHAPES:
        torch.manual_seed(0)
        bfn = reference_bfn(s)
        opt = torch.optim.AdamW(bfn.parameters(), lr=1e-4)
        x = make_data(s, torch.Generator().manual_seed(0))
        rates[s.name] = s.batch / median_time(lambda: _train_step(bfn, opt, x), repeats, warmup=1)
    return rates


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU\n")
    for s in SHAPES:
        x = make_data(s, torch.Generator().manual_seed(0))
        lin = linear_bfn(s)
        ref = reference_bfn(s)
        n_params = sum(p.numel() for p in ref.parameters())
        cts = median_time(lambda: _loss_step(lin, x, "cts"), args.repeats)
        disc = median_time(lambda: _loss_step(lin, x, "disc"), args.repeats)
        opt = torch.optim.AdamW(ref.parameters(), lr=1e-4)
        train = median_time(lambda: _train_step(ref, opt, x), max(3, args.repeats // 2), warmup=1)
        train_mem = peak_memory(s, "train")
        ref.eval()
        sample = median_time(lambda: ref.sample((4, *s.data_shape), 100), 1, warmup=0)
        print(f"== {s.name}: data {s.data_shape}, batch {s.batch}, {s.kind} K={s.k}; reference {s.network} {n_params / 1e6:.2f}M params")
        print(f"   BFN math, L^inf, fwd+bwd (linear net) : {cts * 1e3:8.2f} ms")
        print(f"   BFN math, L^100, fwd+bwd (linear net) : {disc * 1e3:8.2f} ms")
        print(f"   full training step (AdamW)           : {train * 1e3:8.2f} ms  ({s.batch / train:7.1f} samples/s), peak memory +{train_mem / 2**20:.0f} MiB")
        print(f"   BFN math / training step              : {cts / train:8.3f} (L^inf)   {disc / train:.3f} (L^100)")
        print(f"   100-step sampling, 4 samples          : {sample:8.2f} s")
        if s.kind == "discretised":
            msf = median_time(lambda: _loss_step(lin, x, "msf"), args.repeats)
            mem_ours, mem_msf = peak_memory(s, "disc"), peak_memory(s, "msf")
            print(f"   MixtureSameFamily L^100, fwd+bwd      : {msf * 1e3:8.2f} ms")
            print(f"   speed-up over MixtureSameFamily       : {msf / disc:8.2f}x   (target >= 2x)")
            mem_ours = max(mem_ours, 0.0)  # below the resolution of RSS: report it as zero
            print(f"   peak memory ours / MixtureSameFamily  : {mem_ours / 2**20:.1f} / {mem_msf / 2**20:.1f} MiB = {mem_ours / mem_msf:.3f}   (target <= 1.10)")
        print()


if __name__ == "__main__":
    main()
