"""Loss options and inputs: integer class dtypes, bf16 autocast around the loss, the reference's
factorised receiver and its reconstruction std."""
import math

import pytest
import torch

from bfn_core import (
    ContinuousBayesianFlow,
    ContinuousLoss,
    DiscreteBayesianFlow,
    DiscreteLoss,
    bin_centres,
    make_bfn,
    make_loss,
)
from bfn_core.distributions import DiscretisedNormal

F64 = torch.float64
INT_DTYPES = [torch.uint8, torch.int16, torch.int32, torch.int64]


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---- class indices of any integer dtype ----
@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_discrete_flow_and_losses_accept_any_integer_dtype(dtype):
    k = 4
    x64 = torch.randint(0, k, (16, 5), generator=gen(0))
    x = x64.to(dtype)
    flow = DiscreteBayesianFlow(k, 2.0)
    flow.check_data(x)
    t = torch.rand(16, generator=gen(1))
    (theta,) = flow.flow_sample(x, t, gen(2))
    assert torch.equal(theta, flow.flow_sample(x64, t, gen(2))[0])
    assert torch.equal(flow.sender_sample(x, t, gen(3)), flow.sender_sample(x64, t, gen(3)))
    net_out = torch.randn(16, 5, k, generator=gen(4))
    for receiver in ("mixture", "factorised"):
        loss = DiscreteLoss(flow, receiver=receiver)
        for name, args in (("cts_time_loss", (net_out, (theta,), t)), ("reconstruction_loss", (net_out, (theta,)))):
            assert torch.equal(getattr(loss, name)(x, *args), getattr(loss, name)(x64, *args)), (name, dtype)
        got = loss.discrete_time_loss(x, net_out, (theta,), t, 10, n_mc=2, generator=gen(5))
        assert torch.equal(got, loss.discrete_time_loss(x64, net_out, (theta,), t, 10, n_mc=2, generator=gen(5)))
    bfn = make_bfn("discrete", (5,), num_classes=k, beta_1=2.0, hidden=16, depth=1)
    for n in (None, 10):
        assert torch.isfinite(bfn.loss(x, n, generator=gen(6))).all()
    assert torch.isfinite(bfn.reconstruction_loss(x)).all()


def test_class_index_checks_compare_without_wrapping():
    DiscreteBayesianFlow(256, 1.0).check_data(torch.tensor([0, 255], dtype=torch.uint8))  # 256 must not wrap to 0
    with pytest.raises(ValueError, match=r"\[0, 200\)"):
        DiscreteBayesianFlow(200, 1.0).check_data(torch.tensor([3, 255], dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"got values in \[-1, 2\]"):
        DiscreteBayesianFlow(4, 1.0).check_data(torch.tensor([-1, 2], dtype=torch.int16))
    for bad in (torch.tensor([0.0, 1.0]), torch.tensor([True, False])):
        with pytest.raises(ValueError, match="integer class indices"):
            DiscreteBayesianFlow(2, 1.0).check_data(bad)


# ---- bf16 network, float32 loss ----
AUTOCAST_CASES = [
    ("continuous", dict(sigma_1=0.001), lambda g: torch.rand(64, 8, generator=g) * 2 - 1),
    ("discretised", dict(sigma_1=0.001, num_classes=16), lambda g: bin_centres(16)[torch.randint(0, 16, (64, 8), generator=g)]),
    # at t = 1 with sigma_1 = 1e-3 this untrained network already puts all mass on x's bin (L^r = 0)
    ("discretised", dict(sigma_1=0.02, num_classes=16), lambda g: bin_centres(16)[torch.randint(0, 16, (64, 8), generator=g)]),
    ("discrete", dict(beta_1=3.0, num_classes=4), lambda g: torch.randint(0, 4, (64, 8), generator=g).to(torch.int32)),
]
# bf16 keeps 8 bits of mantissa: the network output carries ~0.4% relative error, and the losses
# and gradients follow it. Measured worst cases over these seeds: batch-mean loss 0.42%, parameter
# gradient 3.5% (relative norm of the difference).
AUTOCAST_LOSS_RTOL, AUTOCAST_GRAD_RTOL = 0.01, 0.1


def _random_net(bfn, seed):
    torch.manual_seed(seed)
    for p in bfn.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return bfn


def _loss_and_grads(bfn, x, what, seed, autocast: bool):
    bfn.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        if what == "r":
            value = bfn.reconstruction_loss(x, generator=gen(seed))
        else:
            value = bfn.loss(x, what, generator=gen(seed), n_mc=2)
        total = value.mean()
    total.backward()
    return value.detach(), torch.cat([p.grad.flatten() for p in bfn.parameters()])


@pytest.mark.parametrize("kind,kwargs,data", AUTOCAST_CASES, ids=[f"{c[0]}-{c[1].get('sigma_1', '')}" for c in AUTOCAST_CASES])
def test_loss_is_float32_under_bf16_autocast(kind, kwargs, data):
    bfn = _random_net(make_bfn(kind, (8,), hidden=64, depth=2, **kwargs), 0)
    x = data(gen(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        theta = bfn.flow.flow_sample(x, torch.rand(64, generator=gen(2)), gen(3))
        assert bfn.net_output(theta, torch.rand(64)).dtype == torch.bfloat16  # the network does run in bf16
    assert all(v.dtype == torch.float32 for v in theta)
    for what in (None, 10, 1000, "r"):
        for seed in range(3):
            v32, g32 = _loss_and_grads(bfn, x, what, seed, autocast=False)
            v16, g16 = _loss_and_grads(bfn, x, what, seed, autocast=True)
            assert v16.dtype == torch.float32, (kind, what)
            assert torch.isfinite(v16).all() and torch.isfinite(g16).all(), (kind, what)
            # the batch mean is what training and evaluation use
            rel = abs(float(v16.mean() - v32.mean())) / max(abs(float(v32.mean())), 1e-3)
            assert rel < AUTOCAST_LOSS_RTOL, (kind, what, seed, rel)
            grad_rel = float((g16 - g32).norm() / g32.norm().clamp_min(1e-12))
            assert grad_rel < AUTOCAST_GRAD_RTOL, (kind, what, seed, grad_rel)


# ---- the reference's reconstruction std for continuous data on K bins ----
def test_reconstruction_std_scale():
    flow = ContinuousBayesianFlow(math.sqrt(1e-3))
    x = bin_centres(16)[torch.randint(0, 16, (32, 6), generator=gen(0))]
    mu, _ = flow.flow_sample(x, torch.ones(32), gen(1))
    eps = torch.randn(32, 6, 1, generator=gen(2))
    x_hat = ContinuousLoss(flow).factory.get_dist(eps, (mu, None), torch.ones(32)).mean
    for scale in (1.0, 0.7):
        std = scale * flow.sigma_1
        gauss = ContinuousLoss(flow, reconstruction_std_scale=scale).reconstruction_loss(x, eps, (mu, None))
        want = -torch.distributions.Normal(x_hat, std).log_prob(x).sum(-1)
        assert torch.allclose(gauss, want, rtol=1e-5, atol=1e-5)
        binned = ContinuousLoss(flow, num_bins=16, reconstruction_std_scale=scale).reconstruction_loss(x, eps, (mu, None))
        want = -DiscretisedNormal(x_hat, torch.full_like(x_hat, std), 16).log_prob(x).sum(-1)
        assert torch.allclose(binned, want, rtol=1e-6, atol=1e-6)
    assert make_loss("continuous", sigma_1=0.03, num_classes=16, reconstruction_std_scale=0.7).reconstruction_std_scale == 0.7
    assert make_bfn("continuous", (3,), sigma_1=0.03, reconstruction_std_scale=0.7, hidden=8).loss_fn.reconstruction_std_scale == 0.7
    with pytest.raises(ValueError, match="reconstruction_std_scale must be > 0"):
        ContinuousLoss(flow, reconstruction_std_scale=0.0)
    with pytest.raises(ValueError, match="continuous data only"):
        make_loss("discretised", sigma_1=0.03, num_classes=16, reconstruction_std_scale=0.7)


# ---- the reference's factorised receiver for discrete data ----
def _reference_factorised(x, log_p, y, alpha):
    """float64 ln p_S(y | x) - ln prod_c [p_c N(y_c | alpha (K-1), alpha K) + (1 - p_c) N(y_c | -alpha, alpha K)]."""
    k = log_p.shape[-1]
    p, alpha = log_p.exp(), alpha.reshape(-1, *([1] * (log_p.dim() - 1)))
    sender = torch.distributions.Normal(alpha * (k * torch.nn.functional.one_hot(x.long(), k).double() - 1), (alpha * k).sqrt())
    mix = torch.distributions.Categorical(probs=torch.stack([p, 1 - p], -1))
    comps = torch.distributions.Normal(torch.stack([alpha * (k - 1), -alpha], -1).expand(*p.shape, 2), (alpha * k).sqrt()[..., None])
    return (sender.log_prob(y) - torch.distributions.MixtureSameFamily(mix, comps).log_prob(y)).sum(-1)


@pytest.mark.parametrize("k", [2, 5, 27])
def test_factorised_receiver_matches_the_reference_formula(k):
    flow = DiscreteBayesianFlow(k, 3.0)
    loss = DiscreteLoss(flow, receiver="factorised")
    x = torch.randint(0, k, (128, 4), generator=gen(0))
    alpha = torch.exp(torch.empty(128).uniform_(-4, 2, generator=gen(1)))  # accuracies of 0.02 to 7
    y = flow.sender_sample(x, alpha, gen(2))
    logits = torch.randn(128, 4, k, generator=gen(3)) * 2
    log_p64 = torch.log_softmax(logits.double(), -1)  # normalised in float64: the reference formula uses 1 - p
    want = _reference_factorised(x, log_p64, y.double(), alpha.double())
    got32 = loss.log_ratio(x, torch.log_softmax(logits, -1), y, alpha)
    assert got32.dtype == torch.float32 and torch.allclose(got32.double(), want, rtol=1e-5, atol=1e-5)
    got64 = loss.log_ratio(x, log_p64, y.double(), alpha.double())
    assert got64.dtype == F64 and torch.allclose(got64, want, rtol=1e-10, atol=1e-10)


def _paired_bounds(k, beta_1, n, oracle: bool = True, draws=20000):
    """Per-draw n KL estimates of the two receivers on the same x, theta and y (one step i per draw).

    With oracle, p_O is the exact posterior of x given theta for uniform i.i.d. classes (p_O = theta);
    otherwise a fixed, wrong network.
    """
    flow = DiscreteBayesianFlow(k, beta_1)
    x = torch.randint(0, k, (draws, 4), generator=gen(0))
    t = torch.randint(0, n, (draws,), generator=gen(1)) / n
    (theta,) = flow.flow_sample(x, t, gen(2))
    log_p = theta.clamp_min(1e-30).log() if oracle else torch.log_softmax(torch.randn(draws, 4, k, generator=gen(3)) * 2, -1)
    alpha = flow.alpha_at_step(t, n)
    y = flow.sender_sample(x, alpha, gen(4))
    mixture, factorised = (DiscreteLoss(flow, receiver=r).log_ratio(x, log_p, y, alpha).sum(-1) * n for r in ("mixture", "factorised"))
    return mixture.double(), factorised.double()


@pytest.mark.parametrize("k,beta_1", [(2, 9.0), (27, 0.5625)])
def test_factorised_receiver_is_a_looser_bound(k, beta_1):
    """The factorised receiver is the product of the mixture receiver's marginals, so with x ~ p_O the
    expected excess is KL(p_R || prod of its marginals) >= 0. It shrinks like 1/n (measured with
    these draws, n = 10: +11% for K = 2, +3% for K = 27; n = 100: ~1% and ~0.3%, within noise). For a
    p_O that is wrong about x it can go either way (K = 27, a random network: -2% at n = 10)."""
    mixture, factorised = _paired_bounds(k, beta_1, 10)
    gap = factorised - mixture
    se = float(gap.std() / math.sqrt(gap.numel()))
    assert float(gap.mean()) > 5 * se, (k, float(mixture.mean()), float(factorised.mean()), se)
    assert float(gap.mean()) > 0.02 * float(mixture.mean())
    mixture, factorised = _paired_bounds(k, beta_1, 100)
    gap = factorised - mixture
    assert float(gap.mean()) > -3 * float(gap.std() / math.sqrt(gap.numel()))


@pytest.mark.parametrize("k", [2, 27])
def test_both_receivers_are_finite_near_one_hot(k):
    flow = DiscreteBayesianFlow(k, 9.0)
    x = torch.randint(0, k, (256, 3), generator=gen(0))
    for scale in (30.0, 100.0, 1000.0):  # logits this far apart make p_O one-hot in float32
        wrong = torch.randint(0, k, (256, 3), generator=gen(1))
        target = torch.where(torch.rand(256, 3, generator=gen(2)) < 0.5, x, wrong)
        logits = (scale * torch.nn.functional.one_hot(target, k).float()).requires_grad_(True)
        net_out = logits[..., 1:] - logits[..., :1] if k == 2 else logits
        t = torch.randint(0, 10, (256,), generator=gen(3)) / 10
        for receiver in ("mixture", "factorised"):
            value = DiscreteLoss(flow, receiver=receiver).discrete_time_loss(x, net_out, None, t, 10, n_mc=3, generator=gen(4))
            (grad,) = torch.autograd.grad(value.sum(), logits)
            assert torch.isfinite(value).all() and torch.isfinite(grad).all(), (k, scale, receiver)


def test_receiver_option_is_named_and_checked():
    assert DiscreteLoss(DiscreteBayesianFlow(3, 1.0)).receiver == "mixture"
    assert make_loss("discrete", num_classes=3, beta_1=1.0, receiver="factorised").receiver == "factorised"
    assert make_bfn("discrete", (4,), num_classes=3, beta_1=1.0, receiver="factorised", hidden=8).loss_fn.receiver == "factorised"
    with pytest.raises(ValueError, match="receiver must be one of"):
        DiscreteLoss(DiscreteBayesianFlow(3, 1.0), receiver="factorized")
    with pytest.raises(ValueError, match="discrete data only"):
        make_loss("continuous", sigma_1=0.01, receiver="factorised")
