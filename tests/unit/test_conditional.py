"""Conditional BFNs: class labels in every network, label dropout, the conditional likelihood bound, and
classifier-free guidance in output and parameter space (bfn_core/guidance.py), on tiny models trained here.

Guidance convention under test: w = `guidance`; Psi_w = Psi_y + w (Psi_y - Psi_null); w = 0 is plain
conditional sampling, w = -1 unconditional.
"""
import math

import pytest
import torch

from bfn_core import (
    BFN,
    BfnError,
    BinnedCategorical,
    ContinuousBayesianFlow,
    DiscreteBayesianFlow,
    DiscretisedLoss,
    bin_centres,
    evaluate_likelihood,
    guided_distribution,
    guided_output_fn,
    make_bfn,
    run_sampler,
)
from bfn_core.distributions import CategoricalFactory, DiscretisedNormalFactory, NoisePredictionFactory
from bfn_core.networks import MLP, Transformer, UNet, VDMUNet

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ tiny trained models (once per module)

pytestmark = pytest.mark.usefixtures("one_torch_thread")



# Four classes, one Gaussian each at (+-0.3, +-0.3), std 0.15: they overlap, so even the exact conditional
# puts ~9% of a class's samples nearer another centre (Phi(2)^2 = 0.91); guidance has room to raise the rate.
CENTRES = torch.tensor([[-0.3, -0.3], [0.3, -0.3], [-0.3, 0.3], [0.3, 0.3]])
STD = 0.15
# Tokens: class c writes each of L positions as c with probability 0.85, else one of the other K - 1 tokens.
K_TOK, L_TOK, P_TOK = 3, 4, 0.85


def draw_mixture(n, g):
    c = torch.randint(0, 4, (n,), generator=g)
    return (CENTRES[c] + STD * torch.randn(n, 2, generator=g)).clamp(-1, 1), c


def draw_tokens(n, g):
    c = torch.randint(0, K_TOK, (n,), generator=g)
    other = (c[:, None] + torch.randint(1, K_TOK, (n, L_TOK), generator=g)) % K_TOK
    return torch.where(torch.rand(n, L_TOK, generator=g) < P_TOK, c[:, None], other), c


def train(bfn, draw, steps=300, batch=256, label_dropout=0.2, seed=0):
    opt = torch.optim.Adam(bfn.parameters(), lr=3e-3)
    g = gen(seed)
    for _ in range(steps):
        x, c = draw(batch, g)
        loss = bfn.loss(x, generator=g, y=c, label_dropout=label_dropout).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return bfn.eval()


@pytest.fixture(scope="module")
def mixture_bfn():
    torch.manual_seed(0)
    return train(make_bfn("continuous", (2,), sigma_1=0.02, label_classes=4, hidden=64, depth=2, time_dim=16), draw_mixture)


@pytest.fixture(scope="module")
def token_bfn():
    torch.manual_seed(0)
    bfn = make_bfn("discrete", (L_TOK,), num_classes=K_TOK, beta_1=3.0, label_classes=K_TOK, hidden=64, depth=2, time_dim=16)
    return train(bfn, draw_tokens)


def component_rate(samples, c):
    """Fraction of samples nearest their own class's centre (the Bayes classifier of equal isotropic components)."""
    return float(((samples[:, None, :] - CENTRES).norm(dim=-1).argmin(-1) == c).float().mean())


# ------------------------------------------------------------------ networks

def _nets(num_classes):
    """One of each network, each built from seed 0."""
    builders = [
        (lambda: MLP((3,), 1, 1, hidden=16, depth=1, num_classes=num_classes), (5, 3, 1)),
        (lambda: UNet((8, 8, 1), 1, 2, width=8, channel_mults=(1, 2), attention_resolutions=(4,), num_classes=num_classes),
         (2, 8, 8, 1, 1)),
        (lambda: VDMUNet((4, 4, 1), 1, 2, width=8, n_blocks=1, norm_groups=4, num_classes=num_classes), (2, 4, 4, 1, 1)),
        (lambda: Transformer(6, 4, 4, width=16, depth=1, num_classes=num_classes), (3, 6, 4)),
    ]
    out = []
    for build, shape in builders:
        torch.manual_seed(0)
        out.append((build(), shape))
    return out


def test_unconditional_networks_are_unchanged_and_conditional_ones_add_one_embedding():
    for (plain, shape), (cond, _) in zip(_nets(0), _nets(3)):
        plain.eval(), cond.eval()  # the VDM U-Net has dropout
        name = type(plain).__name__
        plain_sd, cond_sd = plain.state_dict(), cond.state_dict()
        assert plain.num_classes == 0 and cond.num_classes == 3
        assert not any(k.startswith("label") for k in plain_sd), name
        assert set(cond_sd) - set(plain_sd) == {"label.table.weight"}, name
        assert cond_sd["label.table.weight"].shape[0] == 4  # 3 classes + the null class
        # the label embedding is built last: every other weight is drawn exactly as the unconditional net's
        assert all(torch.equal(plain_sd[k], cond_sd[k]) for k in plain_sd), name
        for p in plain.parameters():
            torch.nn.init.normal_(p, std=0.3)
        x, t = torch.randn(shape, generator=gen(1)), torch.rand(shape[0], generator=gen(2))
        assert torch.equal(plain(x, t), plain(x, t, None)), name
        with pytest.raises(BfnError, match="unconditional"):
            plain(x, t, torch.zeros(shape[0], dtype=torch.long))
        # zero-initialised label table: a fresh conditional network computes the unconditional one's outputs
        cond.load_state_dict({**plain.state_dict(), "label.table.weight": torch.zeros(4, cond_sd["label.table.weight"].shape[1])})
        y = torch.arange(shape[0]) % 4
        assert torch.allclose(cond(x, t, y), plain(x, t), atol=1e-6), name
        torch.nn.init.normal_(cond.label.table.weight)
        a, b = cond(x, t, y), cond(x, t, None)
        assert torch.equal(b, cond(x, t, torch.full_like(y, 3))), name  # None = the null class
        assert not torch.allclose(a, b), name
        with pytest.raises(BfnError, match="shape"):
            cond(x, t, torch.zeros(shape[0] + 1, dtype=torch.long))
        with pytest.raises(BfnError, match="integer"):
            cond(x, t, torch.zeros(shape[0]))


def test_make_bfn_threads_label_classes_and_rejects_bad_values():
    bfn = make_bfn("discretised", (4, 4, 1), network="unet", num_classes=16, sigma_1=0.02, label_classes=10,
                   width=8, channel_mults=(1, 2), attention_resolutions=())
    assert bfn.num_classes == 10 and bfn.net.num_classes == 10 and bfn.flow.sigma_1 == 0.02
    plain = make_bfn("continuous", (2,), sigma_1=0.02, hidden=8, depth=1)
    assert plain.num_classes == 0
    with pytest.raises(BfnError, match="num_classes"):
        make_bfn("continuous", (2,), sigma_1=0.02, label_classes=-1, hidden=8, depth=1)
    with pytest.raises(BfnError, match="unconditional"):
        plain.loss(torch.zeros(2, 2), y=torch.zeros(2, dtype=torch.long))


# ------------------------------------------------------------------ losses, label dropout, likelihood

def test_label_dropout_and_loss_labels():
    torch.manual_seed(0)
    bfn = make_bfn("continuous", (2,), sigma_1=0.02, label_classes=4, hidden=16, depth=1)
    torch.nn.init.normal_(bfn.net.label.table.weight)
    for p in bfn.net.out.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x, c = draw_mixture(64, gen(0))
    null = torch.full_like(c, 4)
    # y = None is the null class, and for continuous time label_dropout = 1 is it too (its draw comes last)
    assert torch.equal(bfn.loss(x, generator=gen(1)), bfn.loss(x, generator=gen(1), y=null))
    assert torch.equal(bfn.loss(x, generator=gen(1), y=c, label_dropout=1.0), bfn.loss(x, generator=gen(1)))
    assert torch.equal(bfn.loss(x, generator=gen(1), y=c, label_dropout=0.0), bfn.loss(x, generator=gen(1), y=c))
    assert not torch.equal(bfn.loss(x, generator=gen(1), y=c), bfn.loss(x, generator=gen(1)))
    assert torch.equal(bfn.loss(x, generator=gen(1), y=2), bfn.loss(x, generator=gen(1), y=torch.full_like(c, 2)))
    dropped = bfn.drop_labels(torch.zeros(20000, dtype=torch.long), 0.3, gen(2))
    assert set(dropped.unique().tolist()) == {0, 4}
    assert abs(float((dropped == 4).float().mean()) - 0.3) < 0.015
    with pytest.raises(BfnError, match="label_dropout"):
        bfn.loss(x, y=c, label_dropout=1.5)
    with pytest.raises(BfnError, match=r"\[0, 4\]"):
        bfn.loss(x, y=torch.full_like(c, 5))
    with pytest.raises(BfnError, match="shape"):
        bfn.loss(x, y=c[:3])


def test_conditional_likelihood_bound(mixture_bfn):
    """nll(x, y) bounds -ln p(x | y): lower than the unconditional bound for the true class, far higher for a
    wrong one; likelihood evaluation takes (x, y) batches. (The gap to the null class's bound exceeds the
    mutual information I(x; y) <= ln 4: the null class saw only the dropped 20% of labels, so its bound is looser.)"""
    x, c = draw_mixture(512, gen(7))
    true = mixture_bfn.nll(x, 10, generator=gen(1), y=c).mean()
    uncond = mixture_bfn.nll(x, 10, generator=gen(1)).mean()
    wrong = mixture_bfn.nll(x, 10, generator=gen(1), y=(c + 3) % 4).mean()
    print(f"\nmean bound, nats: true class {true:.3f}, null class {uncond:.3f}, wrong class {wrong:.3f}")
    assert true < uncond - 0.3
    assert wrong > uncond + 1.0
    table = evaluate_likelihood(mixture_bfn, [(x, c)], steps=[10], generator=gen(1))
    again = evaluate_likelihood(mixture_bfn, [(x, c)], steps=[10], generator=gen(1))
    assert table.row(10).nats == again.row(10).nats
    assert abs(table.row(10).nats - float(true)) < 0.5  # same bound, other Monte Carlo draws


# ------------------------------------------------------------------ guidance on trained models

@pytest.mark.parametrize("sampler, steps", [("bfn", 20), ("ode2", 10), ("sde2", 10)])
def test_guidance_raises_the_class_rate_on_a_mixture(mixture_bfn, sampler, steps):
    n = 1000
    c = torch.arange(n) % 4
    rates = {}
    for space in ("output", "params"):
        for w in (-1.0, 0.0, 2.0):
            s = mixture_bfn.sample((n, 2), steps, sampler=sampler, y=c, guidance=w, guidance_space=space, generator=gen(1))
            rates[space, w] = component_rate(s, c)
    print(f"\n{sampler}: " + ", ".join(f"{space} w={w:g}: {r:.3f}" for (space, w), r in rates.items()))
    for space in ("output", "params"):
        assert rates[space, -1.0] < 0.35  # w = -1: unconditional, chance is 0.25
        assert rates[space, 0.0] > 0.8  # the exact conditional gives ~0.91
        assert rates[space, 2.0] > rates[space, 0.0] + 0.04 and rates[space, 2.0] > 0.95


def test_guidance_raises_the_class_rate_on_tokens(token_bfn):
    n = 1500
    c = torch.arange(n) % K_TOK
    rates = {}
    for sampler, steps in (("bfn", 20), ("sde2", 10)):
        for space in ("output", "params"):
            for w in (-1.0, 0.0, 2.0):
                s = token_bfn.sample((n, L_TOK), steps, sampler=sampler, y=c, guidance=w, guidance_space=space, generator=gen(1))
                rates[sampler, space, w] = float((s == c[:, None]).float().mean())
    print("\ntoken rate: " + ", ".join(f"{k[0]} {k[1]} w={k[2]:g}: {r:.3f}" for k, r in rates.items()))
    for (sampler, space, w), r in rates.items():
        if w == -1.0:
            assert abs(r - 1 / K_TOK) < 0.06
        elif w == 0.0:
            assert r > 0.7  # data: 0.85
        else:
            assert r > rates[sampler, space, 0.0] + 0.04


def test_guidance_zero_is_plain_conditional_sampling(mixture_bfn):
    c = torch.arange(50) % 4
    plain = run_sampler(lambda th, t: mixture_bfn.output_distribution(th, t, c), mixture_bfn.flow, (50, 2), 8, generator=gen(3))
    for space in ("output", "params"):
        assert torch.equal(mixture_bfn.sample((50, 2), 8, y=c, guidance=0.0, guidance_space=space, generator=gen(3)), plain)
        fn = guided_output_fn(mixture_bfn, c, 0.0, space)
        assert torch.equal(run_sampler(fn, mixture_bfn.flow, (50, 2), 8, generator=gen(3)), plain)
    # guidance = -1 is unconditional (the null class), up to the rounding of Psi_y - (Psi_y - Psi_null)
    a = mixture_bfn.sample((50, 2), 8, sampler="ode2", y=c, guidance=-1.0, generator=gen(3))
    b = mixture_bfn.sample((50, 2), 8, sampler="ode2", generator=gen(3))
    assert torch.allclose(a, b, atol=1e-4)
    with pytest.raises(BfnError, match="labels"):
        mixture_bfn.sample((4, 2), 3, guidance=1.0)
    with pytest.raises(BfnError, match="guidance_space"):
        mixture_bfn.sample((4, 2), 3, y=c[:4], guidance=1.0, guidance_space="logits")


def test_guided_output_batches_cond_and_uncond_in_one_call(mixture_bfn):
    calls = []
    hook = mixture_bfn.net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        theta = mixture_bfn.flow.flow_sample(draw_mixture(6, gen(0))[0], torch.full((6,), 0.4), gen(1))
        t, c = torch.full((6,), 0.4), torch.arange(6) % 4
        dist = mixture_bfn.output_distribution(theta, t, c, guidance=1.5)
        assert calls == [12]
        cond, uncond = mixture_bfn.net_output(theta, t, c), mixture_bfn.net_output(theta, t)
    finally:
        hook.remove()
    want = mixture_bfn.loss_fn.factory.get_dist(cond + 1.5 * (cond - uncond), theta, t).mean
    assert torch.allclose(dist.mean, want, atol=1e-6)


# ------------------------------------------------------------------ guidance-space facts

def _random_outputs(channels, shape=(64, 8), scale=1.0, seed=0):
    g = gen(seed)
    return scale * torch.randn(*shape, channels, generator=g), scale * torch.randn(*shape, channels, generator=g)


def test_spaces_coincide_where_psi_to_p_o_is_linear_and_differ_where_not():
    flow = ContinuousBayesianFlow(0.02)
    t = torch.full((64,), 0.6)
    theta = flow.flow_sample(torch.rand(64, 8, generator=gen(1)) * 1.6 - 0.8, t, gen(2))
    w = 2.0
    # continuous, no clipping active (a wide data range): x_hat is affine in eps, so the two spaces agree
    wide = NoisePredictionFactory(flow, x_min=-100.0, x_max=100.0)
    cond, uncond = _random_outputs(1)
    a, b = (guided_distribution(wide, cond, uncond, theta, t, w, s).mean for s in ("output", "params"))
    assert torch.allclose(a, b, atol=1e-5)
    # the clip to [-1, 1] is not linear: where it acts, they differ
    clipped = NoisePredictionFactory(flow)
    cond, uncond = _random_outputs(1, scale=3.0)
    a, b = (guided_distribution(clipped, cond, uncond, theta, t, w, s).mean for s in ("output", "params"))
    assert a.abs().max() <= 1 and b.abs().max() <= 1 and (a - b).abs().max() > 0.1
    unclipped = (uncond.abs() < 0.05) & (cond.abs() < 0.05)  # both inputs of x_hat well inside the range
    assert torch.allclose(a[unclipped[..., 0]], b[unclipped[..., 0]], atol=1e-5) or not unclipped.any()
    # discretised: p_O is a non-linear (CDF) function of (mu_eps, ln sigma_eps)
    disc = DiscretisedNormalFactory(flow, 16)
    cond, uncond = _random_outputs(2)
    a = guided_distribution(disc, cond, uncond, theta, t, w, "output")
    b = guided_distribution(disc, cond, uncond, theta, t, w, "params")
    assert isinstance(b, BinnedCategorical) and torch.allclose(b.probs.sum(-1), torch.ones(64, 8))
    assert (a.probs - b.probs).abs().max() > 0.05
    # discrete: softmax is non-linear; the arithmetic mixture (params) differs, the geometric one is output space
    cat = CategoricalFactory(5)
    probs = DiscreteBayesianFlow(5, 2.0).flow_sample(torch.randint(0, 5, (64, 8), generator=gen(3)), t, gen(4))
    cond, uncond = _random_outputs(5)
    a = guided_distribution(cat, cond, uncond, probs, t, w, "output").probs
    b = guided_distribution(cat, cond, uncond, probs, t, w, "params").probs
    p_c, p_u = torch.softmax(cond, -1), torch.softmax(uncond, -1)
    geometric = p_c ** (1 + w) / p_u**w
    assert torch.allclose(a, geometric / geometric.sum(-1, keepdim=True), atol=1e-5)
    arithmetic = (p_c + w * (p_c - p_u)).clamp_min(0)
    assert torch.allclose(b, arithmetic / arithmetic.sum(-1, keepdim=True), atol=1e-6)
    assert (a - b).abs().max() > 0.05
    # w = 0: every space returns the conditional p_O; w = -1 the unconditional one
    for factory, ch, th in ((clipped, 1, theta), (disc, 2, theta), (cat, 5, probs)):
        cond, uncond = _random_outputs(ch)
        for space in ("output", "params"):
            p0, pn = (guided_distribution(factory, cond, uncond, th, t, w0, space) for w0 in (0.0, -1.0))
            want0, wantn = factory.get_dist(cond, th, t), factory.get_dist(uncond, th, t)
            assert torch.allclose(p0.mean, want0.mean, atol=1e-6) and torch.allclose(pn.mean, wantn.mean, atol=1e-5)


def test_binned_categorical_draws_match_its_probabilities():
    probs = torch.tensor([0.0, 0.5, 0.0, 0.2, 0.3])
    dist = BinnedCategorical(probs.expand(40000, 5))
    centres = bin_centres(5, "cpu", torch.float32)
    draws = dist.sample(gen(0))
    freq = torch.stack([(draws == c).float().mean() for c in centres])
    assert torch.allclose(freq, probs, atol=0.01) and freq[0] == 0 and freq[2] == 0
    assert torch.allclose(dist.mean, (probs * centres).sum().expand(40000))
    assert torch.all(dist.mode == centres[1])


# ------------------------------------------------------------------ float64 agreement of guided p_O

def _o_x_hat(mu, eps, t, s1):
    """float64 oracle: mu / gamma - sqrt((1 - gamma) / gamma) eps (t clamped to >= 1e-6), 0 below t_min."""
    tc = t.clamp_min(1e-6)[:, None]
    gamma, rest = 1.0 - s1 ** (2.0 * tc), s1 ** (2.0 * tc)
    x = mu / gamma - (rest / gamma).sqrt() * eps
    return torch.where(t[:, None] < 1e-6, torch.zeros_like(x), x), (rest / gamma).sqrt()


def _o_bins(mu_x, sigma_x, k):
    edges = torch.linspace(-1.0, 1.0, k + 1, dtype=F64)[1:-1]
    cdf = 0.5 * (1.0 + torch.erf((edges - mu_x[..., None]) / (sigma_x[..., None] * math.sqrt(2.0))))
    return torch.cat([cdf, torch.ones_like(cdf[..., :1])], -1) - torch.cat([torch.zeros_like(cdf[..., :1]), cdf], -1)


@pytest.mark.parametrize("s1", [1e-3, 0.02])
def test_guided_p_o_float32_agrees_with_float64(s1):
    flow, w, k = ContinuousBayesianFlow(s1), 1.5, 16
    t = torch.tensor([0.0, 0.3, 0.5, 0.9, 0.999, 1.0]).repeat_interleave(8)
    b = t.shape[0]
    theta = flow.flow_sample(torch.rand(b, 8, generator=gen(1)) * 1.8 - 0.9, t, gen(2))
    mu = theta[0]
    cond, uncond = _random_outputs(2, shape=(b, 8), scale=0.7)
    c64, u64 = cond.double(), uncond.double()
    for dtype in (torch.float32, F64):
        cast = lambda v: v.to(dtype)  # noqa: E731
        th, tt = tuple(map(cast, theta)), cast(t)
        # continuous, both spaces: x_hat
        out = guided_distribution(NoisePredictionFactory(flow), cast(cond[..., :1]), cast(uncond[..., :1]), th, tt, w, "output")
        x_c, _ = _o_x_hat(mu.double(), cond[..., 0].double(), t.double(), s1)
        x_u, _ = _o_x_hat(mu.double(), uncond[..., 0].double(), t.double(), s1)
        x_out, _ = _o_x_hat(mu.double(), (c64 + w * (c64 - u64))[..., 0], t.double(), s1)
        tol = 1e-5 if dtype == torch.float32 else 1e-10
        assert out.mean.dtype == dtype and torch.allclose(out.mean.double(), x_out.clamp(-1, 1), atol=tol, rtol=0)
        par = guided_distribution(NoisePredictionFactory(flow), cast(cond[..., :1]), cast(uncond[..., :1]), th, tt, w, "params")
        x_par = (x_c.clamp(-1, 1) + w * (x_c.clamp(-1, 1) - x_u.clamp(-1, 1))).clamp(-1, 1)
        assert par.mean.dtype == dtype and torch.allclose(par.mean.double(), x_par, atol=tol, rtol=0)
        # discretised, output space: bins of N(mu_x, sigma_x^2) from the guided (mu_eps, ln sigma_eps)
        d = guided_distribution(DiscretisedNormalFactory(flow, k), cast(cond), cast(uncond), th, tt, w, "output")
        g_out = c64 + w * (c64 - u64)
        mu_x, scale = _o_x_hat(mu.double(), g_out[..., 0], t.double(), s1)
        sigma_x = (scale * g_out[..., 1].clamp(-10, 10).exp()).clamp(1e-3, 10.0)
        early = t.double()[:, None] < 1e-6
        mu_x, sigma_x = torch.where(early, 0.0, mu_x), torch.where(early, 1.0, sigma_x)
        want = _o_bins(mu_x, sigma_x, k)
        atol = 1e-6 + 1e-7 / sigma_x[..., None] if dtype == torch.float32 else 1e-10
        assert d.probs.dtype == dtype and bool(((d.probs.double() - want).abs() <= atol).all())
        # discretised, parameter space: the bin probabilities mixed arithmetically, clipped, renormalised
        dp = guided_distribution(DiscretisedNormalFactory(flow, k), cast(cond), cast(uncond), th, tt, w, "params")
        (mu_c, sigma_c), (mu_u, sigma_u) = _o_mu_sigma(mu, cond, t, s1), _o_mu_sigma(mu, uncond, t, s1)
        p_c, p_u = _o_bins(mu_c, sigma_c, k), _o_bins(mu_u, sigma_u, k)
        mix = (p_c + w * (p_c - p_u)).clamp_min(0)
        mix = mix / mix.sum(-1, keepdim=True)
        # each bin's float32 error (as above) enters 1 + w times from p_y and w times from p_null
        bin_atol = 1e-6 + 1e-7 / torch.minimum(sigma_c, sigma_u)[..., None]
        atol = (1 + 2 * abs(w)) * bin_atol if dtype == torch.float32 else 1e-10
        assert dp.probs.dtype == dtype and bool(((dp.probs.double() - mix).abs() <= atol).all())


@pytest.mark.parametrize("k", [2, 27])
def test_guided_categorical_p_o_float32_agrees_with_float64(k):
    w = 2.0
    flow = DiscreteBayesianFlow(k, 3.0)
    t = torch.tensor([0.0, 0.5, 1.0]).repeat_interleave(16)
    probs = flow.flow_sample(torch.randint(0, k, (48, 8), generator=gen(1)), t, gen(2))
    cond, uncond = _random_outputs(CategoricalFactory(k).net_out_channels, shape=(48, 8), scale=3.0)
    c64, u64 = cond.double(), uncond.double()
    if k == 2:  # one Bernoulli logit l stands for the logits (0, l)
        c64, u64 = torch.cat([torch.zeros_like(c64), c64], -1), torch.cat([torch.zeros_like(u64), u64], -1)
    want_out = torch.softmax(c64 + w * (c64 - u64), -1)
    p_c, p_u = torch.softmax(c64, -1), torch.softmax(u64, -1)
    want_par = (p_c + w * (p_c - p_u)).clamp_min(0)
    want_par = want_par / want_par.sum(-1, keepdim=True)
    for dtype, atol in ((torch.float32, 1e-6 * (1 + 2 * w)), (F64, 1e-12)):
        args = (CategoricalFactory(k), cond.to(dtype), uncond.to(dtype), (probs[0].to(dtype),), t.to(dtype), w)
        got_out, got_par = (guided_distribution(*args, space).probs for space in ("output", "params"))
        assert got_out.dtype == dtype and got_par.dtype == dtype
        assert (got_out.double() - want_out).abs().max() <= atol
        assert (got_par.double() - want_par).abs().max() <= atol


def _o_mu_sigma(mu, net_out, t, s1):
    mu_x, scale = _o_x_hat(mu.double(), net_out[..., 0].double(), t.double(), s1)
    sigma_x = (scale * net_out[..., 1].double().clamp(-10, 10).exp()).clamp(1e-3, 10.0)
    early = t.double()[:, None] < 1e-6
    return torch.where(early, 0.0, mu_x), torch.where(early, 1.0, sigma_x)


def test_guided_discretised_sampling_runs_with_every_sampler():
    torch.manual_seed(0)
    flow = ContinuousBayesianFlow(0.02)
    bfn = BFN(MLP((3,), 1, 2, hidden=16, depth=1, num_classes=2), DiscretisedLoss(flow, 16))
    for p in bfn.parameters():
        torch.nn.init.normal_(p, std=0.3)
    centres = torch.linspace(-1 + 1 / 16, 1 - 1 / 16, 16)
    for sampler in ("bfn", "ode1", "ode2", "sde1", "sde2"):
        for space in ("output", "params"):
            s = bfn.sample((5, 3), 6, sampler=sampler, y=torch.tensor([0, 1, 0, 1, 2]), guidance=1.0, guidance_space=space,
                           generator=gen(0))
            assert s.shape == (5, 3) and bool(torch.isin(s, centres).all())
