"""Bayes-optimal 'networks' for data sets whose posterior over x given theta is known in closed form."""
from __future__ import annotations

import math

import torch
from torch import nn


class CategoricalOracle(nn.Module):
    """i.i.d. dimensions with class probabilities pi: p(x = k | theta) is proportional to pi_k theta_k.

    (With theta = softmax(y), y ~ N(beta (K e_x - 1), beta K I), the likelihood of class k is
    proportional to exp(y_k), i.e. to theta_k.) Outputs logits in the network's format.
    """

    def __init__(self, pi: torch.Tensor):
        super().__init__()
        self.register_buffer("log_pi", pi.log())
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, net_in, t):
        k = self.log_pi.numel()
        if k == 2:
            p1 = ((net_in.double() + 1) / 2).clamp(1e-7, 1 - 1e-7)
            return (self.log_pi[1] - self.log_pi[0] + p1.log() - (1 - p1).log()).float()
        theta = ((net_in + 1) / 2).clamp_min(1e-30)
        return self.log_pi + theta.log()


class PointsOracle(nn.Module):
    """Continuous data drawn from a few points c_j with weights w_j: outputs the noise that makes
    x_hat the posterior mean E[x | mu, t], with mu ~ N(gamma c, gamma (1 - gamma))."""

    def __init__(self, points: torch.Tensor, weights: torch.Tensor, flow):
        """flow: a ContinuousBayesianFlow (or, less precisely near t = 1 in float32, a gamma function)."""
        super().__init__()
        self.register_buffer("points", points)
        self.register_buffer("log_w", weights.log())
        self.flow = flow
        self.dummy = nn.Parameter(torch.zeros(()))

    def _gammas(self, t):
        """gamma and 1 - gamma; the latter from sigma_1^(2t) where the flow offers it (no float32 cancellation)."""
        if hasattr(self.flow, "one_minus_gamma"):
            return self.flow.gamma(t), self.flow.one_minus_gamma(t)
        g = self.flow(t)
        return g, 1 - g

    def forward(self, net_in, t):
        mu = net_in[..., 0]  # (B, D)
        g, s = (v.reshape(-1, *([1] * (mu.dim() - 1))) for v in self._gammas(t.clamp_min(1e-6)))
        var = g * s
        logits = self.log_w - (mu.unsqueeze(-1) - g.unsqueeze(-1) * self.points) ** 2 / (2 * var.unsqueeze(-1))
        x_hat = (torch.softmax(logits, -1) * self.points).sum(-1)
        eps = (mu / g - x_hat) / (s / g).sqrt()
        return eps.unsqueeze(-1)


def entropy(p: torch.Tensor) -> float:
    p = p.double()
    return float(-(p * p.log()).sum())


def mc_mean_se(values: torch.Tensor) -> tuple[float, float]:
    v = values.double()
    return float(v.mean()), float(v.std() / math.sqrt(v.numel()))
