"""Samplers: plain functions over an output-distribution function p_O(theta, t) and a Bayesian flow.

Add a sampler by writing another function with the same signature.
"""
from __future__ import annotations

from typing import Callable

import torch

from bfn_core._checks import check_n_steps
from bfn_core.distributions import OutputDistribution
from bfn_core.flows import BayesianFlow, Params

OutputFn = Callable[[Params, torch.Tensor], OutputDistribution]


@torch.no_grad()
def bfn_sampler(
    output_distribution: OutputFn,
    flow: BayesianFlow,
    shape: tuple[int, ...],
    n_steps: int,
    generator: torch.Generator | None = None,
    device=None,
    return_trajectory: bool = False,
    callback: Callable[[int, int], None] | None = None,
):
    """The paper's n-step sampler (algorithms 3, 6, 9): draw from p_O, send it, update theta.

    Returns the mode of p_O(. | theta; 1) with shape `shape` (class indices for discrete data),
    and with `return_trajectory` also the list of input parameters theta_0 .. theta_n.
    """
    n_steps = check_n_steps(n_steps)
    batch = shape[0]
    theta = flow.prior(tuple(shape), device=device)
    trajectory = [theta]
    for i in range(1, n_steps + 1):
        t = torch.full((batch,), (i - 1) / n_steps, device=device)
        x_draw = output_distribution(theta, t).sample(generator)
        alpha = flow.alpha_i(torch.tensor(float(i)), n_steps).to(t.device)
        y = flow.sender_sample(x_draw, alpha, generator)
        theta = flow.update(theta, y, alpha)
        if return_trajectory:
            trajectory.append(theta)
        if callback is not None:
            callback(i, n_steps)
    sample = output_distribution(theta, torch.ones(batch, device=device)).mode
    return (sample, trajectory) if return_trajectory else sample
