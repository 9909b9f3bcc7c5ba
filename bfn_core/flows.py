"""Bayesian flows (paper section 3-6): input distribution, sender, Bayesian update, accuracy schedule, p_F.

One class per data family. Input parameters theta are tuples of tensors:
continuous/discretised theta = (mu, rho); discrete theta = (probs,) with probs of shape (..., K).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from bfn_core._checks import (
    check_beta_1,
    check_class_indices,
    check_continuous_data,
    check_n_steps,
    check_num_classes,
    check_sigma_1,
)

Params = tuple[Tensor, ...]


def _expand_t(t: Tensor | float, like: Tensor) -> Tensor:
    """Broadcast a per-example time (B,) against data of shape (B, ...)."""
    t = torch.as_tensor(t, dtype=torch.float32 if not torch.is_floating_point(like) else like.dtype, device=like.device)
    if t.dim() == 0:
        return t
    return t.reshape(t.shape[0], *([1] * (like.dim() - 1)))


def _randn(shape, like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


class BayesianFlow(ABC):
    """A Bayesian flow: everything the sender and receiver share (paper section 3)."""

    @abstractmethod
    def prior(self, data_shape: tuple[int, ...], device=None) -> Params:
        """theta_0, the prior input parameters."""

    @abstractmethod
    def beta(self, t: Tensor) -> Tensor:
        """beta(t), the accuracy accumulated by time t (beta(0) = 0)."""

    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        """alpha(t) = d beta / dt, the continuous-time accuracy rate."""

    @abstractmethod
    def alpha_i(self, i: Tensor, n: int) -> Tensor:
        """alpha_i = beta(t_i) - beta(t_{i-1}), the accuracy of step i of n (eq. 93 / 181)."""

    @abstractmethod
    def sender_sample(self, x: Tensor, alpha: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """y ~ p_S(y | x; alpha)."""

    @abstractmethod
    def update(self, theta: Params, y: Tensor, alpha: Tensor) -> Params:
        """theta' = h(theta, y, alpha), the Bayesian update function."""

    @abstractmethod
    def flow_sample(self, x: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Params:
        """theta ~ p_F(theta | x; t), the Bayesian flow distribution."""

    @abstractmethod
    def check_data(self, x: Tensor) -> None:
        """Raise ValueError when x is outside the data space of this flow."""

    def alpha_at_step(self, t: Tensor, n: int) -> Tensor:
        """alpha_i for the step i = t n + 1 that starts at t = t_{i-1}."""
        n = check_n_steps(n)
        i = torch.round(t * n) + 1
        return self.alpha_i(i, n)


class ContinuousBayesianFlow(BayesianFlow):
    """Gaussian input distribution N(mu, rho^-1) with schedule beta(t) = sigma_1^(-2t) - 1 (section 4)."""

    def __init__(self, sigma_1: float, t_min: float = 1e-6):
        self.sigma_1 = check_sigma_1(sigma_1)
        self.t_min = t_min

    def prior(self, data_shape, device=None) -> Params:
        mu = torch.zeros(data_shape, device=device)
        rho = torch.ones(data_shape[:1] + (1,) * (len(data_shape) - 1), device=device)
        return mu, rho

    def beta(self, t):
        return self.sigma_1 ** (-2.0 * t) - 1.0

    def alpha(self, t):
        return -2.0 * math.log(self.sigma_1) * self.sigma_1 ** (-2.0 * t)

    def alpha_i(self, i, n):
        return self.sigma_1 ** (-2.0 * i / n) * (1.0 - self.sigma_1 ** (2.0 / n))

    def gamma(self, t):
        """gamma(t) = beta / (1 + beta) = 1 - sigma_1^(2t) (eq. 80)."""
        return 1.0 - self.sigma_1 ** (2.0 * t)

    def sender_sample(self, x, alpha, generator=None):
        alpha = _expand_t(alpha, x)
        return x + _randn(x.shape, x, generator) / alpha.sqrt()

    def update(self, theta, y, alpha):
        mu, rho = theta
        alpha = _expand_t(alpha, mu)
        new_rho = rho + alpha
        return (rho * mu + alpha * y) / new_rho, new_rho

    @torch.no_grad()
    def flow_sample(self, x, t, generator=None):
        gamma = self.gamma(_expand_t(t, x))
        mu = gamma * x + (gamma * (1.0 - gamma)).sqrt() * _randn(x.shape, x, generator)
        rho = (1.0 / (1.0 - gamma)).expand(x.shape[:1] + (1,) * (x.dim() - 1))
        return mu, rho

    def params_to_net_inputs(self, theta: Params) -> Tensor:
        """Network input: the mean mu with a trailing channel of size 1 (..., 1)."""
        return theta[0].unsqueeze(-1)

    def check_data(self, x):
        check_continuous_data(x)


class DiscreteBayesianFlow(BayesianFlow):
    """Categorical input distribution with schedule beta(t) = beta_1 t^2 (section 6)."""

    def __init__(self, num_classes: int, beta_1: float, t_max: float = 1.0 - 1e-6):
        self.K = check_num_classes(num_classes, "num_classes")
        self.beta_1 = check_beta_1(beta_1)
        self.t_max = t_max

    def prior(self, data_shape, device=None) -> Params:
        return (torch.full((*data_shape, self.K), 1.0 / self.K, device=device),)

    def beta(self, t):
        return self.beta_1 * t**2

    def alpha(self, t):
        return 2.0 * self.beta_1 * t

    def alpha_i(self, i, n):
        return self.beta_1 * (2.0 * i - 1.0) / n**2

    def _class_offsets(self, x: Tensor, dtype) -> Tensor:
        """K e_x - 1 for class indices x: shape (..., K)."""
        return self.K * torch.nn.functional.one_hot(x, self.K).to(dtype) - 1.0

    def sender_sample(self, x, alpha, generator=None):
        offsets = self._class_offsets(x, torch.float32)
        alpha = _expand_t(alpha, offsets)
        return alpha * offsets + (alpha * self.K).sqrt() * _randn(offsets.shape, offsets, generator)

    def update(self, theta, y, alpha):
        # exp(y) * theta / sum: computed in log space so large accuracies do not overflow.
        (probs,) = theta
        return (torch.softmax(y + probs.clamp_min(1e-38).log(), dim=-1),)

    @torch.no_grad()
    def flow_sample(self, x, t, generator=None):
        offsets = self._class_offsets(x, torch.float32)
        beta = self.beta(_expand_t(t, offsets).clamp(max=self.t_max))
        y = beta * offsets + (beta * self.K).sqrt() * _randn(offsets.shape, offsets, generator)
        probs = torch.softmax(y, dim=-1)
        # Where sqrt(beta) underflows the flow is still the uniform prior.
        probs = torch.where(beta.sqrt() < 1e-10, torch.full_like(probs, 1.0 / self.K), probs)
        return (probs,)

    def params_to_net_inputs(self, theta: Params) -> Tensor:
        """Network input 2 theta - 1; for K = 2 only the probability of class 1 (..., 1)."""
        (probs,) = theta
        if self.K == 2:
            probs = probs[..., 1:]
        return 2.0 * probs - 1.0

    def check_data(self, x):
        check_class_indices(x, self.K)
