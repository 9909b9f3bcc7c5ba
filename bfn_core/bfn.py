"""The BFN module: a network Psi(theta, t), a Bayesian flow and its losses, as one nn.Module."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from bfn_core._checks import check_labels, check_n_steps
from bfn_core.distributions import OutputDistribution
from bfn_core.errors import BfnError
from bfn_core.flows import Params
from bfn_core.guidance import guided_distribution, guided_output_fn
from bfn_core.losses import Loss
from bfn_core.samplers import run_sampler


class BFN(nn.Module):
    """Network + flow + loss. Data x is (B, *dims): floats in [-1, 1], or class indices.

    The network maps the flow's network inputs (B, *dims, C_in) and t (B,) to (B, *dims, C_out),
    with C_in = loss.flow.net_in_channels and C_out = loss.factory.net_out_channels.

    Conditional BFNs: a network built with num_classes = C > 0 also takes labels y (B,) in [0, C], C being
    the null (unconditional) class, which y = None means. Every method that runs the network takes y.
    """

    def __init__(self, net: nn.Module, loss: Loss):
        super().__init__()
        self.net = net
        self.loss_fn = loss
        self.flow = loss.flow

    @property
    def num_classes(self) -> int:
        """C, the class labels the network takes (0: unconditional); label C is the null class."""
        return getattr(self.net, "num_classes", 0)

    def net_output(self, theta: Params, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Psi(theta, t), or Psi(theta, t, y) for labels y (B,) on a conditional network."""
        if y is None:  # the call unconditional networks have always had (y = None is the null class)
            return self.net(self.flow.params_to_net_inputs(theta), t)
        return self.net(self.flow.params_to_net_inputs(theta), t, y)

    def output_distribution(self, theta: Params, t: Tensor, y: Tensor | None = None, guidance: float = 0.0,
                            guidance_space: str = "output") -> OutputDistribution:
        """p_O(. | theta; t[, y]), guided with weight w = guidance (guidance.py); the network under the caller's autocast,
        its outputs used in float32 (as in loss). w != 0 runs one network call on [theta; theta] with labels [y; null]."""
        if guidance == 0.0:
            net_out = self.net_output(theta, t, y)
            with _full_precision(net_out):
                return self.loss_fn.factory.get_dist(_at_least_float32(net_out), theta, t)
        if y is None or not self.num_classes:
            raise BfnError("guidance needs a conditional network (num_classes > 0) and labels y; pass y or set guidance=0")
        b = t.shape[0]
        doubled = tuple(torch.cat([p, p]) for p in theta)
        net_out = self.net_output(doubled, torch.cat([t, t]), torch.cat([y, torch.full_like(y, self.num_classes)]))
        with _full_precision(net_out):
            net_out = _at_least_float32(net_out)
            return guided_distribution(self.loss_fn.factory, net_out[:b], net_out[b:], theta, t, guidance, guidance_space)

    def labels(self, y, batch: int, device, check: bool = True) -> Tensor | None:
        """Labels as a LongTensor (B,) on device (an int: the same class for every example); None stays None."""
        if y is None:
            return None
        if not self.num_classes:
            raise BfnError("this BFN's network is unconditional (num_classes=0): build it with num_classes > 0 to pass labels y")
        y = torch.as_tensor(y)
        y = y.expand(batch) if y.dim() == 0 else y
        if check:
            check_labels(y, self.num_classes, batch)
        return y.to(device=device, dtype=torch.long)

    def drop_labels(self, y: Tensor, p: float, generator=None) -> Tensor:
        """Each label replaced by the null class with probability p (classifier-free guidance's label dropout)."""
        if not 0.0 <= float(p) <= 1.0:
            raise BfnError(f"label_dropout must be a probability in [0, 1] (e.g. 0.1), got {p}")
        drop = torch.rand(y.shape[0], device=y.device, generator=generator) < p
        return torch.where(drop, torch.full_like(y, self.num_classes), y)

    def _rand(self, x: Tensor, generator) -> Tensor:
        return torch.rand(x.shape[0], device=x.device, generator=generator)

    def loss(self, x: Tensor, n_steps: int | None = None, generator=None, n_mc: int = 1, check_data: bool = True, *,
             y: Tensor | None = None, label_dropout: float = 0.0) -> Tensor:
        """One-sample Monte Carlo estimate per example (B,) in nats: L^inf, or L^n with n_steps; of -ln p(x | y) with labels y.

        label_dropout: each label becomes the null class with this probability (drawn from `generator` after
        theta), so one network learns p(x | y) and p(x) for classifier-free guidance.

        Only the network runs under the caller's autocast (e.g. bf16); the flow sample and the loss
        are computed in float32 (or the data's wider dtype) with autocast off, as in the reference.
        `check_data=False` is for callers that checked x before moving it to a GPU: the check reads
        x's range, which waits for the GPU to finish the work queued before it.
        """
        if check_data:
            self.flow.check_data(x)
        y = self.labels(y, x.shape[0], x.device, check=check_data)
        u = self._rand(x, generator)
        if n_steps is None:
            t = u  # t ~ U[0, 1)
        else:
            n_steps = check_n_steps(n_steps)
            t = torch.floor(u * n_steps) / n_steps  # t = (i - 1) / n, i ~ U{1..n}
        with _full_precision(x):
            theta = self.flow.flow_sample(x, t, generator)
        if y is not None and label_dropout:
            y = self.drop_labels(y, label_dropout, generator)
        net_out = self.net_output(theta, t, y)
        with _full_precision(x):
            net_out = _at_least_float32(net_out)
            if n_steps is None:
                return self.loss_fn.cts_time_loss(x, net_out, theta, t)
            return self.loss_fn.discrete_time_loss(x, net_out, theta, t, n_steps, n_mc=n_mc, generator=generator)

    forward = loss

    def reconstruction_loss(self, x: Tensor, generator=None, *, y: Tensor | None = None) -> Tensor:
        """L^r(x) (given labels y) per example, theta ~ p_F(. | x; 1); the network under the caller's autocast, the rest in float32."""
        self.flow.check_data(x)
        y = self.labels(y, x.shape[0], x.device)
        t = torch.ones(x.shape[0], device=x.device)
        with _full_precision(x):
            theta = self.flow.flow_sample(x, t, generator)
        net_out = self.net_output(theta, t, y)
        with _full_precision(x):
            return self.loss_fn.reconstruction_loss(x, _at_least_float32(net_out), theta)

    @torch.no_grad()
    def nll(self, x: Tensor, n_steps: int | None = None, n_repeats: int = 1, n_mc: int = 10, generator=None, *,
            y: Tensor | None = None) -> Tensor:
        """Upper bound on -ln p(x) (-ln p(x | y) with labels y) per example in nats: mean over repeats of L^n (or L^inf) + L^r."""
        n_repeats = check_n_steps(n_repeats, "n_repeats")
        total = torch.zeros(x.shape[0], device=x.device)
        for _ in range(n_repeats):
            total += self.loss(x, n_steps, generator, n_mc, y=y) + self.reconstruction_loss(x, generator, y=y)
        return total / n_repeats

    @torch.no_grad()
    def sample(self, shape, n_steps: int, generator=None, *, sampler: str = "bfn", grid=None, final: str = "sample",
               callback=None, return_trajectory: bool = False, y=None, guidance: float = 0.0,
               guidance_space: str = "output", observed=None, mask=None, **options):
        """Samples of data shape (B, *dims) from SAMPLERS[sampler] over n_steps steps of `grid` (a TIME_GRIDS name,
        explicit times, or None: the sampler's own); final "sample" (the paper) or "mode"; see samplers.py.

        y: class labels (B,) (or one int for all) for a conditional network; guidance: the classifier-free
        guidance weight w (0: plain conditional, -1: unconditional) in guidance_space "output" or "params"
        (guidance.py); observed, mask: inpainting, the samples equal observed where mask is True (inpainting.py).
        """
        shape = tuple(shape)
        device = next(self.parameters()).device
        y = self.labels(y, shape[0], device)
        output_fn = self.output_distribution
        if y is not None or guidance != 0.0:
            if y is None:
                raise BfnError("guidance needs class labels: pass y (one class id per sample), or set guidance=0")
            output_fn = guided_output_fn(self, y, guidance, guidance_space)
        if observed is not None or mask is not None:
            options.update(observed=observed, mask=mask)
        return run_sampler(
            output_fn, self.flow, shape, n_steps, sampler=sampler, grid=grid, device=device, generator=generator,
            final=final, callback=callback, return_trajectory=return_trajectory, **options,
        )


def _full_precision(x: Tensor):
    """Autocast off on x's device: losses near t = 1 need float32 (1 - gamma ~ 1e-6, weights ~ 1e7)."""
    device_type = x.device.type if torch.amp.is_autocast_available(x.device.type) else "cpu"
    return torch.autocast(device_type=device_type, enabled=False)


def _at_least_float32(net_out: Tensor) -> Tensor:
    """bf16 / fp16 network outputs as float32; float32 and float64 stay as they are."""
    return net_out.to(torch.promote_types(net_out.dtype, torch.float32))
