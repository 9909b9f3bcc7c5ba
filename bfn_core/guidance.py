"""Classifier-free guidance (Ho & Salimans, 2022) for BFN samplers, in output space or parameter space.

A conditional network Psi(theta, t, y) is trained with label dropout, so Psi(theta, t, null) is the
unconditional model (the null class is index num_classes). The guidance weight w (`guidance`) sharpens the
conditional p_O towards what distinguishes class y from the rest:

- output space: combine the network outputs, then build p_O from them,
      Psi_w = Psi(theta, t, y) + w (Psi(theta, t, y) - Psi(theta, t, null)),   p_O = factory(Psi_w).
  Continuous: eps_w, then x_hat = clip(mu / gamma - sqrt((1 - gamma) / gamma) eps_w). Discretised: (mu_eps,
  ln sigma_eps)_w, then the binned Gaussian. Discrete: logits_w, then softmax, i.e. p^(1 + w) / p_null^w renormalised.
- parameter space: build both p_O, then combine their parameters, q_w = q_y + w (q_y - q_null):
  continuous: the clipped x_hat, clipped again to the data range;
  discretised: the per-bin probabilities p_O(k), negatives set to 0, renormalised (a BinnedCategorical);
  discrete: the class probabilities, negatives set to 0, renormalised.

Scale convention: w = 0 is plain conditional sampling, w = -1 unconditional, w > 0 guided (the s of
"Psi_null + s (Psi_y - Psi_null)" is 1 + w). Where the map Psi -> p_O is linear (continuous data with no
clipping active) the two spaces coincide; clipping, the discretisation's CDFs and softmax make them differ.
Why arithmetic mixtures of probabilities in parameter space: the geometric mixture (log-probabilities
combined, renormalised) equals output-space guidance exactly for discrete data (log_softmax is the logits
less a per-dimension constant), so it would be no second option; the arithmetic one combines what the
samplers consume linearly (e_hat = E[e_x] in the solvers' drift; the binned mean sum_k p_k c_k), as x_hat does
for continuous data. Bin probabilities rather than (mu_x, sigma_x) for discretised data for the same reason:
mu_x is linear in mu_eps (it would repeat output space), and a combined sigma_x can turn negative.
"""
from __future__ import annotations

from functools import partial

from torch import Tensor

from bfn_core._checks import check_choice
from bfn_core.distributions import (
    BinnedCategorical,
    CategoricalOutput,
    DeltaDistribution,
    DiscretisedNormal,
    DistributionFactory,
    OutputDistribution,
)
from bfn_core.errors import BfnError
from bfn_core.flows import Params
from bfn_core.solvers import OutputFn

GUIDANCE_SPACES = ("output", "params")


def guide(cond: Tensor, uncond: Tensor, w: float) -> Tensor:
    """q_y + w (q_y - q_null): w = 0 returns q_y exactly, w = -1 q_null."""
    return cond + w * (cond - uncond)


def _mixed_probs(p_cond: Tensor, p_uncond: Tensor, w: float) -> Tensor:
    """Arithmetic guidance of probabilities (last dim): negatives set to 0, renormalised (the sum before clipping is 1)."""
    p = guide(p_cond, p_uncond, w).clamp_min(0.0)
    return p / p.sum(-1, keepdim=True)


def guided_params(cond: OutputDistribution, uncond: OutputDistribution, w: float, factory: DistributionFactory) -> OutputDistribution:
    """Parameter-space guidance: p_O's parameters combined, q_y + w (q_y - q_null) (see the module docstring)."""
    if isinstance(cond, DeltaDistribution):
        x_min, x_max = getattr(factory, "x_min", -1.0), getattr(factory, "x_max", 1.0)
        return DeltaDistribution(guide(cond.x_hat, uncond.x_hat, w).clamp(x_min, x_max))
    if isinstance(cond, DiscretisedNormal):
        return BinnedCategorical(_mixed_probs(cond.probs, uncond.probs, w))
    if isinstance(cond, CategoricalOutput):
        return CategoricalOutput(_mixed_probs(cond.probs, uncond.probs, w).log())
    raise BfnError(f"parameter-space guidance knows continuous, discretised and discrete p_O, got {type(cond).__name__}; "
                   "use guidance_space='output'")


def guided_distribution(factory: DistributionFactory, net_cond: Tensor, net_uncond: Tensor, theta: Params, t: Tensor,
                        w: float, space: str = "output") -> OutputDistribution:
    """Guided p_O(. | theta; t, y) from the network outputs for y and for the null class (float32 or wider)."""
    if check_choice(space, GUIDANCE_SPACES, "guidance_space") == "output":
        return factory.get_dist(guide(net_cond, net_uncond, w), theta, t)
    return guided_params(factory.get_dist(net_cond, theta, t), factory.get_dist(net_uncond, theta, t), w, factory)


def guided_output_fn(bfn, y: Tensor, guidance: float, space: str = "output") -> OutputFn:
    """output_fn(theta, t) for any sampler: p_O guided towards labels y (B,) with weight w = guidance.

    BFN.output_distribution does the work: one network call per step on [theta; theta] with labels [y; null]
    (the batch doubled); guidance = 0 is the plain conditional p_O (one undoubled call).
    """
    check_choice(space, GUIDANCE_SPACES, "guidance_space")
    return partial(bfn.output_distribution, y=y, guidance=float(guidance), guidance_space=space)
