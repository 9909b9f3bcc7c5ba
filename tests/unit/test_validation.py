"""Every invalid argument raises BfnError (a ValueError) naming the argument and its allowed range."""
import pytest
import torch

from bfn_core import (
    BFN,
    BfnError,
    CategoricalFactory,
    ContinuousBayesianFlow,
    ContinuousLoss,
    DiscreteBayesianFlow,
    DiscreteLoss,
    DiscretisedLoss,
    make_bfn,
    parse_steps,
)
from bfn_core.networks import MLP


@pytest.mark.parametrize("sigma_1", [0.0, 1.0, -0.1, 1.5])
def test_sigma_1_outside_unit_interval(sigma_1):
    with pytest.raises(BfnError, match=r"sigma_1 must be in \(0, 1\)"):
        ContinuousBayesianFlow(sigma_1)


@pytest.mark.parametrize("beta_1", [0.0, -1.0])
def test_beta_1_not_positive(beta_1):
    with pytest.raises(BfnError, match=r"beta_1 must be > 0"):
        DiscreteBayesianFlow(3, beta_1)


@pytest.mark.parametrize("k", [1, 0, -2])
def test_too_few_classes_or_bins(k):
    with pytest.raises(BfnError, match=r"num_classes must be an integer >= 2"):
        DiscreteBayesianFlow(k, 1.0)
    with pytest.raises(BfnError, match=r"num_bins must be an integer >= 2"):
        DiscretisedLoss(ContinuousBayesianFlow(0.1), k)
    with pytest.raises(BfnError, match=r"num_classes must be an integer >= 2"):
        CategoricalFactory(k)


def test_continuous_data_outside_range():
    bfn = BFN(MLP((2,), 1, 1, hidden=8, depth=1), ContinuousLoss(ContinuousBayesianFlow(0.1)))
    with pytest.raises(BfnError, match=r"x must lie in \[-1, 1\]"):
        bfn.loss(torch.tensor([[0.0, 1.5]]))
    with pytest.raises(BfnError, match=r"x must be a floating-point tensor"):
        bfn.loss(torch.tensor([[0, 1]]))


def test_class_index_out_of_range():
    bfn = BFN(MLP((2,), 3, 3, hidden=8, depth=1), DiscreteLoss(DiscreteBayesianFlow(3, 1.0)))
    with pytest.raises(BfnError, match=r"class index out of range: x must lie in \[0, K\) = \[0, 3\)"):
        bfn.loss(torch.tensor([[0, 3]]))
    with pytest.raises(BfnError, match=r"class index out of range"):
        bfn.loss(torch.tensor([[-1, 0]]))


@pytest.mark.parametrize("n", [0, -5])
def test_n_steps_below_one(n):
    bfn = BFN(MLP((2,), 3, 3, hidden=8, depth=1), DiscreteLoss(DiscreteBayesianFlow(3, 1.0)))
    x = torch.tensor([[0, 2]])
    with pytest.raises(BfnError, match=r"n_steps must be an integer >= 1"):
        bfn.loss(x, n)
    with pytest.raises(BfnError, match=r"n_steps must be an integer >= 1"):
        bfn.sample((1, 2), n)
    with pytest.raises(BfnError, match=r"n_repeats must be an integer >= 1"):
        bfn.nll(x, 10, n_repeats=n)
    with pytest.raises(BfnError, match=r"steps must be integers >= 1 or 'inf'"):
        parse_steps(f"10,{n}")


def test_user_errors_are_value_errors():
    """Callers that catch ValueError keep catching every user error."""
    assert issubclass(BfnError, ValueError)


@pytest.mark.parametrize("kind, kwargs, message", [
    ("images", dict(sigma_1=0.1), "kind must be one of"),
    ("continuous", dict(), "sigma_1 is required for continuous data"),
    ("discrete", dict(beta_1=1.0), "num_classes is required for discrete data"),
    ("discretised", dict(sigma_1=0.1, num_classes=4, receiver="factorised"), "receiver applies to discrete data only"),
    ("continuous", dict(sigma_1=0.1, network="resnet"), "network must be one of"),
    ("continuous", dict(sigma_1=0.1, network="unet"), "needs image data of shape"),
    ("discrete", dict(beta_1=1.0, num_classes=3, network="transformer", width=10, heads=3), "cannot be split into 3 heads"),
    ("discrete", dict(beta_1=1.0, num_classes=3, network="transformer", positions="rotary"), "positions must be one of"),
])
def test_factory_arguments(kind, kwargs, message):
    with pytest.raises(BfnError, match=message):
        make_bfn(kind, (4,), **kwargs)
