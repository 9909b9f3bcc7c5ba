"""float32 flows, output distributions and losses against float64 oracles, t = 1 with sigma_1 = 1e-3 included.

Each quantity is computed by bfn_core in float32 and compared with a direct float64 evaluation of
the paper's formula on the same float32 inputs cast up (data, flow noise, network output, sender
draws), so a difference measures float32 arithmetic only. The same code on float64 inputs must
return float64 and match the oracle to RTOL_F64 (dtype faithfulness).

Tolerances, |float32 - float64| <= rtol |float64| + atol (elementwise, or per example for losses):
- schedule and flow quantities (beta, alpha, alpha_i, gamma, 1 - gamma, rho, p_F std, sigma_x):
  rtol 1e-5. One float32 pow/exp of an argument up to |2 ln sigma_1| ~ 14 costs ~1e-6.
  Forming 1 - gamma by subtraction is off by 1.3% at t = 1, sigma_1 = 1e-3 (the std by 0.66%).
- p_F sample mu: rtol 1e-6 of |gamma x| + std |noise| (a few ulps of the sum).
- x_hat, mu_x: atol 1e-6 (a few ulps of O(1) values; the subtraction bug moves them by ~7e-6).
- bin probabilities: atol 1e-6 + 1e-7 / sigma_x (CDFs near 1, and mu_x's own float32 rounding of
  ~2e-7 seen through a CDF of slope <= 0.4 / sigma_x).
- losses, per example: rtol 1e-4 plus atol 1e-4 nats per data dimension. Near t = 1 the residual
  x - x_hat is ~sigma_1 while x_hat carries O(1) rounding of ~6e-8, i.e. ~1e-4 of the residual.
- gradients w.r.t. the network output: |err| <= 1e-3 |g| + 1e-4 max|g| (same residual argument).
- discretised L^n (the fused kernel, discretised_ops.receiver_nll): rtol 1e-3, gradients 1e-2. Its
  bin masses are differences of CDFs (erf: erfc, which would keep tail masses exact, is ~4x slower
  on CPU), so a bin of mass p carries ~6e-8 / p relative error, up to ~1% at the 1e-5 guard;
  measured: 2.6e-4 of the value, 2.5e-3 of a gradient. (DiscretisedNormal.log_prob, hence L^r,
  uses tail differences and meets the general tolerance.)
"""
import math

import pytest
import torch

from bfn_core import (
    ContinuousBayesianFlow,
    ContinuousLoss,
    DiscreteBayesianFlow,
    DiscreteLoss,
    DiscretisedLoss,
    bin_centres,
)

F64 = torch.float64
TS = [0.0, 0.5, 0.9, 0.999, 1.0]
SIGMAS = [1e-3, 0.02]
DISCRETE = [(2, 9.0), (27, 0.5625)]  # (K, beta_1): binarised MNIST and text8
STEPS = [10, 1000]
RTOL_SCHED, RTOL_F64 = 1e-5, 1e-10
LOSS_RTOL, LOSS_ATOL_PER_DIM = 1e-4, 1e-4
GRAD_RTOL, GRAD_ATOL_OF_MAX = 1e-3, 1e-4
FUSED_RTOL, FUSED_GRAD_RTOL = 1e-3, 1e-2  # discretised L^n: see the module docstring
B, D, K_BINS = 64, 8, 16


def close(name, got, want, rtol=0.0, atol=0.0, dtype=torch.float32):
    assert got.dtype == dtype, f"{name}: dtype {got.dtype}, expected {dtype}"
    got, want = got.to(F64), want.to(F64).expand_as(got)
    err = (got - want).abs()
    ok = err <= rtol * want.abs() + atol
    assert bool(ok.all()), (
        f"{name}: max |err| {float(err.max()):.3g}, max rel err {float((err / want.abs().clamp_min(1e-300)).max()):.3g}"
        f" (rtol {rtol}, atol {atol})"
    )


def gen(seed):
    return torch.Generator().manual_seed(seed)


def step_start(t: float, n: int) -> float:
    """t_{i-1} of the step i that holds t (the last step for t = 1)."""
    return min(math.floor(t * n), n - 1) / n


# ---- float64 oracles: the paper's formulas, written out independently of bfn_core ----
def o_schedule(s1, t):
    s = s1 ** (2.0 * t)
    return {"beta": s1 ** (-2.0 * t) - 1.0, "alpha": -2.0 * math.log(s1) * s1 ** (-2.0 * t), "gamma": 1.0 - s,
            "one_minus_gamma": s, "rho": 1.0 / s}


def o_noise_to_data(mu, eps, t, s1):
    """(mu / gamma - sqrt((1 - gamma) / gamma) eps, sqrt((1 - gamma) / gamma)) with t clamped to >= 1e-6."""
    tc = t.clamp_min(1e-6)
    s = s1 ** (2.0 * tc)
    gamma = 1.0 - s
    scale = (s / gamma).sqrt()
    return mu / gamma - scale * eps, scale


def o_x_hat(mu, eps, t, s1):
    x_hat, _ = o_noise_to_data(mu, eps, t, s1)
    return torch.where(t < 1e-6, torch.zeros_like(x_hat), x_hat.clamp(-1.0, 1.0))


def o_discretised(mu, net_out, t, s1):
    mu_x, scale = o_noise_to_data(mu, net_out[..., 0], t, s1)
    sigma_x = (scale * net_out[..., 1].clamp(-10.0, 10.0).exp()).clamp(1e-3, 10.0)
    early = t < 1e-6
    return torch.where(early, torch.zeros_like(mu_x), mu_x), torch.where(early, torch.ones_like(sigma_x), sigma_x)


def o_bin_probs(mu_x, sigma_x, k):
    edges = bin_centres(k, dtype=F64)[:-1] + 1.0 / k
    cdf = 0.5 * torch.erfc(-(edges - mu_x[..., None]) / (sigma_x[..., None] * math.sqrt(2.0)))
    return torch.cat([cdf, torch.ones_like(cdf[..., :1])], -1) - torch.cat([torch.zeros_like(cdf[..., :1]), cdf], -1)


def o_guarded_log_probs(mu_x, sigma_x, k):
    """ln p_k, below 1e-5 ln(density at the centre x bin width) (the reference's guard)."""
    p = o_bin_probs(mu_x, sigma_x, k)
    c = bin_centres(k, dtype=F64)
    log_dens = torch.distributions.Normal(mu_x[..., None], sigma_x[..., None]).log_prob(c) + math.log(2.0 / k)
    return torch.where(p < 1e-5, log_dens, p.clamp_min(1e-5).log())


# ---- cases: float32 inputs shared by the code and the oracle ----
def continuous_case(s1, t, bins: bool):
    g = gen(0)
    x = bin_centres(K_BINS)[torch.randint(0, K_BINS, (B, D), generator=g)] if bins else torch.rand(B, D, generator=g) * 2 - 1
    flow = ContinuousBayesianFlow(s1)
    tt = torch.full((B,), t)
    mu, _ = flow.flow_sample(x, tt, gen(1))
    if not bins:
        return flow, x, tt, mu, torch.randn(B, D, 1, generator=g)
    # A network that puts mu_x within a bin or so of x with sigma_x from 1e-3 to a few bins: every
    # bin probability is then sensitive to mu_x and sigma_x.
    t64 = tt.double()[:, None]
    _, scale = o_noise_to_data(mu.double(), torch.zeros(()), t64, s1)
    target = x.double() + (torch.rand(B, D, generator=g, dtype=F64) - 0.5) * 0.25
    mu_eps = (mu.double() / (1.0 - s1 ** (2.0 * t64.clamp_min(1e-6))) - target) / scale
    log_sig = (torch.rand(B, D, generator=g, dtype=F64) * 30 + 0.5).log() + math.log(1e-3) - scale.log()
    return flow, x, tt, mu, torch.stack([mu_eps, log_sig], -1).float()


@pytest.mark.parametrize("t", TS)
@pytest.mark.parametrize("s1", SIGMAS)
def test_continuous_schedule_and_flow(s1, t):
    flow = ContinuousBayesianFlow(s1)
    want = o_schedule(s1, torch.tensor(t, dtype=F64))
    for dtype, rtol in ((torch.float32, RTOL_SCHED), (F64, RTOL_F64)):
        tt = torch.tensor(t, dtype=dtype)
        for name in ("beta", "alpha", "gamma", "one_minus_gamma"):
            close(f"{name}({t})", getattr(flow, name)(tt), want[name], rtol, dtype=dtype)
        for n in STEPS:
            i = torch.tensor(step_start(t, n) * n + 1, dtype=dtype)
            close(f"alpha_i(n={n})", flow.alpha_i(i, n), s1 ** (-2.0 * i.double() / n) * (1 - s1 ** (2.0 / n)), rtol, dtype=dtype)
        x = torch.rand(B, D, generator=gen(0)).to(dtype) * 2 - 1
        mean, std = flow.flow_mean_std(x, torch.full((B,), t, dtype=dtype))
        close("p_F mean", mean, want["gamma"] * x.double(), rtol, dtype=dtype)
        close("p_F std", std, (want["gamma"] * want["one_minus_gamma"]).sqrt(), rtol, dtype=dtype)
        mu, rho = flow.flow_sample(x, torch.full((B,), t, dtype=dtype), gen(1))
        close("rho", rho, want["rho"], rtol, dtype=dtype)
        noise = torch.randn(B, D, generator=gen(1), dtype=dtype).double()
        terms = (want["gamma"] * x.double(), (want["gamma"] * want["one_minus_gamma"]).sqrt() * noise)
        close("p_F sample", mu, sum(terms), atol=(1e-6 if dtype != F64 else RTOL_F64) * (terms[0].abs() + terms[1].abs()), dtype=dtype)
        # x = 0 isolates the std: the sample is std * noise
        mu0, _ = flow.flow_sample(torch.zeros_like(x), torch.full((B,), t, dtype=dtype), gen(1))
        close("p_F std via sample", mu0, terms[1], rtol, dtype=dtype)


@pytest.mark.parametrize("t", TS)
@pytest.mark.parametrize("k,beta_1", DISCRETE)
def test_discrete_schedule_and_flow(k, beta_1, t):
    flow = DiscreteBayesianFlow(k, beta_1)
    x = torch.randint(0, k, (B, D), generator=gen(0))
    for dtype, rtol in ((torch.float32, RTOL_SCHED), (F64, RTOL_F64)):
        tt = torch.tensor(t, dtype=dtype)
        close("beta", flow.beta(tt), beta_1 * t**2 * torch.ones((), dtype=F64), rtol, dtype=dtype)
        close("alpha", flow.alpha(tt), 2 * beta_1 * t * torch.ones((), dtype=F64), rtol, dtype=dtype)
        for n in STEPS:
            i = torch.tensor(step_start(t, n) * n + 1, dtype=dtype)
            close("alpha_i", flow.alpha_i(i, n), beta_1 * (2 * i.double() - 1) / n**2, rtol, dtype=dtype)
        beta = beta_1 * min(t, 1 - 1e-6) ** 2
        offsets = k * torch.nn.functional.one_hot(x, k).double() - 1
        mean, std = flow.flow_mean_std(x, torch.full((B,), t, dtype=dtype))
        close("p_F logit mean", mean, beta * offsets, rtol, dtype=dtype)
        close("p_F logit std", std, math.sqrt(beta * k) * torch.ones((), dtype=F64), rtol, dtype=dtype)
        (probs,) = flow.flow_sample(x, torch.full((B,), t, dtype=dtype), gen(1))
        noise = torch.randn(B, D, k, generator=gen(1), dtype=dtype).double()
        want = torch.softmax(beta * offsets + math.sqrt(beta * k) * noise, -1)
        close("p_F sample", probs, want, rtol, atol=1e-12, dtype=dtype)


@pytest.mark.parametrize("t", TS)
@pytest.mark.parametrize("s1", SIGMAS)
def test_output_distributions(s1, t):
    flow, x, tt, mu, eps = continuous_case(s1, t, bins=False)
    t64 = tt.double()[:, None]
    for dtype in (torch.float32, F64):
        atol = 1e-6 if dtype != F64 else RTOL_F64
        x_hat = ContinuousLoss(flow).factory.get_dist(eps.to(dtype), (mu.to(dtype), None), tt.to(dtype)).mean
        close("x_hat", x_hat, o_x_hat(mu.double(), eps.double()[..., 0], t64, s1), atol=atol, dtype=dtype)
    flow, x, tt, mu, net_out = continuous_case(s1, t, bins=True)
    mu_x64, sigma_x64 = o_discretised(mu.double(), net_out.double(), t64, s1)
    for dtype in (torch.float32, F64):
        dist = DiscretisedLoss(flow, K_BINS).factory.get_dist(net_out.to(dtype), (mu.to(dtype), None), tt.to(dtype))
        close("mu_x", dist.mu_x, mu_x64, atol=1e-6 if dtype != F64 else RTOL_F64, dtype=dtype)
        close("sigma_x", dist.sigma_x, sigma_x64, RTOL_SCHED if dtype != F64 else RTOL_F64, dtype=dtype)
        # mu_x itself is only known to ~2e-7 in float32, which moves a CDF by up to 0.4 * 2e-7 / sigma_x
        atol = 1e-6 + 1e-7 / sigma_x64[..., None] if dtype != F64 else RTOL_F64
        close("bin probs", dist.probs, o_bin_probs(mu_x64, sigma_x64, K_BINS), atol=atol, dtype=dtype)


# ---- losses: code vs oracle, values and gradients w.r.t. the network output ----
def o_loss(kind, what, x, net_out, mu_or_probs, t, s1_or_flow, loss, ys=None, n=None):
    """The float64 oracle of one loss, per example (B,)."""
    x, t = x.double() if x.is_floating_point() else x, t.double()[:, None]
    if kind == "discrete":
        flow, k = s1_or_flow, loss.K
        logits = torch.cat([torch.zeros_like(net_out), net_out], -1) if k == 2 else net_out
        log_p = torch.log_softmax(logits, -1)
        if what == "inf":
            e_x = torch.nn.functional.one_hot(x, k).double()
            return (k * flow.beta_1 * t * ((e_x - log_p.exp()) ** 2).sum(-1)).sum(-1)
        if what == "r":
            return -log_p.gather(-1, x[..., None])[..., 0].sum(-1)
        alpha = (flow.beta_1 * (2 * (t * n).round() + 1) / n**2)[..., None]  # (B, 1, 1)
        sender = torch.distributions.Normal(alpha * (k * torch.nn.functional.one_hot(x, k).double() - 1), (alpha * k).sqrt())
        total = 0.0
        for y in ys:
            y = y.double()
            if loss.receiver == "mixture":  # K-dimensional mixture over classes k of N(alpha (K e_k - 1), alpha K I)
                comps = torch.distributions.Independent(
                    torch.distributions.Normal(alpha[..., None] * (k * torch.eye(k, dtype=F64) - 1), (alpha[..., None] * k).sqrt()), 1)
                receiver = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(logits=log_p), comps)
                total = total + sender.log_prob(y).sum(-1) - receiver.log_prob(y)
            else:  # per coordinate c: p_c N(alpha (K - 1), alpha K) + (1 - p_c) N(-alpha, alpha K)
                p = log_p.exp()
                mix = torch.distributions.Categorical(probs=torch.stack([p, 1 - p], -1))
                comps = torch.distributions.Normal(torch.cat([alpha * (k - 1), -alpha], -1)[..., None, :].expand(*p.shape, 2),
                                                   (alpha * k).sqrt()[..., None])
                receiver = torch.distributions.MixtureSameFamily(mix, comps)
                total = total + (sender.log_prob(y) - receiver.log_prob(y)).sum(-1)
        return (n * total / len(ys)).sum(-1)
    s1 = s1_or_flow
    mu = mu_or_probs.double()
    if kind == "continuous":
        t_eval = torch.ones_like(t) if what == "r" else t
        x_hat = o_x_hat(mu, net_out[..., 0], t_eval, s1)
        if what == "r":
            sig = loss.reconstruction_std_scale * s1
            if loss.num_bins is None:
                return torch.distributions.Normal(x_hat, sig).log_prob(x).neg().sum(-1)
            logp = o_guarded_log_probs(x_hat, torch.full_like(x_hat, sig), loss.num_bins)
            idx = ((x + 1) * loss.num_bins / 2).floor().clamp(0, loss.num_bins - 1).long()
            return -logp.gather(-1, idx[..., None])[..., 0].sum(-1)
        sq = (x - x_hat) ** 2
    else:
        mu_x, sigma_x = o_discretised(mu, net_out, torch.ones_like(t) if what == "r" else t, s1)
        if what == "r":
            idx = ((x + 1) * K_BINS / 2).floor().clamp(0, K_BINS - 1).long()
            return -o_guarded_log_probs(mu_x, sigma_x, K_BINS).gather(-1, idx[..., None])[..., 0].sum(-1)
        if what == "n":
            alpha = s1 ** (-2.0 * ((t * n).round() + 1) / n) * (1 - s1 ** (2.0 / n))
            logw, c = o_guarded_log_probs(mu_x, sigma_x, K_BINS), bin_centres(K_BINS, dtype=F64)
            total = 0.0
            for y in ys:  # ln N(y | x) - ln sum_k w_k N(y | c_k): the normalisers cancel
                y = y.double()
                ratio = -0.5 * alpha[..., None] * ((y[..., None] - c) ** 2 - (y - x)[..., None] ** 2)
                total = total - torch.logsumexp(logw + ratio, -1)
            return (n * total / len(ys)).sum(-1)
        sq = (x - (o_bin_probs(mu_x, sigma_x, K_BINS) * bin_centres(K_BINS, dtype=F64)).sum(-1)) ** 2
    if what == "inf":
        return (-math.log(s1) * s1 ** (-2.0 * t) * sq).sum(-1)
    alpha = s1 ** (-2.0 * ((t * n).round() + 1) / n) * (1 - s1 ** (2.0 / n))
    return (0.5 * n * alpha * sq).sum(-1)


def code_loss(loss, what, x, net_out, theta, t, n=None, seed=5, n_mc=2):
    if what == "inf":
        return loss.cts_time_loss(x, net_out, theta, t)
    if what == "r":
        return loss.reconstruction_loss(x, net_out, theta)
    return loss.discrete_time_loss(x, net_out, theta, t, n, n_mc=n_mc, generator=gen(seed))


def sender_draws(loss, x, t, n, seed=5, n_mc=2):
    """The y draws that discrete_time_loss makes with generator gen(seed)."""
    g, alpha = gen(seed), loss.flow.alpha_at_step(t, n)
    return [loss.flow.sender_sample(x, alpha, g) for _ in range(n_mc)]


def loss_cases(kind, param, t):
    """(loss, x, net_out, theta, oracle theta, flow-or-sigma_1) for one kind at time t (float32)."""
    if kind == "discrete":
        k, beta_1 = param
        losses = [DiscreteLoss(DiscreteBayesianFlow(k, beta_1), receiver=r) for r in ("mixture", "factorised")]
        x = torch.randint(0, k, (B, D), generator=gen(0))
        theta = losses[0].flow.flow_sample(x, torch.full((B,), t), gen(1))
        net_out = torch.randn(B, D, 1 if k == 2 else k, generator=gen(2)) * 2
        return [(loss, x, net_out, theta, theta[0], loss.flow) for loss in losses]
    s1 = param
    flow, x, tt, mu, net_out = continuous_case(s1, t, bins=kind == "discretised")
    if kind == "discretised":
        return [(DiscretisedLoss(flow, K_BINS), x, net_out, (mu, None), mu, s1)]
    x16 = bin_centres(K_BINS)[((x + 1) * K_BINS / 2).floor().clamp(0, K_BINS - 1).long()]
    return [(ContinuousLoss(flow), x, net_out, (mu, None), mu, s1),
            (ContinuousLoss(flow, num_bins=K_BINS, reconstruction_std_scale=0.7), x16, net_out, (mu, None), mu, s1)]


def check_loss(name, loss, what, x, net_out, theta, o_theta, param, t, n=None):
    kind = {"ContinuousLoss": "continuous", "DiscretisedLoss": "discretised", "DiscreteLoss": "discrete"}[type(loss).__name__]
    tt = torch.full((B,), t)
    ys = sender_draws(loss, x, tt, n) if what == "n" else None
    out32 = net_out.clone().requires_grad_(True)
    got = code_loss(loss, what, x, out32, theta, tt, n)
    got.sum().backward()
    out64 = net_out.double().requires_grad_(True)
    want = o_loss(kind, what, x, out64, o_theta, tt, param, loss, ys, n)
    want.sum().backward()
    fused = kind == "discretised" and what == "n"
    close(f"{name} value", got.detach(), want.detach(), FUSED_RTOL if fused else LOSS_RTOL, LOSS_ATOL_PER_DIM * D)
    g64 = out64.grad
    close(f"{name} grad", out32.grad, g64, FUSED_GRAD_RTOL if fused else GRAD_RTOL, GRAD_ATOL_OF_MAX * float(g64.abs().max()))
    # dtype faithfulness: float64 in, float64 out, at float64 accuracy
    x64 = x.double() if x.is_floating_point() else x
    theta64 = tuple(None if v is None else v.double() for v in theta)
    tt64 = tt.double()
    got64 = code_loss(loss, what, x64, net_out.double(), theta64, tt64, n)
    want64 = want.detach()
    if what == "n":  # the float64 run draws its own y
        want64 = o_loss(kind, what, x, net_out.double(), o_theta, tt, param, loss, sender_draws(loss, x64, tt64, n), n)
    close(f"{name} float64", got64.detach(), want64, 1e-9, 1e-9, dtype=F64)


KIND_PARAMS = [("continuous", s) for s in SIGMAS] + [("discretised", s) for s in SIGMAS] + [("discrete", p) for p in DISCRETE]


@pytest.mark.parametrize("t", TS)
@pytest.mark.parametrize("kind,param", KIND_PARAMS)
def test_continuous_time_loss(kind, param, t):
    for case in loss_cases(kind, param, t):
        check_loss(f"L^inf {kind} {param} t={t}", case[0], "inf", *case[1:], t)


@pytest.mark.parametrize("n", STEPS)
@pytest.mark.parametrize("t", TS)
@pytest.mark.parametrize("kind,param", KIND_PARAMS)
def test_discrete_time_loss(kind, param, t, n):
    t = step_start(t, n)
    for case in loss_cases(kind, param, t):
        check_loss(f"L^{n} {kind} {param} t={t} {getattr(case[0], 'receiver', '')}", case[0], "n", *case[1:], t, n)


@pytest.mark.parametrize("kind,param", KIND_PARAMS)
def test_reconstruction_loss(kind, param):
    for case in loss_cases(kind, param, 1.0):
        check_loss(f"L^r {kind} {param}", case[0], "r", *case[1:], 1.0)


def test_bin_log_probabilities_keep_tail_bins_exact():
    """ln p_O(k) of bins far in a tail (mass 1e-5 to 1e-2): the difference of two float32 CDFs near
    1 would be off by up to ~1% there; tail differences keep it to float32 rounding (rtol 1e-5)."""
    from bfn_core import DiscretisedNormal

    mu_x = torch.linspace(-0.9, 0.9, 181)
    sigma_x = torch.full_like(mu_x, 0.03)
    want = o_bin_probs(mu_x.double(), sigma_x.double(), K_BINS).log()
    tail = (want > math.log(1e-5)) & (want < math.log(1e-2))
    assert int(tail.sum()) > 50
    dist = DiscretisedNormal(mu_x, sigma_x, K_BINS)
    close("log_probs (tails)", dist.log_probs()[tail], want[tail], rtol=1e-5)
    for k in range(K_BINS):
        rows = tail[:, k]
        got = dist.log_prob(torch.full_like(mu_x, float(bin_centres(K_BINS)[k])))
        close(f"log_prob bin {k} (tails)", got[rows], want[rows, k], rtol=1e-5)
