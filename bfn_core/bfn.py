"""The BFN module: a network Psi(theta, t), a Bayesian flow and its losses, as one nn.Module."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from bfn_core._checks import check_n_steps
from bfn_core.distributions import OutputDistribution
from bfn_core.flows import Params
from bfn_core.losses import Loss
from bfn_core.samplers import run_sampler


class BFN(nn.Module):
    """Network + flow + loss. Data x is (B, *dims): floats in [-1, 1], or class indices.

    The network maps the flow's network inputs (B, *dims, C_in) and t (B,) to (B, *dims, C_out),
    with C_in = loss.flow.net_in_channels and C_out = loss.factory.net_out_channels.
    """

    def __init__(self, net: nn.Module, loss: Loss):
        super().__init__()
        self.net = net
        self.loss_fn = loss
        self.flow = loss.flow

    def net_output(self, theta: Params, t: Tensor) -> Tensor:
        """Psi(theta, t)."""
        return self.net(self.flow.params_to_net_inputs(theta), t)

    def output_distribution(self, theta: Params, t: Tensor) -> OutputDistribution:
        """p_O(. | theta; t); the network under the caller's autocast, its outputs used in float32 (as in loss)."""
        net_out = self.net_output(theta, t)
        with _full_precision(net_out):
            return self.loss_fn.factory.get_dist(_at_least_float32(net_out), theta, t)

    def _rand(self, x: Tensor, generator) -> Tensor:
        return torch.rand(x.shape[0], device=x.device, generator=generator)

    def loss(self, x: Tensor, n_steps: int | None = None, generator=None, n_mc: int = 1, check_data: bool = True) -> Tensor:
        """One-sample Monte Carlo estimate per example (B,) in nats: L^inf, or L^n with n_steps.

        Only the network runs under the caller's autocast (e.g. bf16); the flow sample and the loss
        are computed in float32 (or the data's wider dtype) with autocast off, as in the reference.
        `check_data=False` is for callers that checked x before moving it to a GPU: the check reads
        x's range, which waits for the GPU to finish the work queued before it.
        """
        if check_data:
            self.flow.check_data(x)
        u = self._rand(x, generator)
        if n_steps is None:
            t = u  # t ~ U[0, 1)
        else:
            n_steps = check_n_steps(n_steps)
            t = torch.floor(u * n_steps) / n_steps  # t = (i - 1) / n, i ~ U{1..n}
        with _full_precision(x):
            theta = self.flow.flow_sample(x, t, generator)
        net_out = self.net_output(theta, t)
        with _full_precision(x):
            net_out = _at_least_float32(net_out)
            if n_steps is None:
                return self.loss_fn.cts_time_loss(x, net_out, theta, t)
            return self.loss_fn.discrete_time_loss(x, net_out, theta, t, n_steps, n_mc=n_mc, generator=generator)

    forward = loss

    def reconstruction_loss(self, x: Tensor, generator=None) -> Tensor:
        """L^r(x) per example, theta ~ p_F(. | x; 1); the network under the caller's autocast, the rest in float32."""
        self.flow.check_data(x)
        t = torch.ones(x.shape[0], device=x.device)
        with _full_precision(x):
            theta = self.flow.flow_sample(x, t, generator)
        net_out = self.net_output(theta, t)
        with _full_precision(x):
            return self.loss_fn.reconstruction_loss(x, _at_least_float32(net_out), theta)

    @torch.no_grad()
    def nll(self, x: Tensor, n_steps: int | None = None, n_repeats: int = 1, n_mc: int = 10, generator=None) -> Tensor:
        """Upper bound on -ln p(x) per example in nats: mean over repeats of L^n (or L^inf) + L^r."""
        n_repeats = check_n_steps(n_repeats, "n_repeats")
        total = torch.zeros(x.shape[0], device=x.device)
        for _ in range(n_repeats):
            total += self.loss(x, n_steps, generator, n_mc) + self.reconstruction_loss(x, generator)
        return total / n_repeats

    @torch.no_grad()
    def sample(self, shape, n_steps: int, generator=None, *, sampler: str = "bfn", grid=None, final: str = "sample",
               callback=None, return_trajectory: bool = False, **options):
        """Samples of data shape (B, *dims) from SAMPLERS[sampler] over n_steps steps of `grid` (a TIME_GRIDS name,
        explicit times, or None: the sampler's own); final "sample" (the paper) or "mode"; see samplers.py."""
        device = next(self.parameters()).device
        return run_sampler(
            self.output_distribution, self.flow, tuple(shape), n_steps, sampler=sampler, grid=grid, device=device,
            generator=generator, final=final, callback=callback, return_trajectory=return_trajectory, **options,
        )


def _full_precision(x: Tensor):
    """Autocast off on x's device: losses near t = 1 need float32 (1 - gamma ~ 1e-6, weights ~ 1e7)."""
    device_type = x.device.type if torch.amp.is_autocast_available(x.device.type) else "cpu"
    return torch.autocast(device_type=device_type, enabled=False)


def _at_least_float32(net_out: Tensor) -> Tensor:
    """bf16 / fp16 network outputs as float32; float32 and float64 stay as they are."""
    return net_out.to(torch.promote_types(net_out.dtype, torch.float32))
