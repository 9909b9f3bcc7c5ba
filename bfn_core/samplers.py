"""Samplers in the style of k-diffusion: plain functions with one signature over an explicit time grid.

    sampler(output_fn, flow, shape, times, *, generator=None, callback=None, final="sample",
            drop_last=False, return_trajectory=False, device=None, observed=None, mask=None)

- output_fn(theta, t) returns p_O(. | theta; t) (BFN.output_distribution); t is (B,).
- times: a 1-D grid t_0 < ... < t_n = 1 (a TIME_GRIDS function builds one): n steps, n + 1 calls of output_fn.
- callback(state) after each of the n network calls that drive a step, state = {"step" (1..n), "n_steps",
  "t" (where p_O was evaluated), "theta", "output" (the OutputDistribution)}.
- final: "sample" draws from p_O(. | theta; t_n) (the paper's algorithms 3, 6, 9), "mode" takes its mode
  (the reference code); drop_last takes it from t_{n-1} instead (the BFN-Solver code's `last_drop`).
- observed, mask: inpainting (inpainting.py): mask (bool, the data's shape) marks the known coordinates,
  whose state follows p_F(theta | observed; t) at every step; the samples equal observed on the mask.
- Guidance: pass a guided output_fn (guidance.guided_output_fn, or BFN.sample's y / guidance).
- Returns samples of shape `shape` (class indices for discrete data); with return_trajectory also
  [theta_0, ..., theta_n].

Add a sampler: write one function with this signature (solvers.integrate does the stepping given a step
rule) and add one line to SAMPLERS.
"""
from __future__ import annotations

from typing import Callable

import torch

from bfn_core._checks import check_n_steps, registered
from bfn_core.errors import BfnError
from bfn_core.flows import BayesianFlow, DiscreteBayesianFlow
from bfn_core.solvers import OutputFn, integrate, ode1, ode2, sde1, sde2
from bfn_core.time_grids import TIME_GRIDS, get_time_grid

Sampler = Callable[..., torch.Tensor]


def _paper_rule(path, state, out, i, ts, memory, generator):
    return path.paper_step(state, out, ts[i], ts[i + 1], generator)


def bfn_sampler(output_fn: OutputFn, flow: BayesianFlow, shape, times, **options):
    """The paper's sampler (Graves et al. alg. 3, 6, 9): draw from p_O(. | theta; t_{i-1}), send it with accuracy beta(t_i) - beta(t_{i-1}), update theta."""
    return integrate(_paper_rule, output_fn, flow, shape, times, who="bfn", **options)


SAMPLERS: dict[str, Sampler] = {
    "bfn": bfn_sampler,
    "ode1": ode1,
    "ode2": ode2,
    "sde1": sde1,
    "sde2": sde2,
}


def get_sampler(name: str) -> Sampler:
    """The sampler registered under name."""
    return registered(SAMPLERS, name, "sampler")


def preferred_grid(name: str, flow: BayesianFlow | None = None) -> str:
    """The TIME_GRIDS name a sampler uses when none is given (for `flow`'s data family; None: continuous)."""
    fn = get_sampler(name)
    if isinstance(flow, DiscreteBayesianFlow):
        return getattr(fn, "time_grid_discrete", getattr(fn, "time_grid", "uniform"))
    return getattr(fn, "time_grid", "uniform")


def sampler_times(sampler: str, n_steps: int, flow: BayesianFlow, grid=None, device=None) -> torch.Tensor:
    """The time grid for n_steps steps: grid is a TIME_GRIDS name, explicit times (n_steps + 1 of them), or None (the sampler's own)."""
    n_steps = check_n_steps(n_steps)
    if grid is None or isinstance(grid, str):
        return get_time_grid(grid or preferred_grid(sampler, flow))(n_steps, flow, device)
    times = torch.as_tensor(grid, dtype=torch.float64)
    if times.dim() != 1 or times.numel() != n_steps + 1:
        raise BfnError(f"grid must hold n_steps + 1 = {n_steps + 1} times, got shape {tuple(times.shape)}; pass n_steps = len(grid) - 1")
    return times


def run_sampler(output_fn: OutputFn, flow: BayesianFlow, shape, n_steps: int, *, sampler: str = "bfn", grid=None,
                device=None, **options):
    """Samples from the named sampler over n_steps steps of `grid` (see sampler_times); options as in the module docstring."""
    fn = get_sampler(sampler)
    times = sampler_times(sampler, n_steps, flow, grid)
    return fn(output_fn, flow, tuple(shape), times, device=device, **options)


__all__ = ["SAMPLERS", "TIME_GRIDS", "Sampler", "bfn_sampler", "get_sampler", "preferred_grid", "run_sampler",
           "sampler_times"]
