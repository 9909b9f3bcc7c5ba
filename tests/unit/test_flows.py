"""Flows: schedule identities and the flow distribution against sequential Bayesian updates."""
import math

import pytest
import torch

from bfn_core import ContinuousBayesianFlow, DiscreteBayesianFlow


@pytest.mark.parametrize("n", [1, 7, 100, 1000])
def test_continuous_schedule_identities(n):
    flow = ContinuousBayesianFlow(0.001)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    assert float(flow.alpha_i(i, n).sum()) == pytest.approx(float(flow.beta(torch.tensor(1.0, dtype=torch.float64))), rel=1e-9)
    assert float(flow.beta(torch.tensor(0.0))) == 0.0
    assert float(flow.gamma(torch.tensor(0.0))) == 0.0
    assert float(flow.beta(torch.tensor(1.0, dtype=torch.float64))) == pytest.approx(0.001**-2 - 1)
    # alpha(t) is the derivative of beta(t)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    h = 1e-6
    assert torch.allclose((flow.beta(t + h) - flow.beta(t - h)) / (2 * h), flow.alpha(t), rtol=1e-5)
    # gamma = beta / (1 + beta)
    assert torch.allclose(flow.gamma(t), flow.beta(t) / (1 + flow.beta(t)))


@pytest.mark.parametrize("n", [1, 10, 1000])
def test_discrete_schedule_identities(n):
    flow = DiscreteBayesianFlow(27, 0.75**2)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    assert float(flow.alpha_i(i, n).sum()) == pytest.approx(0.5625, rel=1e-12)
    assert float(flow.beta(torch.tensor(0.0))) == 0.0
    t = torch.tensor([0.2, 0.7], dtype=torch.float64)
    assert torch.allclose((flow.beta(t + 1e-6) - flow.beta(t - 1e-6)) / 2e-6, flow.alpha(t), rtol=1e-6)


def _two_sample_close(a: torch.Tensor, b: torch.Tensor, z: float = 5.0):
    """Means and variances of a and b (draws along dim 0) agree within z standard errors."""
    n, m = a.shape[0], b.shape[0]
    se_mean = (a.var(0) / n + b.var(0) / m).sqrt()
    assert ((a.mean(0) - b.mean(0)).abs() <= z * se_mean + 1e-12).all(), (a.mean(0), b.mean(0), se_mean)
    # Standard error of a sample variance, estimated without assuming Gaussian draws.
    sq_a, sq_b = (a - a.mean(0)) ** 2, (b - b.mean(0)) ** 2
    se_var = (sq_a.var(0) / n + sq_b.var(0) / m).sqrt()
    assert ((a.var(0) - b.var(0)).abs() <= z * se_var + 1e-12).all(), (a.var(0), b.var(0), se_var)


def test_continuous_flow_matches_sequential_updates():
    torch.manual_seed(0)
    flow = ContinuousBayesianFlow(0.1)
    x = torch.tensor([-0.8, 0.0, 0.3, 1.0], dtype=torch.float64)
    draws, n = 20000, 30
    xs = x.expand(draws, -1).clone()
    theta = flow.prior(xs.shape)
    theta = (theta[0].double(), theta[1].double())
    for i in range(1, n + 1):
        alpha = torch.tensor(flow.alpha_i(float(i), n), dtype=torch.float64)
        theta = flow.update(theta, flow.sender_sample(xs, alpha), alpha)
    mu_seq, rho_seq = theta
    # Precision is deterministic: rho_n = 1 + beta(1) = sigma_1^-2.
    assert torch.allclose(rho_seq, torch.full_like(rho_seq, 0.1**-2), rtol=1e-9)
    mu_flow, rho_flow = flow.flow_sample(xs, torch.ones(draws, dtype=torch.float64))
    assert torch.allclose(rho_flow, torch.full_like(rho_flow, 0.1**-2), rtol=1e-6)
    _two_sample_close(mu_seq, mu_flow)
    # and both match the closed form N(gamma x, gamma (1 - gamma)).
    g = flow.gamma(torch.tensor(1.0, dtype=torch.float64))
    se = math.sqrt(float(g * (1 - g)) / draws)
    assert torch.allclose(mu_seq.mean(0), g * x, atol=5 * se)


@pytest.mark.parametrize("k,beta_1", [(2, 3.0), (5, 1.5)])
def test_discrete_flow_matches_sequential_updates(k, beta_1):
    torch.manual_seed(1)
    flow = DiscreteBayesianFlow(k, beta_1)
    x = torch.arange(3) % k
    draws, n = 20000, 25
    xs = x.expand(draws, -1).clone()
    (theta,) = flow.prior(xs.shape)
    theta = theta.double()
    for i in range(1, n + 1):
        alpha = flow.alpha_i(float(i), n)
        y = flow.sender_sample(xs, torch.tensor(alpha)).double()
        (theta,) = flow.update((theta,), y, alpha)
    (theta_flow,) = flow.flow_sample(xs, torch.ones(draws))
    assert torch.allclose(theta.sum(-1), torch.ones(draws, 3, dtype=torch.float64))
    _two_sample_close(theta.reshape(draws, -1).float(), theta_flow.reshape(draws, -1))
    # Bayesian updates concentrate the mass on the true class.
    assert (theta_flow.gather(-1, xs.unsqueeze(-1)).mean() > 1.0 / k)


def test_flow_at_time_zero_is_the_prior():
    flow = DiscreteBayesianFlow(4, 2.0)
    (theta,) = flow.flow_sample(torch.tensor([[0, 3]]), torch.zeros(1))
    assert torch.allclose(theta, torch.full_like(theta, 0.25))
    cflow = ContinuousBayesianFlow(0.01)
    mu, rho = cflow.flow_sample(torch.tensor([[0.5, -0.5]]), torch.zeros(1))
    assert torch.equal(mu, torch.zeros_like(mu)) and torch.equal(rho, torch.ones_like(rho))


@pytest.mark.parametrize("flow, channels", [
    (ContinuousBayesianFlow(0.01), 1), (DiscreteBayesianFlow(2, 3.0), 1), (DiscreteBayesianFlow(5, 3.0), 5),
])
def test_network_inputs_have_net_in_channels(flow, channels):
    """The flow says how many numbers per dimension it feeds the network; for K = 2, 2 p_1 - 1 alone."""
    theta = flow.flow_sample(torch.zeros(3, 4, dtype=torch.long) if isinstance(flow, DiscreteBayesianFlow)
                             else torch.zeros(3, 4), torch.full((3,), 0.5), torch.Generator().manual_seed(0))
    assert flow.net_in_channels == channels
    net_in = flow.params_to_net_inputs(theta)
    assert net_in.shape == (3, 4, channels)
    if isinstance(flow, DiscreteBayesianFlow) and flow.K == 2:
        assert torch.equal(net_in[..., 0], 2 * theta[0][..., 1] - 1)
