"""Samplers: the registry and its API, shapes, reproducibility from a generator, trajectories, oracle samples,
and the O(D) draws from the output distributions."""
import math

import pytest
import torch

from bfn_core import (
    BFN,
    SAMPLERS,
    TIME_GRIDS,
    BfnError,
    ContinuousBayesianFlow,
    ContinuousLoss,
    DiscreteBayesianFlow,
    DiscreteLoss,
    DiscretisedLoss,
    bin_centres,
    get_sampler,
    get_time_grid,
)
from bfn_core.distributions import CategoricalOutput, DeltaDistribution, DiscretisedNormal
from bfn_core.networks import MLP, Transformer, UNet
from oracles import CategoricalOracle, PointsOracle


def _models():
    flow = ContinuousBayesianFlow(0.02)
    return [
        (BFN(MLP((3,), 1, 1, hidden=16, depth=1), ContinuousLoss(flow)), (5, 3)),
        (BFN(UNet((8, 8, 1), 1, 2, width=8, channel_mults=(1, 2), attention_resolutions=(4,)), DiscretisedLoss(flow, 16)), (2, 8, 8, 1)),
        (BFN(Transformer(6, 4, 4, width=16, depth=1), DiscreteLoss(DiscreteBayesianFlow(4, 2.0))), (3, 6)),
        (BFN(MLP((4, 4, 1), 1, 1, hidden=16, depth=1), DiscreteLoss(DiscreteBayesianFlow(2, 3.0))), (3, 4, 4, 1)),
    ]


def test_sampler_shapes_reproducibility_and_trajectory():
    torch.manual_seed(0)
    for bfn, shape in _models():
        for p in bfn.parameters():
            torch.nn.init.normal_(p, std=0.3)
        a = bfn.sample(shape, 7, generator=torch.Generator().manual_seed(5))
        b, traj = bfn.sample(shape, 7, generator=torch.Generator().manual_seed(5), return_trajectory=True)
        _, traj_c = bfn.sample(shape, 7, generator=torch.Generator().manual_seed(6), return_trajectory=True)
        assert a.shape == torch.Size(shape)
        assert torch.equal(a, b)
        assert len(traj) == 8
        assert not torch.equal(traj[0][0], traj[-1][0])
        if isinstance(bfn.loss_fn, DiscreteLoss):
            assert a.dtype == torch.long and a.min() >= 0 and a.max() < bfn.flow.K
        else:
            assert a.min() >= -1 and a.max() <= 1
        # a different seed takes a different path
        assert not torch.equal(traj[-1][0], traj_c[-1][0])


def test_oracle_samples_follow_the_data_distribution():
    """With the exact posterior as the network, samples are draws from the data distribution."""
    torch.manual_seed(0)
    pi = torch.tensor([0.5, 0.3, 0.2])
    bfn = BFN(CategoricalOracle(pi), DiscreteLoss(DiscreteBayesianFlow(3, 4.0)))
    x = bfn.sample((4000, 2), 50, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(x.flatten(), minlength=3).float() / x.numel()
    se = (pi * (1 - pi) / x.numel()).sqrt()
    assert ((freq - pi).abs() < 5 * se + 0.01).all(), freq

    flow = ContinuousBayesianFlow(0.01)
    points, w = torch.tensor([-0.5, 0.5]), torch.tensor([0.7, 0.3])
    cbfn = BFN(PointsOracle(points, w, flow.gamma), ContinuousLoss(flow))
    xs = cbfn.sample((4000, 1), 100, generator=torch.Generator().manual_seed(1))
    near = (xs - points).abs().min(-1).values
    assert (near < 0.05).float().mean() > 0.95
    frac_right = (xs > 0).float().mean()
    assert abs(float(frac_right) - 0.3) < 0.04


def test_every_sampler_runs_the_networks_through_bfn_sample():
    torch.manual_seed(0)
    for bfn, shape in _models():
        for p in bfn.parameters():
            torch.nn.init.normal_(p, std=0.3)
        for name in SAMPLERS:
            a = bfn.sample(shape, 3, generator=torch.Generator().manual_seed(1), sampler=name)
            b = bfn.sample(shape, 3, generator=torch.Generator().manual_seed(1), sampler=name)
            assert a.shape == torch.Size(shape) and torch.equal(a, b), name
            if isinstance(bfn.loss_fn, DiscreteLoss):
                assert a.dtype == torch.long and 0 <= a.min() and a.max() < bfn.flow.K
            else:
                assert torch.isfinite(a).all() and a.abs().max() <= 1


def test_registries_and_unknown_names():
    assert set(SAMPLERS) >= {"bfn", "ode1", "ode2", "sde1", "sde2"}
    assert set(TIME_GRIDS) >= {"uniform", "solver", "logsnr"}
    with pytest.raises(BfnError, match=r"unknown sampler 'dpm'.*'bfn'.*'ode2'"):
        get_sampler("dpm")
    with pytest.raises(BfnError, match=r"unknown time grid 'karras'.*'uniform'"):
        get_time_grid("karras")
    bfn, shape = _models()[0]
    with pytest.raises(BfnError, match=r"unknown sampler"):
        bfn.sample(shape, 2, sampler="nope")
    with pytest.raises(BfnError, match=r"final must be one of"):
        bfn.sample(shape, 2, final="mean")


@pytest.mark.parametrize("flow", [ContinuousBayesianFlow(0.001), DiscreteBayesianFlow(27, 0.5625)])
def test_time_grids_are_increasing_from_their_start_to_one(flow):
    for name, grid in TIME_GRIDS.items():
        t = grid(10, flow)
        assert t.shape == (11,) and t.dtype == torch.float64, name
        assert (t[1:] > t[:-1]).all() and 0 <= float(t[0]) < 0.05 and float(t[-1]) == 1.0, name
    assert float(TIME_GRIDS["uniform"](4, flow)[0]) == 0.0
    assert float(TIME_GRIDS["solver"](4, flow)[0]) == (1e-3 if isinstance(flow, DiscreteBayesianFlow) else 1e-2)


def test_preferred_grid_per_data_family():
    """ode1/ode2: log-SNR spacing for continuous data, the authors' uniform-t grid for discrete; sde1/sde2 and bfn one grid."""
    from bfn_core.samplers import preferred_grid, sampler_times
    disc, cont = DiscreteBayesianFlow(4, 3.0), ContinuousBayesianFlow(0.01)
    assert [preferred_grid(n) for n in ("bfn", "ode1", "ode2", "sde1", "sde2")] == ["uniform", "logsnr", "logsnr", "solver", "solver"]
    assert [preferred_grid(n, disc) for n in ("bfn", "ode1", "ode2", "sde1", "sde2")] == ["uniform"] + ["solver"] * 4
    assert preferred_grid("ode2", cont) == "logsnr"
    assert torch.equal(sampler_times("ode2", 6, disc), TIME_GRIDS["solver"](6, disc))
    assert torch.equal(sampler_times("ode2", 6, cont), TIME_GRIDS["logsnr"](6, cont))
    assert float(TIME_GRIDS["logsnr"](6, cont)[0]) == pytest.approx(1e-2)  # the solver code's eta, not earlier


def test_grid_validation():
    flow = ContinuousBayesianFlow(0.01)
    fn = lambda theta, t: DeltaDistribution(torch.zeros_like(theta[0]))  # noqa: E731
    for bad, msg in [
        (torch.tensor([0.0, 0.5, 0.4, 1.0]), "strictly increasing"),
        (torch.tensor([0.0, 0.5, 0.9]), "end at 1"),
        (torch.tensor([-0.1, 0.5, 1.0]), "start at >= 0"),
        (torch.tensor([1.0]), "at least 2 points"),
        (torch.zeros(2, 2), "1-D"),
        (torch.tensor([0.0, float("nan"), 1.0]), "finite"),
    ]:
        with pytest.raises(BfnError, match=msg):
            SAMPLERS["bfn"](fn, flow, (2, 3), bad)
    # the solvers' ODEs (and the continuous SDE's log-SNR) are singular at t = 0
    for name in ("ode1", "ode2", "sde1", "sde2"):
        with pytest.raises(BfnError, match=rf"{name} is singular at t = 0"):
            SAMPLERS[name](fn, flow, (2, 3), torch.linspace(0, 1, 5))
    # an explicit grid through BFN.sample must match n_steps
    bfn, shape = _models()[0]
    with pytest.raises(BfnError, match=r"n_steps \+ 1 = 4"):
        bfn.sample(shape, 3, grid=torch.linspace(0, 1, 6))
    x = bfn.sample(shape, 3, grid=torch.tensor([0.0, 0.2, 0.7, 1.0]))
    assert x.shape == torch.Size(shape)


def test_callback_gets_the_state_of_every_step():
    flow = DiscreteBayesianFlow(3, 2.0)
    fn = lambda theta, t: CategoricalOutput(theta[0].log())  # noqa: E731
    times = torch.tensor([0.0, 0.25, 0.6, 1.0], dtype=torch.float64)
    for name in SAMPLERS:
        grid = times if name in ("bfn", "sde1", "sde2") else times.clamp_min(0.01)
        seen = []
        SAMPLERS[name](fn, flow, (2, 5), grid, callback=seen.append, generator=torch.Generator().manual_seed(0))
        assert [s["step"] for s in seen] == [1, 2, 3] and all(s["n_steps"] == 3 for s in seen)
        assert [s["t"] for s in seen] == pytest.approx(grid[:-1].tolist())
        assert all(s["theta"][0].shape == (2, 5, 3) and isinstance(s["output"], CategoricalOutput) for s in seen)
        assert torch.allclose(seen[0]["theta"][0].sum(-1), torch.ones(2, 5))
    bfn, shape = _models()[0]
    steps = []
    bfn.sample(shape, 4, callback=lambda state: steps.append((state["step"], state["n_steps"])))
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_final_option_and_drop_last():
    flow = DiscreteBayesianFlow(3, 2.0)
    calls = []

    def fn(theta, t):
        calls.append(float(t[0]))
        return CategoricalOutput(torch.log(torch.tensor([0.2, 0.5, 0.3])).expand(*theta[0].shape))
    g = torch.Generator().manual_seed(0)
    mode = SAMPLERS["bfn"](fn, flow, (4000,), TIME_GRIDS["uniform"](2, flow), final="mode", generator=g)
    assert (mode == 1).all() and calls == [0.0, 0.5, 1.0]
    draw = SAMPLERS["bfn"](fn, flow, (4000,), TIME_GRIDS["uniform"](2, flow), generator=g)  # default: the paper's draw
    assert 0.45 < float((draw == 1).float().mean()) < 0.55 and (draw == 0).any() and (draw == 2).any()
    calls.clear()
    SAMPLERS["ode2"](fn, flow, (3,), TIME_GRIDS["solver"](4, flow), drop_last=True, final="mode")
    assert len(calls) == 4 and calls[-1] < 1.0  # the last output comes from t_{n-1}: n calls, not n + 1


def test_bfn_sampler_on_a_uniform_grid_uses_the_discrete_time_accuracies():
    """alpha_i = beta(t_i) - beta(t_{i-1}) equals the paper's alpha_i (eq. 93 / 181) on t_i = i / n."""
    for flow in (ContinuousBayesianFlow(0.001), DiscreteBayesianFlow(4, 3.0)):
        n, t = 7, TIME_GRIDS["uniform"](7, flow)
        i = torch.arange(1, n + 1, dtype=torch.float64)
        assert torch.allclose(flow.beta(t[1:]) - flow.beta(t[:-1]), flow.alpha_i(i, n), rtol=1e-9)


# --- O(D) draws -------------------------------------------------------------------------------------------

def _chi2(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's statistic over the bins with an expected count of at least 5 (the rest pooled)."""
    n = counts.sum()
    expected = probs.double() * n
    big = expected >= 5
    obs = torch.cat([counts[big].double(), counts[~big].double().sum().reshape(1)])
    exp = torch.cat([expected[big], expected[~big].sum().reshape(1)])
    keep = exp > 0
    return float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()), int(keep.sum()) - 1


def _chi2_limit(df: int) -> float:
    """The chi-square quantile at p = 1e-4 (Wilson-Hilferty): a correct sampler fails with chance 1e-4 per check."""
    z = 3.719
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_discretised_draws_follow_the_bin_probabilities():
    k, n = 16, 40000
    # centred in a bin, on a bin edge, in a tail (edge bins take it), wide, and narrow
    mus = torch.tensor([0.0625, 0.125, -1.1, 0.97, 0.3, -0.4])
    sigmas = torch.tensor([0.2, 0.05, 0.1, 0.3, 1.5, 0.02])
    dist = DiscretisedNormal(mus[:, None].expand(-1, n), sigmas[:, None].expand(-1, n), k)
    draws = dist.sample(torch.Generator().manual_seed(0))
    centres = bin_centres(k)
    assert torch.isin(draws, centres).all()
    idx = ((draws + 1) * k / 2).floor().long()
    exact = DiscretisedNormal(mus, sigmas, k).probs
    for row in range(len(mus)):
        counts = torch.bincount(idx[row], minlength=k)
        stat, df = _chi2(counts, exact[row])
        assert stat < _chi2_limit(df), (row, stat, df)
        # the check has power: the same draws quantised one bin off fail it by far
        shifted = torch.bincount((idx[row] + 1).clamp_max(k - 1), minlength=k)
        if exact[row].max() < 0.999:
            assert _chi2(shifted, exact[row])[0] > 10 * _chi2_limit(df), row


def test_categorical_draws_follow_the_probabilities():
    n = 60000
    gen = torch.Generator().manual_seed(0)
    # K = 2 from one logit (the factory pads a zero logit): a Bernoulli draw
    logit = torch.tensor([-2.0, 0.0, 0.7, 4.0])
    binary = CategoricalOutput(torch.stack([torch.zeros(4), logit], -1)[:, None].expand(-1, n, -1)).sample(gen)
    p1 = torch.sigmoid(logit)
    freq = binary.double().mean(-1)
    assert ((freq - p1).abs() < 4 * (p1 * (1 - p1) / n).sqrt() + 1e-4).all(), (freq, p1)
    # K = 27: Gumbel-max
    logits = torch.randn(27, generator=torch.Generator().manual_seed(3)) * 1.5
    draws = CategoricalOutput(logits.expand(n, 27)).sample(gen)
    probs = torch.softmax(logits, -1)
    stat, df = _chi2(torch.bincount(draws, minlength=27), probs)
    assert stat < _chi2_limit(df), (stat, df)
    assert _chi2(torch.bincount((draws + 1) % 27, minlength=27), probs)[0] > 10 * _chi2_limit(df)
