"""BFN-Solvers and the paper's sampler against Bayes-optimal output distributions known in closed form.

With p_O the exact posterior of a known data distribution, a sampler's only errors are its own: the
discretisation of the time grid and the start of the grid. Measured here (CPU, float32):
- Gaussian data N(0.2, 0.15^2), sigma_1 = 0.001, 'logsnr' grid, error of mu at t = 1 against the exact ODE
  flow map: ode1 4.9e-2 / 2.6e-2 / 1.4e-2 / 7.3e-3 / 3.7e-3 at NFE 5/10/20/40/80 (slope 0.98), ode2
  9.3e-3 / 4.5e-3 / 1.7e-3 / 4.7e-4 / 1.2e-4 (slope 1.98).
- Discrete data pi = (0.5, 0.3, 0.2), beta_1 = 4, 'solver' grid, error of ln theta at t = 1 against a
  4000-step reference: ode1 halves with each doubling (slope 1.00), ode2 quarters (slope 2.0).
- Two points -0.5 / 0.5 weighted 0.7 / 0.3, sigma_1 = 0.01, share on the right at NFE 10/20/50/200:
  bfn (uniform) 0.254 / 0.278 / 0.288 / 0.294; ode2 (logsnr) 0.294 / 0.297 / 0.299 / 0.299.
"""
import pytest
import torch

from bfn_core import SAMPLERS, TIME_GRIDS, ContinuousBayesianFlow, DiscreteBayesianFlow
from bfn_core.distributions import CategoricalOutput, DeltaDistribution, DiscretisedNormal


def _gammas(flow, t, like):
    tt = t.double().clamp_min(1e-6).reshape(-1, *([1] * (like.dim() - 1)))
    return flow.gamma(tt), flow.one_minus_gamma(tt)


def points_output(points, weights, flow):
    """p_O for data on a few points: a point mass at E[x | mu, t], mu ~ N(gamma c_j, gamma (1 - gamma))."""
    pts, log_w = torch.tensor(points, dtype=torch.float64), torch.tensor(weights, dtype=torch.float64).log()

    def output_fn(theta, t):
        mu = theta[0].double()
        g, s = _gammas(flow, t, mu)
        logits = log_w - (mu[..., None] - g[..., None] * pts) ** 2 / (2 * g * s)[..., None]
        return DeltaDistribution((torch.softmax(logits, -1) * pts).sum(-1).to(theta[0].dtype))
    return output_fn


def gaussian_output(m, v, flow):
    """p_O for data N(m, v): a point mass at the posterior mean (m / v + mu / (1 - gamma)) / (1 / v + gamma / (1 - gamma))."""
    def output_fn(theta, t):
        mu = theta[0].double()
        g, s = _gammas(flow, t, mu)
        return DeltaDistribution(((m / v + mu / s) / (1 / v + g / s)).to(theta[0].dtype))
    return output_fn


def categorical_output(pi):
    """p_O for i.i.d. classes with probabilities pi: p(k | theta) proportional to pi_k theta_k (oracles.CategoricalOracle)."""
    log_pi = torch.tensor(pi).log()
    return lambda theta, t: CategoricalOutput(log_pi + theta[0].clamp_min(1e-30).log())


def _run(name, output_fn, flow, shape, nfe, grid=None, seed=0, **options):
    fn = SAMPLERS[name]
    times = TIME_GRIDS[grid or getattr(fn, "time_grid", "uniform")](nfe, flow)
    return fn(output_fn, flow, shape, times, generator=torch.Generator().manual_seed(seed), **options)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_point_mass_is_recovered_by_every_sampler(name):
    flow = ContinuousBayesianFlow(0.001)
    x = _run(name, lambda theta, t: DeltaDistribution(torch.full_like(theta[0], 0.3)), flow, (64, 3), 4)
    assert (x - 0.3).abs().max() < 1e-6
    centre = (2 * 11 + 1) / 16 - 1
    disc = lambda theta, t: DiscretisedNormal(torch.full_like(theta[0], centre), torch.full_like(theta[0], 1e-3), 16)  # noqa: E731
    assert (_run(name, disc, flow, (64, 3), 4) == centre).all()
    k = _run(name, categorical_output([0.0, 0.0, 1.0, 0.0]), DiscreteBayesianFlow(4, 2.0), (64, 5), 4)
    assert (k == 2).all()


@pytest.mark.parametrize("name,nfe", [("bfn", 200), ("ode1", 50), ("ode2", 20), ("sde1", 100), ("sde2", 50)])
def test_two_points_come_out_with_their_weights(name, nfe):
    flow = ContinuousBayesianFlow(0.01)
    x = _run(name, points_output([-0.5, 0.5], [0.7, 0.3], flow), flow, (8000, 1), nfe)
    near = (x - torch.tensor([-0.5, 0.5])).abs().min(-1).values
    assert (near < 0.02).float().mean() > 0.99
    right = float((x > 0).float().mean())
    assert abs(right - 0.3) < 0.015, right  # 3 standard errors (0.005) plus the sampler's bias at this NFE


@pytest.mark.parametrize("name,nfe", [("bfn", 50), ("ode1", 20), ("ode2", 10), ("sde1", 20), ("sde2", 10)])
def test_discrete_classes_come_out_with_their_frequencies(name, nfe):
    pi = torch.tensor([0.5, 0.3, 0.2])
    x = _run(name, categorical_output(pi.tolist()), DiscreteBayesianFlow(3, 4.0), (4000, 2), nfe)
    freq = torch.bincount(x.flatten(), minlength=3).float() / x.numel()
    se = (pi * (1 - pi) / x.numel()).sqrt()
    assert ((freq - pi).abs() < 4 * se + 0.01).all(), freq


def _slope(nfes, errs):
    """Least-squares slope of -log2(error) against log2(NFE): the observed order of convergence."""
    lx, ly = torch.tensor(nfes).double().log2(), -torch.tensor(errs).double().log2()
    lx = lx - lx.mean()
    return float((lx * (ly - ly.mean())).sum() / (lx * lx).sum())


def test_second_order_ode_converges_faster_on_gaussian_data():
    flow, m, v = ContinuousBayesianFlow(0.001), 0.2, 0.15 ** 2
    fn, nfes, errs = gaussian_output(m, v, flow), [10, 20, 40, 80], {}

    def sd(t):  # the marginal std of mu; the exact ODE flow map keeps (mu - gamma m) / sd fixed
        g = flow.gamma(torch.tensor(t, dtype=torch.float64))
        return float((g * g * v + g * (1 - g)).sqrt()), float(g)

    for name in ("ode1", "ode2"):
        errs[name] = []
        for n in nfes:
            times = TIME_GRIDS["logsnr"](n, flow)
            _, traj = SAMPLERS[name](fn, flow, (2000,), times, generator=torch.Generator().manual_seed(1), return_trajectory=True)
            (s0, g0), (s1, g1) = sd(float(times[0])), sd(1.0)
            exact = g1 * m + (traj[0][0].double() - g0 * m) * s1 / s0
            errs[name].append(float((traj[-1][0].double() - exact).abs().mean()))
    p1, p2 = _slope(nfes, errs["ode1"]), _slope(nfes, errs["ode2"])
    assert 0.8 < p1 < 1.2 and p2 > 1.5, (p1, p2, errs)
    assert all(e2 < e1 / 2 for e1, e2 in zip(errs["ode1"], errs["ode2"])), errs


def test_second_order_ode_converges_faster_on_discrete_data():
    flow, fn = DiscreteBayesianFlow(3, 4.0), categorical_output([0.5, 0.3, 0.2])

    def final_log_theta(name, n):
        _, traj = _run(name, fn, flow, (500, 2), n, grid="solver", seed=1, return_trajectory=True)
        return traj[-1][0].double().log()

    ref, nfes = final_log_theta("ode2", 2000), [10, 20, 40]
    errs = {name: [float((final_log_theta(name, n) - ref).abs().mean()) for n in nfes] for name in ("ode1", "ode2")}
    p1, p2 = _slope(nfes, errs["ode1"]), _slope(nfes, errs["ode2"])
    assert 0.8 < p1 < 1.2 and 1.7 < p2 < 2.3, (p1, p2, errs)


def test_ode_solvers_draw_only_the_start_and_sde_solvers_draw_every_step():
    flow = ContinuousBayesianFlow(0.01)
    fn = points_output([-0.5, 0.5], [0.5, 0.5], flow)
    times = TIME_GRIDS["logsnr"](8, flow)
    for name in ("ode1", "ode2"):
        g, g_start = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
        SAMPLERS[name](fn, flow, (16, 2), times, generator=g, final="mode")
        torch.randn((16, 2), generator=g_start)
        assert torch.equal(g.get_state(), g_start.get_state()), name
    a = SAMPLERS["sde2"](fn, flow, (512, 1), times, generator=torch.Generator().manual_seed(0), final="mode")
    b = SAMPLERS["sde2"](fn, flow, (512, 1), times, generator=torch.Generator().manual_seed(1), final="mode")
    assert not torch.equal(a, b) and torch.isfinite(a).all()
