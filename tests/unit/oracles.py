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

    def __init__(self, points: torch.Tensor, weights: torch.Tensor, gamma_fn):
        super().__init__()
        self.register_buffer("points", points)
        self.register_buffer("log_w", weights.log())
        self.gamma_fn = gamma_fn
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, net_in, t):
        mu = net_in[..., 0]  # (B, D)
        g = self.gamma_fn(t.clamp_min(1e-6)).reshape(-1, *([1] * (mu.dim() - 1)))
        var = g * (1 - g)
        logits = self.log_w - (mu.unsqueeze(-1) - g.unsqueeze(-1) * self.points) ** 2 / (2 * var.unsqueeze(-1))
        x_hat = (torch.softmax(logits, -1) * self.points).sum(-1)
        eps = (mu / g - x_hat) / ((1 - g) / g).sqrt()
        return eps.unsqueeze(-1)


def entropy(p: torch.Tensor) -> float:
    p = p.double()
    return float(-(p * p.log()).sum())


def mc_mean_se(values: torch.Tensor) -> tuple[float, float]:
    v = values.double()
    return float(v.mean()), float(v.std() / math.sqrt(v.numel()))
