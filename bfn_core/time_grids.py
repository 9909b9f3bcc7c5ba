"""Time grids for the samplers: functions (nfe, flow, device) -> times, a 1-D float64 tensor t_0 < ... < t_n = 1.

A sampler takes len(times) - 1 steps, one network evaluation each, plus one at t_n for the final draw.
Add a grid by writing a function with this signature and one line in TIME_GRIDS.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from bfn_core._checks import check_n_steps, registered
from bfn_core.errors import BfnError
from bfn_core.flows import BayesianFlow, DiscreteBayesianFlow

TimeGrid = Callable[[int, BayesianFlow, "torch.device | str | None"], torch.Tensor]

# The start offsets of the BFN-Solver code's configs (ML-GSAI/BFN-Solver, `sampling.eta`, which overrides the
# solver classes' default 1e-5): 0.01 for CIFAR-10 (continuous data) and 0.001 for text8 (discrete). Their ODEs
# are singular at t = 0 and they start from the zero-mean p_F (`initial_dist: zero_mean_and_std`).
SOLVER_ETA_CONTINUOUS = 1e-2
SOLVER_ETA_DISCRETE = 1e-3
# The log-SNR grid starts where the solver code does. An earlier start (1e-4) removes the zero-mean start's bias
# under a Bayes-optimal network (two points -0.5 / 0.5 weighted 0.7 / 0.3, sigma_1 = 0.01: 0.316 instead of
# 0.3 on the right from 0.01), but trained networks are unreliable there: the loss weights t by sigma_1^(-2t),
# sigma_1^2 (1e-4) of its weight at t = 1, and x_hat = mu / gamma - sqrt((1 - gamma) / gamma) eps_hat multiplies the noise
# error by ~30 at t = 1e-4. A trained 2-D mixture MLP gave x_hat at the clip corners (|x_hat| 1.4, the data 0.6)
# for t <= 3e-3, and ode2 from 1e-4 a sample NLL of 6.8 nats against 3.9 from 0.01 (the paper's sampler: 2.6).
LOGSNR_ETA_CONTINUOUS = SOLVER_ETA_CONTINUOUS


def uniform(nfe: int, flow: BayesianFlow, device=None) -> torch.Tensor:
    """t_i = i / n, the paper's discrete-time grid (sec. 3.6 / alg. 3, 6, 9)."""
    n = check_n_steps(nfe, "nfe")
    return torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64, device=device)


def solver_offset(nfe: int, flow: BayesianFlow, device=None) -> torch.Tensor:
    """t_i = eta + (1 - eta) i / n: the BFN-Solver code's grid (`self.times`, uniform in t from eta, config values)."""
    n = check_n_steps(nfe, "nfe")
    eta = SOLVER_ETA_DISCRETE if isinstance(flow, DiscreteBayesianFlow) else SOLVER_ETA_CONTINUOUS
    return eta + (1.0 - eta) * torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64, device=device)


def log_snr(nfe: int, flow: BayesianFlow, device=None) -> torch.Tensor:
    """Uniform in the log-SNR lambda from the solver code's t_0 = eta to 1 (DPM-Solver's grid; solvers.py's lambda).

    Continuous flows: lambda = ln(gamma / sqrt(gamma (1 - gamma))), inverted through 1 - gamma = sigma_1^(2t).
    Discrete flows: the logits' SNR is sqrt(beta_1) t, so lambda = ln t + const and the grid is geometric; it
    spends half its steps below t = 0.03 where beta(t) is ~1e-3 beta_1, so the solvers default to 'solver' there.
    """
    n = check_n_steps(nfe, "nfe")
    u = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)
    if isinstance(flow, DiscreteBayesianFlow):
        t = SOLVER_ETA_DISCRETE ** (1.0 - u)
    else:
        log_s2 = 2.0 * math.log(flow.sigma_1)  # ln sigma_1^2
        lam = lambda t: 0.5 * (math.log(-math.expm1(log_s2 * t)) - log_s2 * t)  # noqa: E731
        lams = lam(LOGSNR_ETA_CONTINUOUS) + (lam(1.0) - lam(LOGSNR_ETA_CONTINUOUS)) * u
        t = torch.nn.functional.logsigmoid(-2.0 * lams) / log_s2  # 1 - gamma = sigmoid(-2 lambda) = sigma_1^(2t)
    t[-1] = 1.0
    return t.to(device)


TIME_GRIDS: dict[str, TimeGrid] = {
    "uniform": uniform,
    "solver": solver_offset,
    "logsnr": log_snr,
}


def get_time_grid(name: str) -> TimeGrid:
    """The grid function registered under name."""
    return registered(TIME_GRIDS, name, "time grid")


def check_times(times, *, start_above_zero: bool = False, who: str = "sampler") -> list[float]:
    """The grid as Python floats after checking it is 1-D, strictly increasing, in [0, 1] and ends at 1."""
    t = torch.as_tensor(times, dtype=torch.float64).detach().cpu()
    if t.dim() != 1 or t.numel() < 2:
        raise BfnError(f"times must be a 1-D grid of at least 2 points (t_0 .. t_n = 1), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all() or not (t[1:] > t[:-1]).all():
        raise BfnError("times must be finite and strictly increasing; build it with a TIME_GRIDS function")
    if t[0] < 0.0 or abs(float(t[-1]) - 1.0) > 1e-9:
        raise BfnError(f"times must start at >= 0 and end at 1, got [{float(t[0]):.6g}, ..., {float(t[-1]):.6g}]")
    if start_above_zero and t[0] <= 0.0:
        raise BfnError(f"{who} is singular at t = 0: start times above 0 (e.g. the 'solver' grid starts at eta)")
    out = t.tolist()
    out[-1] = 1.0
    return out
