"""Benchmark of the output distributions' draws (not a test): O(D) against the K-wide multinomial they replace.

Prints median times over repeats and the ratio, all measured in this one run, for the discretised draw on
4 x 32 x 32 x 3 at 256 bins (quantised Gaussian vs multinomial over the K bin probabilities), the binary draw
on 32 x 28 x 28 (Bernoulli vs multinomial over 2 classes), and the K = 27 draw on 16 x 256 (Gumbel-max vs
multinomial), plus a 10-NFE sampler run per registry entry on a toy oracle.  Run: `python bench/sampler_math.py`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from core import median_time  # noqa: E402  (bench/core.py)
from bfn_core import SAMPLERS, TIME_GRIDS, ContinuousBayesianFlow, bin_centres  # noqa: E402
from bfn_core.distributions import CategoricalOutput, DeltaDistribution, DiscretisedNormal  # noqa: E402


def multinomial_discretised(dist: DiscretisedNormal, generator=None) -> torch.Tensor:
    """The previous DiscretisedNormal.sample: a multinomial over the K bin probabilities (O(D K))."""
    probs = dist.probs.clamp_min(0.0)
    k = torch.multinomial(probs.reshape(-1, dist.K), 1, generator=generator).reshape(probs.shape[:-1])
    return bin_centres(dist.K, dist.mu_x.device, dist.mu_x.dtype)[k]


def multinomial_categorical(dist: CategoricalOutput, generator=None) -> torch.Tensor:
    """The previous CategoricalOutput.sample: a multinomial over softmax(logits) for every K."""
    probs = dist.probs
    return torch.multinomial(probs.reshape(-1, dist.K), 1, generator=generator).reshape(probs.shape[:-1])


def _pair(label: str, old, new, repeats: int) -> None:
    t_old, t_new = median_time(old, repeats), median_time(new, repeats)
    print(f"   {label:<44}: before {t_old * 1e3:8.2f} ms   after {t_new * 1e3:8.2f} ms   speed-up {t_old / t_new:7.1f}x")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU\n== draws from p_O")
    shape = (4, 32, 32, 3)
    disc = DiscretisedNormal(torch.rand(shape, generator=g) * 2 - 1, torch.rand(shape, generator=g) * 0.1 + 1e-3, 256)
    _pair("discretised 4x32x32x3, K=256 (multinomial -> O(D))", lambda: multinomial_discretised(disc, g), lambda: disc.sample(g), args.repeats)
    binary = CategoricalOutput(torch.cat([torch.zeros(32, 28, 28, 1), torch.randn(32, 28, 28, 1, generator=g)], -1))
    _pair("binary 32x28x28 (multinomial -> Bernoulli)", lambda: multinomial_categorical(binary, g), lambda: binary.sample(g), args.repeats)
    text = CategoricalOutput(torch.randn(16, 256, 27, generator=g))
    _pair("text 16x256, K=27 (multinomial -> Gumbel-max)", lambda: multinomial_categorical(text, g), lambda: text.sample(g), args.repeats)

    print("== 10-NFE runs of each sampler on a two-point oracle (sigma_1 = 0.01, 20000 x 1), share on the right (data: 0.300)")
    flow = ContinuousBayesianFlow(0.01)
    pts, log_w = torch.tensor([-0.5, 0.5]), torch.tensor([0.7, 0.3]).log()

    def oracle(theta, t):
        mu, tt = theta[0], t.clamp_min(1e-6)[:, None, None]
        gam, rest = flow.gamma(tt), flow.one_minus_gamma(tt)
        logits = log_w - (mu[..., None] - gam * pts) ** 2 / (2 * gam * rest)
        return DeltaDistribution((torch.softmax(logits, -1) * pts).sum(-1))

    for name, fn in SAMPLERS.items():
        grid = getattr(fn, "time_grid", "uniform")
        t0 = time.perf_counter()
        x = fn(oracle, flow, (20000, 1), TIME_GRIDS[grid](10, flow), generator=torch.Generator().manual_seed(0))
        print(f"   {name:<5} ({grid:<7} grid): {float((x > 0).float().mean()):.3f}   {time.perf_counter() - t0:6.3f} s")


if __name__ == "__main__":
    main()
