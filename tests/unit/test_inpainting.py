"""Inpainting (bfn_core/inpainting.py): known coordinates follow p_F(theta | x_obs; t) at every step of every
sampler, the result equals x_obs on the mask, and the unknown coordinates follow the known ones."""
import pytest
import torch
from torch import nn

from bfn_core import (
    BFN,
    SAMPLERS,
    BfnError,
    ContinuousBayesianFlow,
    ContinuousLoss,
    DiscreteBayesianFlow,
    DiscreteLoss,
    DiscretisedLoss,
    bin_centres,
    make_bfn,
)
from bfn_core.networks import MLP, Transformer

# Four components with distinct x- and y-coordinates: the first coordinate says which one, hence the second.
CENTRES = torch.tensor([[-0.6, 0.6], [-0.2, -0.6], [0.2, 0.2], [0.6, -0.2]])
STD = 0.05


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def gen(seed):
    return torch.Generator().manual_seed(seed)


def component(samples):
    return (samples[:, None, :] - CENTRES).norm(dim=-1).argmin(-1)


class JointPointsOracle(nn.Module):
    """Bayes-optimal noise prediction for data drawn uniformly from a few points in R^D (joint over dimensions)."""

    def __init__(self, points, flow):
        super().__init__()
        self.register_buffer("points", points.double())
        self.flow = flow
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, net_in, t):
        mu = net_in[..., 0].double()
        tc = t.double().clamp_min(1e-6)[:, None]
        gamma, rest = self.flow.gamma(tc), self.flow.one_minus_gamma(tc)
        logits = -((mu[:, None, :] - gamma[:, None] * self.points) ** 2).sum(-1) / (2 * gamma * rest)
        x_hat = torch.softmax(logits, -1) @ self.points
        return ((mu / gamma - x_hat) / (rest / gamma).sqrt()).float().unsqueeze(-1)


def _random_models():
    torch.manual_seed(0)
    flow = ContinuousBayesianFlow(0.02)
    models = [
        (BFN(MLP((3,), 1, 1, hidden=16, depth=1), ContinuousLoss(flow)), torch.rand(5, 3) * 2 - 1),
        (BFN(MLP((4,), 1, 2, hidden=16, depth=1), DiscretisedLoss(flow, 16)), bin_centres(16)[torch.randint(0, 16, (5, 4))]),
        (BFN(Transformer(6, 5, 5, width=16, depth=1), DiscreteLoss(DiscreteBayesianFlow(5, 2.0))), torch.randint(0, 5, (5, 6))),
        (BFN(MLP((4,), 1, 1, hidden=16, depth=1), DiscreteLoss(DiscreteBayesianFlow(2, 3.0))), torch.randint(0, 2, (5, 4))),
    ]
    for bfn, _ in models:
        for p in bfn.parameters():
            nn.init.normal_(p, std=0.3)
    return models


def test_observed_coordinates_are_returned_exactly_for_every_data_kind_and_sampler():
    for bfn, x in _random_models():
        mask = torch.rand(x.shape, generator=gen(1)) < 0.5
        mask[:, 0] = True  # a known prefix (for text, the first characters)
        for sampler in SAMPLERS:
            for final in ("sample", "mode"):
                s, traj = bfn.sample(x.shape, 6, sampler=sampler, observed=x, mask=mask, final=final, generator=gen(2),
                                     return_trajectory=True)
                assert s.shape == x.shape and s.dtype == x.dtype
                assert torch.equal(s[mask], x[mask]), (type(bfn.loss_fn).__name__, sampler, final)
                assert len(traj) == 7
        # without observed and mask, the same call is plain sampling (no extra draws)
        assert torch.equal(bfn.sample(x.shape, 4, generator=gen(3)), bfn.sample(x.shape, 4, generator=gen(3), observed=None))


def test_known_coordinates_follow_the_bayesian_flow():
    """The known state at each t is a draw from p_F(. | x_obs; t): mean gamma x, std sqrt(gamma (1 - gamma))."""
    flow = ContinuousBayesianFlow(0.02)
    bfn = BFN(MLP((2,), 1, 1, hidden=8, depth=1), ContinuousLoss(flow))
    x = torch.tensor([0.5, 0.0]).expand(4000, 2)
    mask = torch.tensor([True, False]).expand(4000, 2)
    _, traj = bfn.sample((4000, 2), 4, observed=x, mask=mask, generator=gen(0), return_trajectory=True)
    for i, theta in enumerate(traj):
        t = torch.tensor(i / 4)
        mu = theta[0][:, 0]
        gamma = flow.gamma(t)
        assert abs(float(mu.mean()) - 0.5 * float(gamma)) < 0.01
        assert abs(float(mu.std()) - float((gamma * (1 - gamma)).sqrt())) < 0.01


def test_discrete_known_logits_follow_the_bayesian_flow():
    flow = DiscreteBayesianFlow(3, 4.0)
    bfn = BFN(MLP((2,), 3, 3, hidden=8, depth=1), DiscreteLoss(flow))
    x = torch.tensor([2, 0]).expand(4000, 2)
    mask = torch.tensor([True, False]).expand(4000, 2)
    _, traj = bfn.sample((4000, 2), 4, sampler="bfn", observed=x, mask=mask, generator=gen(0), return_trajectory=True)
    for i, (probs,) in enumerate(traj[1:], start=1):
        beta = 4.0 * (i / 4) ** 2
        y = probs[:, 0].log()  # softmax(y) = theta: logits up to a per-row constant
        y = y - y.mean(-1, keepdim=True)  # the mean of beta (K e_x - 1) over classes is 0
        want = beta * (3 * torch.nn.functional.one_hot(torch.tensor(2), 3) - 1.0)
        assert torch.allclose(y.mean(0), want - want.mean(), atol=0.1)


def test_inpainted_coordinate_follows_the_observed_one_with_the_exact_posterior():
    """The Bayes-optimal network: the inpainted coordinate lands in the component the observed one names.

    Replacement (RePaint without resampling) reveals the known coordinate only at the flow's own pace, so even the
    exact posterior reaches ~0.73 here (measured with every sampler), against 0.25 by chance.
    """
    flow = ContinuousBayesianFlow(0.02)
    bfn = BFN(JointPointsOracle(CENTRES, flow), ContinuousLoss(flow))
    n = 2000
    c = torch.arange(n) % 4
    x, mask = CENTRES[c], torch.tensor([True, False]).expand(n, 2)
    for sampler, steps in (("bfn", 20), ("ode2", 10), ("sde2", 10)):
        s = bfn.sample((n, 2), steps, sampler=sampler, observed=x, mask=mask, generator=gen(2))
        rate = float((component(s) == c).float().mean())
        print(f"\n{sampler}: inpainted component rate {rate:.3f}")
        assert rate > 0.65


def test_inpainting_a_trained_mixture_model():
    torch.manual_seed(0)
    bfn = make_bfn("continuous", (2,), sigma_1=0.02, hidden=64, depth=2, time_dim=16)
    opt = torch.optim.Adam(bfn.parameters(), lr=3e-3)
    g = gen(0)
    for _ in range(300):
        c = torch.randint(0, 4, (256,), generator=g)
        loss = bfn.loss((CENTRES[c] + STD * torch.randn(256, 2, generator=g)).clamp(-1, 1), generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    bfn.eval()
    n = 1000
    c = torch.arange(n) % 4
    x = CENTRES[c] + STD * torch.randn(n, 2, generator=gen(5))
    x[:, 1] = float("nan")  # unknown entries may hold anything
    mask = torch.tensor([True, False]).expand(n, 2)
    for sampler, steps in (("bfn", 20), ("ode2", 10), ("sde2", 10)):
        s = bfn.sample((n, 2), steps, sampler=sampler, observed=x, mask=mask, generator=gen(2))
        assert torch.equal(s[:, 0], x[:, 0]) and torch.isfinite(s).all()
        rate = float((component(s) == c).float().mean())
        print(f"\n{sampler}: inpainted component rate {rate:.3f} (chance 0.25)")
        assert rate > 0.5


def test_inpainting_text_keeps_the_prefix_and_continues_it():
    """Tokens: each sequence repeats one of K symbols (each position flipped with probability 0.15); given a
    prefix of two equal symbols, the rest continues with that symbol far more often than chance (1/K)."""
    torch.manual_seed(0)
    k, length = 3, 4
    bfn = make_bfn("discrete", (length,), num_classes=k, beta_1=3.0, hidden=64, depth=2, time_dim=16)
    opt = torch.optim.Adam(bfn.parameters(), lr=3e-3)
    g = gen(0)
    for _ in range(300):
        c = torch.randint(0, k, (256,), generator=g)
        other = (c[:, None] + torch.randint(1, k, (256, length), generator=g)) % k
        x = torch.where(torch.rand(256, length, generator=g) < 0.85, c[:, None], other)
        loss = bfn.loss(x, generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    bfn.eval()
    n = 1500
    c = torch.arange(n) % k
    observed = c[:, None].expand(n, length)
    mask = torch.zeros(n, length, dtype=torch.bool)
    mask[:, :2] = True
    for sampler, steps in (("bfn", 20), ("sde2", 10)):
        s = bfn.sample((n, length), steps, sampler=sampler, observed=observed, mask=mask, generator=gen(2))
        assert torch.equal(s[:, :2], observed[:, :2])
        rate = float((s[:, 2:] == c[:, None]).float().mean())
        print(f"\n{sampler}: continuation rate {rate:.3f} (chance {1 / k:.3f})")
        assert rate > 0.45


def test_inpainting_arguments_are_checked():
    bfn, x = _random_models()[2]
    mask = torch.zeros(x.shape, dtype=torch.bool)
    with pytest.raises(BfnError, match="both"):
        bfn.sample(x.shape, 3, observed=x)
    with pytest.raises(BfnError, match="bool"):
        bfn.sample(x.shape, 3, observed=x, mask=mask.long())
    with pytest.raises(BfnError, match="shape"):
        bfn.sample(x.shape, 3, observed=x[:, :3], mask=mask)
    bad = x.clone()
    bad[0, 0] = 7
    mask[0, 0] = True
    with pytest.raises(BfnError, match="class index"):
        bfn.sample(x.shape, 3, observed=bad, mask=mask)
    mask[0, 0] = False  # an invalid value where the mask is False is not data: ignored
    assert bfn.sample(x.shape, 3, observed=bad, mask=mask).shape == x.shape
    # one observation and one mask broadcast over the batch
    s = bfn.sample(x.shape, 3, observed=x[0], mask=torch.tensor([True, True, False, False, False, False]))
    assert torch.equal(s[:, :2], x[0, :2].expand(x.shape[0], 2))


@pytest.mark.parametrize("flow, x", [
    (ContinuousBayesianFlow(0.02), torch.tensor([-0.7, 0.1, 0.9])),
    (ContinuousBayesianFlow(1e-3), torch.tensor([0.5, -1.0, 1.0])),
    (DiscreteBayesianFlow(4, 3.0), torch.tensor([0, 2, 3])),
])
def test_the_step_back_keeps_the_bayesian_flow(flow, x):
    """path.back(state_t, t, s) of a state drawn from p_F(. | x; t) is distributed as p_F(. | x; s): the bridge
    is exact and needs no x. Checked in float64 against flow_mean_std, t = 1 and s = 0 included."""
    from bfn_core.solvers import path_for

    n = 200_000
    data = x.repeat(n // len(x))
    discrete = isinstance(flow, DiscreteBayesianFlow)
    data = data if discrete else data.double()
    path = path_for(flow, tuple(data.shape), None)
    for t, s in ((0.7, 0.3), (1.0, 0.5), (0.4, 0.0), (0.05, 0.01)):
        mean_t, std_t = flow.flow_mean_std(data, torch.full((len(data),), t, dtype=torch.float64))
        state = mean_t + std_t * torch.randn(mean_t.shape, dtype=torch.float64, generator=gen(1))
        back = path.back(state, t, s, gen(2))
        mean_s, std_s = flow.flow_mean_std(data, torch.full((len(data),), s, dtype=torch.float64))
        mean_s, std_s = mean_s.expand_as(back), std_s.expand_as(back)
        for i in range(len(x)):
            rows = slice(i, None, len(x))
            got_mean, got_std = back[rows].mean(0), back[rows].std(0)
            tol = 5 * std_s[rows][0] / n ** 0.5 * len(x) ** 0.5 + 1e-12
            assert torch.allclose(got_mean, mean_s[rows][0], atol=float(tol.max())), (t, s, i)
            assert torch.allclose(got_std, std_s[rows][0], rtol=0.02, atol=1e-12), (t, s, i)


def test_resampling_lets_the_unknown_coordinates_catch_up():
    """RePaint's resampling (integrate's resample): the exact-posterior network's inpainted coordinate follows the
    observed one more often with more tries per step (0.73 -> 0.82 at R = 10, bfn at 20 steps), observed
    values still exact; resample=1 is the plain sampler, draw for draw."""
    flow = ContinuousBayesianFlow(0.02)
    bfn = BFN(JointPointsOracle(CENTRES, flow), ContinuousLoss(flow))
    n = 2000
    c = torch.arange(n) % 4
    x, mask = CENTRES[c], torch.tensor([True, False]).expand(n, 2)
    rates = {}
    for r in (1, 10):
        s = bfn.sample((n, 2), 20, observed=x, mask=mask, generator=gen(2), resample=r)
        assert torch.equal(s[:, 0], x[:, 0])
        rates[r] = float((component(s) == c).float().mean())
    print(f"\ninpainted component rate by resample: {rates}")
    assert rates[10] > rates[1] + 0.05
    plain = bfn.sample((n, 2), 20, observed=x, mask=mask, generator=gen(2))
    assert torch.equal(plain, bfn.sample((n, 2), 20, observed=x, mask=mask, generator=gen(2), resample=1))
    calls = []
    bfn.net.register_forward_pre_hook(lambda *a: calls.append(1))
    bfn.sample((4, 2), 5, sampler="ode2", observed=x[:4], mask=mask[:4], generator=gen(3), resample=3)
    assert len(calls) == 5 * 3 + 1  # every step three times, the final output once
    bfn, data = _random_models()[2]
    with pytest.raises(BfnError, match="resample is for inpainting"):
        bfn.sample(data.shape, 3, resample=2)
    with pytest.raises(BfnError, match="resample must be an int >= 1"):
        bfn.sample(data.shape, 3, observed=data, mask=torch.ones(data.shape, dtype=torch.bool), resample=0)
