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

# The start offsets of the BFN-Solver code's configs (ML-GSAI/BFN-Solver, `sampling.eta`): 0.01 for
# CIFAR-10 (continuous data) and 0.001 for text8 (discrete). Their ODEs are singular at t = 0.
SOLVER_ETA_CONTINUOUS = 1e-2
SOLVER_ETA_DISCRETE = 1e-3
# The log-SNR grid starts continuous flows earlier: steps in lambda are cheap there, and the zero-mean start
# N(0, gamma (1 - gamma)) ignores the data mean gamma E[x], a bias the ODE solvers carry to the end
# (two points at -0.5 / 0.5 weighted 0.7 / 0.3, sigma_1 = 0.01: 0.316 instead of 0.3 on the right from eta = 0.01).
LOGSNR_ETA_CONTINUOUS = 1e-4


def uniform(nfe: int, flow: BayesianFlow, device=None) -> torch.Tensor:
    """t_i = i / n, the paper's discrete-time grid (sec. 3.6 / alg. 3, 6, 9)."""
    n = check_n_steps(nfe, "nfe")
    return torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64, device=device)


def solver_offset(nfe: int, flow: BayesianFlow, device=None) -> torch.Tensor:
    """t_i = eta + (1 - eta) i / n, the BFN-Solver code's grid (uniform in t, started at eta > 0)."""
    n = check_n_steps(nfe, "nfe")
    eta = SOLVER_ETA_DISCRETE if isinstance(flow, DiscreteBayesianFlow) else SOLVER_ETA_CONTINUOUS
    return eta + (1.0 - eta) * torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64, device=device)


def log_snr(nfe: int, flow: BayesianFlow, device=None) -> torch.Tensor:
    """Uniform in the log-SNR lambda from t_0 = eta to 1 (DPM-Solver's grid; solvers.py's lambda).

    Continuous flows: lambda = ln(gamma / sqrt(gamma (1 - gamma))), inverted through 1 - gamma = sigma_1^(2t).
    Discrete flows: the logits' SNR is sqrt(beta_1) t, so lambda = ln t + const and the grid is geometric.
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
