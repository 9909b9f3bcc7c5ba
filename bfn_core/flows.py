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


def expand_t(t: Tensor | float, like: Tensor) -> Tensor:
    """Broadcast a per-example time (B,) against data of shape (B, ...), in the data's float dtype.

    For class indices (no float dtype of their own) a floating t keeps its dtype, so float64 t
    gives float64 flows; anything else becomes float32.
    """
    if torch.is_floating_point(like):
        dtype = like.dtype
    elif isinstance(t, Tensor) and torch.is_floating_point(t):
        dtype = t.dtype
    else:
        dtype = torch.float32
    t = torch.as_tensor(t, dtype=dtype, device=like.device)
    if t.dim() == 0:
        return t
    return t.reshape(t.shape[0], *([1] * (like.dim() - 1)))


def _randn(shape, like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def _as_float(t) -> Tensor:
    """A time as a float tensor: float tensors keep their dtype (float64 stays float64)."""
    t = torch.as_tensor(t)
    return t if torch.is_floating_point(t) else t.to(torch.get_default_dtype())


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
    def params_to_net_inputs(self, theta: Params) -> Tensor:
        """The network's input for theta, shape (*data_shape, net_in_channels)."""

    @property
    @abstractmethod
    def net_in_channels(self) -> int:
        """How many numbers per data dimension params_to_net_inputs feeds the network."""

    @abstractmethod
    def check_data(self, x: Tensor) -> None:
        """Raise BfnError when x is outside the data space of this flow."""

    def alpha_at_step(self, t: Tensor, n: int) -> Tensor:
        """alpha_i for the step i = t n + 1 that starts at t = t_{i-1}."""
        n = check_n_steps(n)
        i = torch.round(t * n) + 1
        return self.alpha_i(i, n)


class ContinuousBayesianFlow(BayesianFlow):
    """Gaussian input distribution N(mu, rho^-1) with schedule beta(t) = sigma_1^(-2t) - 1 (section 4)."""

    net_in_channels = 1

    def __init__(self, sigma_1: float):
        self.sigma_1 = check_sigma_1(sigma_1)

    def prior(self, data_shape, device=None) -> Params:
        mu = torch.zeros(data_shape, device=device)
        rho = torch.ones(data_shape[:1] + (1,) * (len(data_shape) - 1), device=device)
        return mu, rho

    # expm1 keeps beta(t) and gamma(t) exact for small t, where sigma_1^(+-2t) is close to 1.
    def beta(self, t):
        """beta(t) = sigma_1^(-2t) - 1, the continuous-data accuracy schedule (sec. 4)."""
        return torch.expm1(-2.0 * math.log(self.sigma_1) * _as_float(t))

    def alpha(self, t):
        """alpha(t) = d beta / dt = -2 ln(sigma_1) sigma_1^(-2t) (sec. 4)."""
        return -2.0 * math.log(self.sigma_1) * self.sigma_1 ** (-2.0 * t)

    def alpha_i(self, i, n):
        """alpha_i = sigma_1^(-2i/n) (1 - sigma_1^(2/n)) (eq. 93)."""
        return self.sigma_1 ** (-2.0 * i / n) * -math.expm1(2.0 * math.log(self.sigma_1) / n)

    def gamma(self, t):
        """gamma(t) = beta / (1 + beta) = 1 - sigma_1^(2t) (eq. 80)."""
        return -torch.expm1(2.0 * math.log(self.sigma_1) * _as_float(t))

    def one_minus_gamma(self, t):
        """1 - gamma(t) = sigma_1^(2t) (eq. 80), never formed as 1 - gamma: that loses ~1% in float32 near t = 1."""
        return self.sigma_1 ** (2.0 * _as_float(t))

    def flow_mean_std(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean gamma x and std sqrt(gamma (1 - gamma)) of mu under p_F(theta | x; t) (sec. 4, gamma from eq. 80)."""
        t = expand_t(t, x)
        gamma = self.gamma(t)
        return gamma * x, (gamma * self.one_minus_gamma(t)).sqrt().expand_as(x)

    def flow_precision(self, x: Tensor, t: Tensor) -> Tensor:
        """rho(t) = 1 / (1 - gamma(t)) = sigma_1^(-2t), the input precision under p_F (sec. 4, eq. 80)."""
        rho = self.sigma_1 ** (-2.0 * expand_t(t, x))
        return rho.expand(x.shape[:1] + (1,) * (x.dim() - 1))

    def sender_sample(self, x, alpha, generator=None):
        alpha = expand_t(alpha, x)
        return x + _randn(x.shape, x, generator) / alpha.sqrt()

    def update(self, theta, y, alpha):
        mu, rho = theta
        alpha = expand_t(alpha, mu)
        new_rho = rho + alpha
        return (rho * mu + alpha * y) / new_rho, new_rho

    @torch.no_grad()
    def flow_sample(self, x, t, generator=None):
        mean, std = self.flow_mean_std(x, t)
        return mean + std * _randn(x.shape, x, generator), self.flow_precision(x, t)

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
        """K e_x - 1 for class indices x of any integer dtype: shape (..., K)."""
        return self.K * torch.nn.functional.one_hot(x.long(), self.K).to(dtype) - 1.0

    @staticmethod
    def _float_dtype(value) -> torch.dtype:
        """The dtype of a float tensor argument (alpha or t), else float32: class indices carry none."""
        return value.dtype if isinstance(value, Tensor) and torch.is_floating_point(value) else torch.float32

    def sender_sample(self, x, alpha, generator=None):
        offsets = self._class_offsets(x, self._float_dtype(alpha))
        alpha = expand_t(alpha, offsets)
        return alpha * offsets + (alpha * self.K).sqrt() * _randn(offsets.shape, offsets, generator)

    def update(self, theta, y, alpha):
        # exp(y) * theta / sum: computed in log space so large accuracies do not overflow.
        (probs,) = theta
        return (torch.softmax(y + probs.clamp_min(1e-38).log(), dim=-1),)

    def flow_mean_std(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean beta (K e_x - 1) and std sqrt(beta K) of the logits y, theta = softmax(y) ~ p_F (sec. 6)."""
        offsets = self._class_offsets(x, self._float_dtype(t))
        beta = self.beta(expand_t(t, offsets).clamp(max=self.t_max))
        return beta * offsets, (beta * self.K).sqrt().expand_as(offsets)

    @torch.no_grad()
    def flow_sample(self, x, t, generator=None):
        mean, std = self.flow_mean_std(x, t)
        y = mean + std * _randn(mean.shape, mean, generator)
        probs = torch.softmax(y, dim=-1)
        # Where sqrt(beta) = std / sqrt(K) underflows the flow is still the uniform prior.
        probs = torch.where(std < 1e-10 * math.sqrt(self.K), torch.full_like(probs, 1.0 / self.K), probs)
        return (probs,)

    @property
    def net_in_channels(self) -> int:
        """K probabilities per dimension, or for K = 2 only that of class 1 (the other is 1 minus it)."""
        return 1 if self.K == 2 else self.K

    def params_to_net_inputs(self, theta: Params) -> Tensor:
        """Network input 2 theta - 1 over the last net_in_channels classes (sec. 6), shape (..., net_in_channels)."""
        (probs,) = theta
        return 2.0 * probs[..., self.K - self.net_in_channels:] - 1.0

    def check_data(self, x):
        check_class_indices(x, self.K)
