"""Losses against Bayes-optimal oracles, exact identities and non-negativity."""
import math

import pytest
import torch

from bfn_core import (
    BFN,
    ContinuousBayesianFlow,
    ContinuousLoss,
    DiscreteBayesianFlow,
    DiscreteLoss,
    DiscretisedLoss,
    DiscretisedNormal,
    bin_centres,
)
from bfn_core.networks import MLP
from oracles import CategoricalOracle, PointsOracle, entropy, mc_mean_se


def _bound(bfn, x, n_steps, repeats=1):
    with torch.no_grad():
        vals = torch.cat([bfn.loss(x, n_steps, n_mc=4) + bfn.reconstruction_loss(x) for _ in range(repeats)])
    return mc_mean_se(vals)


@pytest.mark.parametrize("k,beta_1", [(3, 3.0), (2, 9.0)])
def test_discrete_oracle_bound_equals_entropy_for_every_n(k, beta_1):
    """With the exact posterior as p_O, the receiver is the exact marginal of y and the bound is
    tight: L^n + L^r = H(x) for every n, and L^inf + L^r too."""
    torch.manual_seed(0)
    pi = torch.tensor([0.6, 0.3, 0.1][:k]) if k == 3 else torch.tensor([0.8, 0.2])
    pi = pi / pi.sum()
    dims = 4
    bfn = BFN(CategoricalOracle(pi), DiscreteLoss(DiscreteBayesianFlow(k, beta_1)))
    x = torch.multinomial(pi, 20000 * dims, replacement=True).reshape(-1, dims)
    h = dims * entropy(pi)
    for n in (10, 100, 1000, None):
        mean, se = _bound(bfn, x, n)
        assert abs(mean - h) < 5 * se + 0.01, (n, mean, se, h)


def test_discrete_time_loss_is_the_exact_kl_for_one_dimension():
    """Against a brute-force KL(p_S || p_R) computed by quadrature-free Monte Carlo with many draws."""
    torch.manual_seed(3)
    flow = DiscreteBayesianFlow(3, 2.0)
    loss = DiscreteLoss(flow)
    logits = torch.tensor([[[0.3, -1.0, 0.5]]])  # (B=1, D=1, K)
    x = torch.tensor([[2]])
    n, t = 4, torch.tensor([0.25])
    alpha = flow.alpha_at_step(t, n)
    est = loss.discrete_time_loss(x.expand(20000, 1), logits.expand(20000, 1, 3), None, t.expand(20000), n).mean()
    # Direct: n * E_y[ln p_S(y|x) - ln sum_k p_k N(y | alpha (K e_k - 1), alpha K I)] with full densities.
    y = flow.sender_sample(x.expand(20000, 1), alpha.expand(20000))[:, 0]  # (S, K)
    means = alpha * (3 * torch.eye(3) - 1)  # (K classes, K coords)
    var = alpha * 3
    log_n = lambda m: (-0.5 * ((y - m) ** 2 / var + torch.log(2 * math.pi * var))).sum(-1)
    log_ps = log_n(means[2])
    log_pr = torch.logsumexp(torch.stack([log_n(means[j]) for j in range(3)], -1) + torch.log_softmax(logits[0, 0], -1), -1)
    direct = n * (log_ps - log_pr).mean()
    assert float(est) == pytest.approx(float(direct), abs=0.05)


def test_continuous_oracle_ln_decreases_towards_linf():
    """Posterior-mean oracle for data on a few points: L^10 > L^100 > L^1000 > L^inf (paper's tables)."""
    torch.manual_seed(0)
    flow = ContinuousBayesianFlow(0.02)
    points, weights = torch.tensor([-0.6, 0.1, 0.7]), torch.tensor([0.5, 0.3, 0.2])
    bfn = BFN(PointsOracle(points, weights, flow), ContinuousLoss(flow))
    x = points[torch.multinomial(weights, 40000 * 2, replacement=True)].reshape(-1, 2)
    with torch.no_grad():
        ln = {n: mc_mean_se(bfn.loss(x, n)) for n in (10, 100, 1000, None)}
    order = [ln[10], ln[100], ln[1000], ln[None]]
    for (m1, s1), (m2, s2) in zip(order, order[1:]):
        assert m1 - m2 > -3 * math.hypot(s1, s2), order
    assert ln[10][0] - ln[None][0] > 5 * math.hypot(ln[10][1], ln[None][1])


def test_discretised_oracle_bound_approaches_entropy():
    """Data on a few bin centres: the bound is at least the entropy, and close to it when the
    model can concentrate on the right bins (sigma_1 small)."""
    torch.manual_seed(0)
    k = 16
    flow = ContinuousBayesianFlow(0.001)
    centres = bin_centres(k)
    points, weights = centres[torch.tensor([2, 9, 13])], torch.tensor([0.5, 0.3, 0.2])
    oracle = PointsOracle(points, weights, flow)

    class TwoChannel(torch.nn.Module):  # mu_eps from the oracle, small ln sigma_eps
        def __init__(self):
            super().__init__()
            self.oracle = oracle

        def forward(self, net_in, t):
            eps = self.oracle(net_in, t)
            return torch.cat([eps, torch.full_like(eps, -3.0)], -1)

    bfn = BFN(TwoChannel(), DiscretisedLoss(flow, k))
    x = points[torch.multinomial(weights, 20000, replacement=True)].reshape(-1, 1)
    h = entropy(weights)
    for n in (100, None):
        mean, se = _bound(bfn, x, n)
        assert mean > h - 5 * se
        assert mean < h + 0.35, (n, mean, h)


def test_perfect_predictor_gives_zero_continuous_loss():
    """x_hat = x gives L = 0 at every t > 0; at t = 0 the reference convention fixes x_hat = 0, so
    step 1 of L^n costs exactly (n/2) alpha_1 ||x||^2."""
    flow = ContinuousBayesianFlow(0.01)
    loss = ContinuousLoss(flow)
    c = 0.37
    oracle = PointsOracle(torch.tensor([c]), torch.ones(1), flow)
    x = torch.full((64, 3), c)
    for n in (1, 10, 1000):
        for i in sorted({1, 2, n // 2 + 1, n}):
            t = torch.full((64,), (i - 1) / n)
            theta = flow.flow_sample(x, t)
            value = loss.discrete_time_loss(x, oracle(flow.params_to_net_inputs(theta), t), theta, t, n)
            expected = 0.0 if i > 1 else 0.5 * n * flow.alpha_i(1.0, n) * 3 * c**2
            assert torch.allclose(value, torch.full_like(value, expected), atol=1e-4, rtol=1e-5), (n, i)
    t = torch.rand(64) * 0.999 + 0.001
    theta = flow.flow_sample(x, t)
    assert loss.cts_time_loss(x, oracle(flow.params_to_net_inputs(theta), t), theta, t).abs().max() < 1e-3


def test_every_loss_is_non_negative():
    torch.manual_seed(0)
    cases = [
        (BFN(MLP((3,), 1, 1, hidden=32), ContinuousLoss(ContinuousBayesianFlow(0.01))), torch.rand(32, 3) * 2 - 1),
        (BFN(MLP((3,), 1, 2, hidden=32), DiscretisedLoss(ContinuousBayesianFlow(0.01), 16)), bin_centres(16)[torch.randint(0, 16, (32, 3))]),
        (BFN(MLP((3,), 5, 5, hidden=32), DiscreteLoss(DiscreteBayesianFlow(5, 2.0))), torch.randint(0, 5, (32, 3))),
        (BFN(MLP((3,), 1, 1, hidden=32), DiscreteLoss(DiscreteBayesianFlow(2, 4.0))), torch.randint(0, 2, (32, 3))),
    ]
    for bfn, x in cases:
        for p in bfn.parameters():  # a random, wrong network
            torch.nn.init.normal_(p, std=0.5)
        for n in (None, 1, 10, 1000):
            values = bfn.loss(x.repeat(50, *([1] * (x.dim() - 1))), n, n_mc=3).detach()
            if n is None or isinstance(bfn.loss_fn, ContinuousLoss):  # closed forms: every draw >= 0
                assert (values >= -1e-5).all(), (type(bfn.loss_fn).__name__, n)
            else:  # Monte Carlo estimates of a KL: single draws may dip below 0, their mean may not
                mean, se = mc_mean_se(values)
                assert mean > -3 * se, (type(bfn.loss_fn).__name__, n, mean, se)
        if not isinstance(bfn.loss_fn, ContinuousLoss):  # a density can exceed 1; probabilities cannot
            assert (bfn.reconstruction_loss(x) >= 0).all()


@pytest.mark.parametrize("k", [2, 16, 256])
def test_discretised_bin_probabilities_sum_to_one(k):
    torch.manual_seed(0)
    mu = torch.randn(1000) * 1.5
    sigma = torch.rand(1000) * 2 + 1e-3
    dist = DiscretisedNormal(mu, sigma, k)
    probs = dist.probs
    assert torch.allclose(probs.sum(-1), torch.ones(1000), atol=1e-5)
    assert (probs >= -1e-7).all()
    # log_prob of a single bin agrees with the full table where the table is above the guard
    idx = torch.randint(0, k, (1000,))
    x = bin_centres(k)[idx]
    table = probs.gather(-1, idx[:, None])[:, 0]
    ok = table > 1e-4
    assert torch.allclose(dist.log_prob(x)[ok], table[ok].log(), atol=1e-3)
    # mean over bins equals sum_k p_k c_k
    assert torch.allclose(dist.mean, (probs * bin_centres(k)).sum(-1), atol=1e-4)
    # the edge bins take the tails: far-out means put all mass on the end bins
    far = DiscretisedNormal(torch.tensor([-50.0, 50.0]), torch.tensor([1.0, 1.0]), k).probs
    assert far[0, 0] == pytest.approx(1.0) and far[1, -1] == pytest.approx(1.0)


@pytest.mark.parametrize("kind, kwargs, cin, cout", [
    ("continuous", dict(sigma_1=0.01), 1, 1), ("discretised", dict(sigma_1=0.01, num_classes=16), 1, 2),
    ("discrete", dict(beta_1=3.0, num_classes=2), 1, 1), ("discrete", dict(beta_1=3.0, num_classes=5), 5, 5),
])
def test_make_bfn_builds_the_network_the_flow_and_factory_ask_for(kind, kwargs, cin, cout):
    from bfn_core import make_bfn

    bfn = make_bfn(kind, (6,), hidden=8, depth=1, **kwargs)
    assert (bfn.flow.net_in_channels, bfn.loss_fn.factory.net_out_channels) == (cin, cout)
    x = torch.randint(0, kwargs.get("num_classes", 2), (3, 6)) if kind == "discrete" else torch.zeros(3, 6)
    theta = bfn.flow.flow_sample(x, torch.full((3,), 0.5))
    assert bfn.net_output(theta, torch.full((3,), 0.5)).shape == (3, 6, cout)
    if kind == "discrete":
        assert bfn.output_distribution(theta, torch.full((3,), 0.5)).probs.shape == (3, 6, kwargs["num_classes"])
