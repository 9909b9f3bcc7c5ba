"""BFN losses in nats per example: continuous-time L^inf, discrete-time L^n and reconstruction L^r.

Every method takes the data x, the network output for the input parameters theta at time t, and
returns a tensor of shape (B,): the loss summed over the data dimensions of each example.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Literal

import torch
from torch import Tensor

from bfn_core._checks import check_choice, check_n_steps, check_positive
from bfn_core.discretised_ops import receiver_nll
from bfn_core.distributions import (
    LOG_SQRT_2PI,
    CategoricalFactory,
    DiscretisedNormal,
    DiscretisedNormalFactory,
    DistributionFactory,
    NoisePredictionFactory,
)
from bfn_core.flows import BayesianFlow, ContinuousBayesianFlow, DiscreteBayesianFlow, expand_t


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

    For L^r, p_O at t = 1 is N(x_hat, (s sigma_1)^2) with s = `reconstruction_std_scale`; with
    `num_bins` set (continuous modelling of quantised data, e.g. 8-bit images) that Gaussian is
    integrated over the data's bins so that the bound is a discrete likelihood comparable with
    the discretised model's. The paper's text uses s = 1 (the default); the reference code uses
    s = 0.7 for its 16-bin CIFAR-10 runs (sigma_1^2 = 1e-3), so paper configs that reproduce those
    numbers set 0.7.
    """

    def __init__(self, flow: ContinuousBayesianFlow, num_bins: int | None = None, reconstruction_std_scale: float = 1.0):
        self.flow = flow
        self.factory = NoisePredictionFactory(flow)
        self.num_bins = num_bins
        self.reconstruction_std_scale = check_positive(reconstruction_std_scale, "reconstruction_std_scale")

    def _sq_err(self, x, net_out, theta, t):
        return (x - self.factory.get_dist(net_out, theta, t).mean) ** 2

    def cts_time_loss(self, x, net_out, theta, t):
        """-ln(sigma_1) ||x - x_hat||^2 sigma_1^(-2t) (eq. 101): alpha(t) / 2 times the squared error."""
        weight = 0.5 * self.flow.alpha(expand_t(t, x))
        return per_example(weight * self._sq_err(x, net_out, theta, t))

    def discrete_time_loss(self, x, net_out, theta, t, n_steps, n_mc=1, generator=None):
        """(n/2) alpha_i ||x - x_hat||^2, closed form (eq. 96): no Monte Carlo over y needed."""
        alpha = expand_t(self.flow.alpha_at_step(t, n_steps), x)
        return per_example(0.5 * n_steps * alpha * self._sq_err(x, net_out, theta, t))

    def reconstruction_loss(self, x, net_out, theta):
        t = _ones_t(x)
        x_hat = self.factory.get_dist(net_out, theta, t).mean
        sigma = torch.full_like(x_hat, self.reconstruction_std_scale * self.flow.sigma_1)
        if self.num_bins is None:
            return per_example(0.5 * ((x - x_hat) / sigma) ** 2 + sigma.log() + LOG_SQRT_2PI)
        return per_example(-DiscretisedNormal(x_hat, sigma, self.num_bins).log_prob(x))


class DiscretisedLoss(Loss):
    """Discretised data over K bins (section 5)."""

    def __init__(self, flow: ContinuousBayesianFlow, num_bins: int):
        self.flow = flow
        self.factory = DiscretisedNormalFactory(flow, num_bins)
        self.K = self.factory.K

    def cts_time_loss(self, x, net_out, theta, t):
        """-ln(sigma_1) ||x - k_hat||^2 sigma_1^(-2t), k_hat the bin-weighted mean (eq. 119)."""
        k_hat = self.factory.get_dist(net_out, theta, t).mean
        weight = 0.5 * self.flow.alpha(expand_t(t, x))
        return per_example(weight * (x - k_hat) ** 2)

    def discrete_time_loss(self, x, net_out, theta, t, n_steps, n_mc=1, generator=None):
        """n E_y[ln N(y | x, 1/alpha) - ln sum_k p_O(k) N(y | k_c, 1/alpha)] (eq. 117), n_mc draws of y."""
        n_steps, n_mc = check_n_steps(n_steps), check_n_steps(n_mc, "n_mc")
        dist = self.factory.get_dist(net_out, theta, t)
        alpha_b = self.flow.alpha_at_step(t, n_steps)
        ys = torch.stack([self.flow.sender_sample(x, alpha_b, generator) for _ in range(n_mc)])
        alpha = expand_t(alpha_b, x).expand_as(x)
        return per_example(n_steps * receiver_nll(dist.mu_x, dist.sigma_x, x, ys, alpha, self.K))

    def reconstruction_loss(self, x, net_out, theta):
        return per_example(-self.factory.get_dist(net_out, theta, _ones_t(x)).log_prob(x))


Receiver = Literal["mixture", "factorised"]
RECEIVERS = ("mixture", "factorised")


class DiscreteLoss(Loss):
    """Discrete data over K classes (section 6).

    `receiver` picks p_R for L^n: "mixture" is the paper's K-dimensional mixture
    sum_k p_O(k) N(y | alpha (K e_k - 1), alpha K I) (eq. 192, the default); "factorised" is the
    reference code's receiver, a separate two-component mixture per class coordinate c,
    p_c N(y_c | alpha (K - 1), alpha K) + (1 - p_c) N(y_c | -alpha, alpha K), a looser bound kept
    only to reproduce the reference's numbers.
    """

    def __init__(self, flow: DiscreteBayesianFlow, receiver: Receiver = "mixture"):
        self.flow = flow
        self.factory = CategoricalFactory(flow.K)
        self.K = flow.K
        self.receiver = check_choice(receiver, RECEIVERS, "receiver")

    def cts_time_loss(self, x, net_out, theta, t):
        """K beta_1 t ||e_x - e_hat||^2 (eq. 205)."""
        e_hat = self.factory.get_dist(net_out, theta, t).mean
        e_x = torch.nn.functional.one_hot(x.long(), self.K).to(e_hat.dtype)
        weight = self.K * self.flow.beta_1 * expand_t(t, e_hat)[..., 0]
        return per_example(weight * ((e_x - e_hat) ** 2).sum(-1))

    def discrete_time_loss(self, x, net_out, theta, t, n_steps, n_mc=1, generator=None):
        """n E_y[ln p_S(y | x; alpha_i) - ln p_R(y | theta; alpha_i)] (eq. 192), n_mc draws of y."""
        n_steps, n_mc = check_n_steps(n_steps), check_n_steps(n_mc, "n_mc")
        log_p = self.factory.get_dist(net_out, theta, t).log_probs()
        alpha = self.flow.alpha_at_step(t, n_steps)
        total = 0.0
        for _ in range(n_mc):
            total = total + self.log_ratio(x, log_p, self.flow.sender_sample(x, alpha, generator), alpha)
        return per_example(n_steps * total / n_mc)

    def log_ratio(self, x: Tensor, log_p: Tensor, y: Tensor, alpha: Tensor) -> Tensor:
        """ln p_S(y | x; alpha) - ln p_R(y | theta; alpha) per data dimension, for the chosen receiver (eq. 192)."""
        if self.receiver == "mixture":
            return self._mixture_log_ratio(x, log_p, y)
        return self._factorised_log_ratio(x, log_p, y, expand_t(alpha, y))

    @staticmethod
    def _mixture_log_ratio(x, log_p, y):
        """-logsumexp_k(ln p_k + y_k - y_x): the K components differ only in their means, so every
        Gaussian normaliser and the quadratic in y cancel."""
        y_x = y.gather(-1, x.long().unsqueeze(-1))
        return -torch.logsumexp(log_p + y - y_x, -1)

    def _factorised_log_ratio(self, x, log_p, y, alpha):
        """sum_c [c = x] d_c - ln(p_c e^(d_c) + 1 - p_c), d_c = y_c - alpha (K - 2)/2.

        d_c = ln N(y_c | alpha (K - 1), alpha K) - ln N(y_c | -alpha, alpha K): the two components share
        their variance, so the log-ratio is linear in y_c and the second component's density cancels.
        """
        d = y - 0.5 * (self.K - 2) * alpha
        e_x = torch.nn.functional.one_hot(x.long(), self.K).to(d.dtype)
        return ((e_x * d) - torch.logaddexp(log_p + d, _log1m_probs(log_p))).sum(-1)

    def reconstruction_loss(self, x, net_out, theta):
        return per_example(-self.factory.get_dist(net_out, theta, _ones_t(x)).log_prob(x))


def _ones_t(x: Tensor) -> Tensor:
    """t = 1 per example, in x's float dtype (float32 for class indices)."""
    dtype = x.dtype if torch.is_floating_point(x) else torch.float32
    return torch.ones(x.shape[0], device=x.device, dtype=dtype)


def _log1m_probs(log_p: Tensor) -> Tensor:
    """ln(1 - p_k) from ln p_k without cancellation.

    Only the most probable class can have p > 1/2; for it, ln(1 - p) is the logsumexp of the other
    classes' log-probabilities (exact even when p rounds to 1). Elsewhere log1p(-p) is exact.
    Each branch masks the other's entries so that no infinite gradient meets a zero weight.
    """
    is_top = torch.zeros_like(log_p, dtype=torch.bool).scatter_(-1, log_p.argmax(-1, keepdim=True), True)
    others = torch.logsumexp(log_p.masked_fill(is_top, -math.inf), -1, keepdim=True)
    return torch.where(is_top, others, torch.log1p(-log_p.masked_fill(is_top, -math.inf).exp()))
