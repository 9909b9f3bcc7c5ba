"""The fused discretised kernels equal the plain K-wide formulas, in value and in gradient."""
import pytest
import torch

from bfn_core import DiscretisedNormal, bin_centres
from bfn_core.discretised_ops import binned_mean, receiver_nll


def _params(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = (torch.randn(n, generator=g, dtype=torch.float64) * 1.2).requires_grad_()
    # sigmas from very sharp (guarded bins) to very wide
    sigma = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(-7, 2, generator=g)).requires_grad_()
    return mu, sigma


def _plain_receiver_nll(mu, sigma, x, ys, alpha, k):
    log_p = DiscretisedNormal(mu, sigma, k).log_probs()
    c = bin_centres(k, dtype=mu.dtype)
    total = 0
    for y in ys:
        # full Gaussian log-densities, no algebraic shortcuts
        log_ps = -0.5 * alpha * (y - x) ** 2
        log_pr = torch.logsumexp(log_p - 0.5 * alpha[:, None] * (y[:, None] - c) ** 2, -1)
        total = total + (log_ps - log_pr)
    return total / len(ys)


@pytest.mark.parametrize("k", [2, 16, 256])
def test_binned_mean_matches_plain_sum(k):
    mu, sigma = _params(3000)
    fused = binned_mean(mu, sigma, k)
    plain = (DiscretisedNormal(mu, sigma, k).probs * bin_centres(k, dtype=mu.dtype)).sum(-1)
    assert torch.allclose(fused, plain, atol=1e-10)
    w = torch.randn(3000, dtype=torch.float64)
    g_fused = torch.autograd.grad((fused * w).sum(), (mu, sigma))
    g_plain = torch.autograd.grad((plain * w).sum(), (mu, sigma))
    for a, b in zip(g_fused, g_plain):
        assert torch.allclose(a, b, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("k", [2, 16, 256])
def test_receiver_nll_matches_plain_mixture(k):
    mu, sigma = _params(2000, seed=1)
    g = torch.Generator().manual_seed(2)
    x = bin_centres(k, dtype=torch.float64)[torch.randint(0, k, (2000,), generator=g)]
    alpha = torch.exp(torch.empty(2000, dtype=torch.float64).uniform_(-2, 9, generator=g))
    ys = torch.stack([x + torch.randn(2000, generator=g, dtype=torch.float64) / alpha.sqrt() for _ in range(3)])
    fused = receiver_nll(mu, sigma, x, ys, alpha, k)
    plain = _plain_receiver_nll(mu, sigma, x, ys, alpha, k)
    assert torch.allclose(fused, plain, atol=1e-7, rtol=1e-7)
    w = torch.randn(2000, dtype=torch.float64)
    g_fused = torch.autograd.grad((fused * w).sum(), (mu, sigma))
    g_plain = torch.autograd.grad((plain * w).sum(), (mu, sigma))
    for a, b in zip(g_fused, g_plain):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_kernels_skip_gradient_work_without_grad():
    mu, sigma = torch.zeros(10), torch.ones(10)
    out = receiver_nll(mu, sigma, torch.zeros(10), torch.zeros(1, 10), torch.ones(10), 16)
    assert not out.requires_grad and out.shape == (10,)
