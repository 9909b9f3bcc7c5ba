"""BFN losses in nats per example: continuous-time L^inf, discrete-time L^n and reconstruction L^r.

Every method takes the data x, the network output for the input parameters theta at time t, and
returns a tensor of shape (B,): the loss summed over the data dimensions of each example.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from bfn_core._checks import check_n_steps
from bfn_core.discretised_ops import receiver_nll
from bfn_core.distributions import (
    LOG_SQRT_2PI,
    CategoricalFactory,
    DiscretisedNormal,
    DiscretisedNormalFactory,
    DistributionFactory,
    NoisePredictionFactory,

)
from bfn_core.flows import BayesianFlow, ContinuousBayesianFlow, DiscreteBayesianFlow, _expand_t


def per_example(loss: Tensor) -> Tensor:
    """Sum a per-dimension loss over every non-batch dimension."""
    return loss.reshape(loss.shape[0], -1).sum(-1)


class Loss(ABC):
    """The three losses of one data family (paper sections 4-6), over one flow and one p_O factory."""

    flow: BayesianFlow
    factory: DistributionFactory

    @abstractmethod
    def cts_time_loss(self, x: Tensor, net_out: Tensor, theta, t: Tensor) -> Tensor:
        """L^inf(x) for one t per example (the integrand, eq. 41)."""

    @abstractmethod
    def discrete_time_loss(self, x, net_out, theta, t, n_steps: int, n_mc: int = 1, generator=None) -> Tensor:
        """L^n(x) for one step i = t n + 1 per example: n KL(p_S || p_R) (eq. 26)."""

    @abstractmethod
    def reconstruction_loss(self, x: Tensor, net_out: Tensor, theta) -> Tensor:
        """L^r(x) = -ln p_O(x | theta; 1) (eq. 20), for theta drawn from p_F at t = 1."""


class ContinuousLoss(Loss):
    """Continuous data (section 4): x_hat regression weighted by the accuracy rate.

    For L^r, p_O at t = 1 is taken as N(x_hat, sigma_1^2), as in the reference code; with
    `num_bins` set (continuous modelling of quantised data, e.g. 8-bit images) that Gaussian is
    integrated over the data's bins so that the bound is a discrete likelihood comparable with
    the discretised model's.
    """

    def __init__(self, flow: ContinuousBayesianFlow, num_bins: int | None = None):
        self.flow = flow
        self.factory = NoisePredictionFactory(flow.gamma)
        self.num_bins = num_bins

    def _sq_err(self, x, net_out, theta, t):
        return (x - self.factory.get_dist(net_out, theta, t).mean) ** 2

    def cts_time_loss(self, x, net_out, theta, t):
        """-ln(sigma_1) ||x - x_hat||^2 sigma_1^(-2t) (eq. 101)."""
        s1 = self.flow.sigma_1
        weight = -math.log(s1) * s1 ** (-2.0 * _expand_t(t, x))
        return per_example(weight * self._sq_err(x, net_out, theta, t))

    def discrete_time_loss(self, x, net_out, theta, t, n_steps, n_mc=1, generator=None):
        """(n/2) alpha_i ||x - x_hat||^2, closed form (eq. 96): no Monte Carlo over y needed."""
        alpha = _expand_t(self.flow.alpha_at_step(t, n_steps), x)
        return per_example(0.5 * n_steps * alpha * self._sq_err(x, net_out, theta, t))

    def reconstruction_loss(self, x, net_out, theta):
        t = torch.ones(x.shape[0], device=x.device)
        x_hat = self.factory.get_dist(net_out, theta, t).mean
        sigma = torch.full_like(x_hat, self.flow.sigma_1)
        if self.num_bins is None:
            return per_example(0.5 * ((x - x_hat) / sigma) ** 2 + sigma.log() + LOG_SQRT_2PI)
        return per_example(-DiscretisedNormal(x_hat, sigma, self.num_bins).log_prob(x))


class DiscretisedLoss(Loss):
    """Discretised data over K bins (section 5)."""

    def __init__(self, flow: ContinuousBayesianFlow, num_bins: int):
        self.flow = flow
        self.factory = DiscretisedNormalFactory(flow.gamma, num_bins)
        self.K = self.factory.K

    def cts_time_loss(self, x, net_out, theta, t):
        """-ln(sigma_1) ||x - k_hat||^2 sigma_1^(-2t), k_hat the bin-weighted mean (eq. 119)."""
        s1 = self.flow.sigma_1
        k_hat = self.factory.get_dist(net_out, theta, t).mean
        weight = -math.log(s1) * s1 ** (-2.0 * _expand_t(t, x))
        return per_example(weight * (x - k_hat) ** 2)

    def discrete_time_loss(self, x, net_out, theta, t, n_steps, n_mc=1, generator=None):
        """n E_y[ln N(y | x, 1/alpha) - ln sum_k p_O(k) N(y | k_c, 1/alpha)] (eq. 117), n_mc draws of y."""
        n_steps, n_mc = check_n_steps(n_steps), check_n_steps(n_mc, "n_mc")
        dist = self.factory.get_dist(net_out, theta, t)
        alpha_b = self.flow.alpha_at_step(t, n_steps)
        ys = torch.stack([self.flow.sender_sample(x, alpha_b, generator) for _ in range(n_mc)])
        alpha = _expand_t(alpha_b, x).expand_as(x)
        return per_example(n_steps * receiver_nll(dist.mu_x, dist.sigma_x, x, ys, alpha, self.K))

    def reconstruction_loss(self, x, net_out, theta):
        t = torch.ones(x.shape[0], device=x.device)
        return per_example(-self.factory.get_dist(net_out, theta, t).log_prob(x))


class DiscreteLoss(Loss):
    """Discrete data over K classes (section 6), with the paper's K-dimensional receiver mixture."""

    def __init__(self, flow: DiscreteBayesianFlow):
        self.flow = flow
        self.factory = CategoricalFactory(flow.K)
        self.K = flow.K

    def cts_time_loss(self, x, net_out, theta, t):
        """K beta_1 t ||e_x - e_hat||^2 (eq. 205)."""
        e_hat = self.factory.get_dist(net_out, theta, t).mean
        e_x = torch.nn.functional.one_hot(x, self.K).to(e_hat.dtype)
        weight = self.K * self.flow.beta_1 * _expand_t(t, x)
        return per_example(weight * ((e_x - e_hat) ** 2).sum(-1))

    def discrete_time_loss(self, x, net_out, theta, t, n_steps, n_mc=1, generator=None):
        """n E_y[ln p_S(y | x) - ln sum_k p_O(k) N(y | alpha(K e_k - 1), alpha K I)] (eq. 192).

        The mixture's components differ only in their means, so every Gaussian normaliser and
        the quadratic in y cancel: per dimension the KL sample is -logsumexp_k(ln p_k + y_k - y_x).
        """
        n_steps, n_mc = check_n_steps(n_steps), check_n_steps(n_mc, "n_mc")
        log_p = self.factory.get_dist(net_out, theta, t).log_probs()
        alpha = self.flow.alpha_at_step(t, n_steps)
        total = 0.0
        for _ in range(n_mc):
            y = self.flow.sender_sample(x, alpha, generator)
            y_x = y.gather(-1, x.unsqueeze(-1))
            total = total - torch.logsumexp(log_p + y - y_x, -1)
        return per_example(n_steps * total / n_mc)

    def reconstruction_loss(self, x, net_out, theta):
        t = torch.ones(x.shape[0], device=x.device)
        return per_example(-self.factory.get_dist(net_out, theta, t).log_prob(x))
