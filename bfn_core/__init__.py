"""bfn_core: the mathematics of Bayesian Flow Networks (Graves et al., 2023) in pure PyTorch.

Paper concepts map to classes: BayesianFlow (flows.py), output distributions and their factories
(distributions.py), Loss (losses.py), samplers as plain functions over a time grid with their registry
(samplers.py; BFN-Solvers in solvers.py, grids in time_grids.py, classifier-free guidance in guidance.py,
inpainting in inpainting.py), the BFN module (bfn.py), likelihood evaluation (likelihood.py), networks
(networks/), and builders that tie a data kind to all of these (factory.py). Every error a user can fix is a BfnError (errors.py).

Names are imported on first use (PEP 562): `from bfn_core.errors import BfnError`, which every
layer's errors derive from, must not pay for importing torch (the command line's --help does it).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BFN": "bfn",
    "bin_centres": "discretised_ops", "bin_index": "discretised_ops",
    "BinnedCategorical": "distributions", "CategoricalFactory": "distributions", "CategoricalOutput": "distributions", "DeltaDistribution": "distributions",
    "DiscretisedNormal": "distributions", "DiscretisedNormalFactory": "distributions",
    "NoisePredictionFactory": "distributions",
    "BfnError": "errors",
    "BayesianFlow": "flows", "ContinuousBayesianFlow": "flows", "DiscreteBayesianFlow": "flows",
    "GUIDANCE_SPACES": "guidance", "guided_distribution": "guidance", "guided_output_fn": "guidance",
    "Inpainting": "inpainting",
    "DEFAULT_STEPS": "likelihood", "LikelihoodAccumulator": "likelihood", "LikelihoodTable": "likelihood",
    "accumulate_likelihood": "likelihood", "evaluate_likelihood": "likelihood", "parse_steps": "likelihood",
    "steps_label": "likelihood",
    "ContinuousLoss": "losses", "DiscreteLoss": "losses", "DiscretisedLoss": "losses", "Loss": "losses",
    "SAMPLERS": "samplers", "bfn_sampler": "samplers", "get_sampler": "samplers", "run_sampler": "samplers",
    "sampler_times": "samplers",
    "integrate": "solvers", "ode1": "solvers", "ode2": "solvers", "sde1": "solvers", "sde2": "solvers",
    "TIME_GRIDS": "time_grids", "get_time_grid": "time_grids",
    "DATA_KINDS": "factory", "NETWORKS": "factory", "make_bfn": "factory", "make_loss": "factory",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bfn_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"bfn_core.{module}"), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
