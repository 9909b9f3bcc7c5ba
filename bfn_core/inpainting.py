"""Inpainting (partial observation) for every sampler: the known coordinates follow the sender.

Given observed data x_obs and a boolean mask m (True = known), every sampler's loop (solvers.integrate)
replaces, before each network call at t_i, the known coordinates' state by a fresh draw from the Bayesian
flow distribution p_F(theta | x_obs; t_i) (Graves et al. sec. 4 / 6), and returns x_obs on the mask. This is
RePaint's rule (Lugmayr et al., 2022) without resampling: the network then sees, at every t, known coordinates
distributed exactly as during training, and the unknown ones are drawn given them. The state is the input
mean mu (continuous and discretised data: mu ~ N(gamma x, gamma (1 - gamma))) or the logits y with
theta = softmax(y) (discrete data: y ~ N(beta (K e_x - 1), beta K I)): flow.flow_mean_std gives both.
For text, a prefix or infix is a mask over positions.
"""
from __future__ import annotations

import torch
from torch import Tensor

from bfn_core.errors import BfnError
from bfn_core.flows import BayesianFlow, DiscreteBayesianFlow


class Inpainting:
    """Known coordinates x_obs[m] of samples of shape `shape`: their state follows p_F(. | x_obs; t)."""

    def __init__(self, flow: BayesianFlow, observed, mask, shape: tuple[int, ...], device=None):
        if observed is None or mask is None:
            raise BfnError("inpainting needs both observed (the known data) and mask (True where known); pass both or neither")
        mask = torch.as_tensor(mask, device=device)
        if mask.dtype != torch.bool:
            raise BfnError(f"mask must be a bool tensor (True where the data is known), got dtype {mask.dtype}")
        observed = torch.as_tensor(observed, device=device)
        try:
            mask, observed = mask.expand(shape), observed.expand(shape)
        except RuntimeError:
            raise BfnError(f"observed {tuple(observed.shape)} and mask {tuple(mask.shape)} must have (or broadcast "
                           f"to) the samples' shape {tuple(shape)}") from None
        # Unknown entries may hold anything (e.g. NaN placeholders): only the known ones are data.
        observed = torch.where(mask, observed, torch.zeros_like(observed))
        flow.check_data(observed)
        self.flow, self.mask, self.observed = flow, mask, observed
        self.discrete = isinstance(flow, DiscreteBayesianFlow)

    def known_state(self, state: Tensor, t: float, generator=None) -> Tensor:
        """The path state with the known coordinates replaced by a draw from p_F(theta | x_obs; t)."""
        x = self.observed if self.discrete else self.observed.to(state.dtype)
        t_b = torch.full((self.mask.shape[0],), t, dtype=state.dtype, device=state.device)
        mean, std = self.flow.flow_mean_std(x, t_b)
        draw = mean + std * torch.randn(mean.shape, generator=generator, device=state.device, dtype=state.dtype)
        mask = self.mask.unsqueeze(-1) if self.discrete else self.mask  # discrete states carry K logits per coordinate
        return torch.where(mask, draw.to(state.dtype), state)

    def result(self, samples: Tensor) -> Tensor:
        """The samples with x_obs on the mask, exactly."""
        return torch.where(self.mask, self.observed.to(samples.dtype), samples)
