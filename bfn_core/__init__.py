"""bfn_core: the mathematics of Bayesian Flow Networks (Graves et al., 2023) in pure PyTorch.

Paper concepts map to classes: BayesianFlow (flows.py), output distributions and their factories
(distributions.py), Loss (losses.py), samplers as plain functions (samplers.py), the BFN module
(bfn.py), likelihood evaluation (likelihood.py), networks (networks/), and builders that tie a
data kind to all of these (factory.py).
"""
from bfn_core.bfn import BFN
from bfn_core.distributions import (
    CategoricalFactory,
    CategoricalOutput,
    DeltaDistribution,
    DiscretisedNormal,
    DiscretisedNormalFactory,
    NoisePredictionFactory,
    bin_centres,
    bin_index,
)
from bfn_core.flows import BayesianFlow, ContinuousBayesianFlow, DiscreteBayesianFlow
from bfn_core.likelihood import (
    DEFAULT_STEPS,
    LikelihoodAccumulator,
    LikelihoodTable,
    accumulate_likelihood,
    evaluate_likelihood,
    parse_steps,
    steps_label,
)
from bfn_core.losses import ContinuousLoss, DiscreteLoss, DiscretisedLoss, Loss
from bfn_core.samplers import bfn_sampler

__all__ = [
    "BFN", "BayesianFlow", "ContinuousBayesianFlow", "DiscreteBayesianFlow", "Loss", "ContinuousLoss",
    "DiscretisedLoss", "DiscreteLoss", "NoisePredictionFactory", "DiscretisedNormalFactory",
    "CategoricalFactory", "DeltaDistribution", "DiscretisedNormal", "CategoricalOutput", "bin_centres",
    "bin_index", "bfn_sampler", "accumulate_likelihood", "evaluate_likelihood", "LikelihoodTable", "LikelihoodAccumulator",
    "DEFAULT_STEPS", "parse_steps", "steps_label",
]
from bfn_core.factory import DATA_KINDS, NETWORKS, make_bfn, make_loss  # noqa: E402

__all__ += ["DATA_KINDS", "NETWORKS", "make_bfn", "make_loss"]
