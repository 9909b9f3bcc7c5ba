"""BFN-Solvers (Xue et al., "Unifying Bayesian Flow Networks and Diffusion Models through SDEs", ICML 2024,
arXiv:2404.15766) and the stepping loop every sampler runs on (`integrate`).

Times are the BFN paper's t (0 = prior, 1 = data); the solver paper and its code run a reversed time 1 - t.
Continuous and discretised data: the state is the input mean mu, and p_F (Graves et al. sec. 4) is the
Gaussian path mu = a x + s eps with a = gamma(t), s = sqrt(gamma (1 - gamma)): a diffusion with log-SNR
lambda = ln(a / s), so the solvers are exponential integrators in lambda on the data prediction
x0 = E_{p_O}[x] (x_hat, or the binned mean for discretised data), as DPM-Solver++ is for diffusion.
Discrete data: the state is the logit vector y, theta = softmax(y), y ~ N(beta (K e_x - 1), beta K I)
(sec. 6); the probability-flow ODE dy/dt = y / t + beta_1 t (K e_hat - 1) and the reverse SDE
dy = beta'(t) (K e_hat - 1) dt + sqrt(K beta'(t)) dw are integrated with their linear parts exact and
e_hat = E_{p_O}[e_x] (the output probabilities) held constant (order 1) or linear in t (order 2).
Each update is checked term by term against the authors' code (ML-GSAI/BFN-Solver: ImageBFNSolver in
bfnsolver_i.py, TextBFNSolver in bfnsolver_t.py, whose time is 1 - t); docstrings name the function matched.
Continuous data use the clipped x_hat as the authors do (x0_pred.clip(-1, 1)); discretised data, which the
authors' code has no solver for, the binned mean sum_k p_O(k) k_c: E[x | theta] under p_O, which L^inf regresses on x.
Authors' defaults kept: zero-mean start at t_0 = eta, eta from their configs (time_grids.SOLVER_ETA_*); their
`last_drop` (result = p_O at t_{n-1}, n NFE) is drop_last, the default here being p_O at t_n = 1 (n + 1 NFE).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from bfn_core._checks import check_choice
from bfn_core.distributions import OutputDistribution
from bfn_core.errors import BfnError
from bfn_core.flows import BayesianFlow, ContinuousBayesianFlow, DiscreteBayesianFlow, Params
from bfn_core.inpainting import Inpainting
from bfn_core.time_grids import check_times

OutputFn = Callable[[Params, Tensor], OutputDistribution]
FINALS = ("sample", "mode")


class GaussianPath:
    """Continuous / discretised data: state mu; theta = (mu, rho(t) = sigma_1^(-2t)) as under p_F (eq. 80)."""

    def __init__(self, flow: ContinuousBayesianFlow, shape: tuple[int, ...], device):
        self.flow, self.shape, self.device = flow, shape, device
        self.log_s1 = math.log(flow.sigma_1)

    def beta(self, t: float) -> float:
        return math.expm1(-2.0 * self.log_s1 * t)

    def a_s_lam(self, t: float) -> tuple[float, float, float]:
        """a = gamma, s = sqrt(gamma (1 - gamma)), lambda = ln(a / s); 1 - gamma from sigma_1^(2t), never by subtraction."""
        gamma, rest = -math.expm1(2.0 * self.log_s1 * t), math.exp(2.0 * self.log_s1 * t)
        return gamma, math.sqrt(gamma * rest), 0.5 * (math.log(gamma) - math.log(rest))

    def init(self, t0: float, generator) -> Tensor:
        """mu_0 = 0 at t = 0; later, the zero-mean p_F, N(0, gamma (1 - gamma)) (the solver code's default start)."""
        mu = torch.zeros(self.shape, device=self.device)
        if t0 > 0.0:
            mu = self.a_s_lam(t0)[1] * torch.randn(self.shape, device=self.device, generator=generator)
        return mu

    def back(self, mu: Tensor, t: float, s: float, generator) -> Tensor:
        """mu_s given mu_t (s < t): rho mu = beta x + W(beta) is Brownian in beta, so its bridge needs no x (bridge_draw)."""
        b_t, b_s = self.beta(t), self.beta(s)
        return bridge_draw((1.0 + b_t) * mu, b_t, b_s, 1.0, generator) / (1.0 + b_s)

    def theta(self, mu: Tensor, t: float) -> Params:
        rho = torch.full((self.shape[0],) + (1,) * (len(self.shape) - 1), math.exp(-2.0 * self.log_s1 * t), device=mu.device)
        return mu, rho

    def paper_step(self, mu, out, s, t, generator) -> Tensor:
        alpha = torch.tensor(self.beta(t) - self.beta(s), dtype=mu.dtype, device=mu.device)
        y = self.flow.sender_sample(out.sample(generator), alpha, generator)
        return self.flow.update(self.theta(mu, s), y, alpha)[0]

    def ode(self, mu, x0, s, t, prev) -> Tensor:
        """mu_t = (s_t / s_s) mu_s + a_t (1 - e^-h) D: ode_bfnsolver1_update (its noise form, equal for one x0) / ode_bfnsolver2_multi_step_update."""
        (_, sd_s, lam_s), (a_t, sd_t, lam_t) = self.a_s_lam(s), self.a_s_lam(t)
        h = lam_t - lam_s
        if prev is not None:  # multistep: x0 extrapolated linearly in lambda (DPM-Solver++(2M))
            r = (lam_s - self.a_s_lam(prev[1])[2]) / h
            x0 = (1.0 + 0.5 / r) * x0 - (0.5 / r) * prev[0]
        return (sd_t / sd_s) * mu + (a_t * -math.expm1(-h)) * x0

    def sde(self, mu, x0, s, t, prev, generator) -> Tensor:
        """(s_t / s_s) e^-h mu_s + a_t (1 - e^-2h) D + s_t sqrt(1 - e^-2h) z: sde_bfnsolver2_multi_step_update; order 1 = the paper's sampler."""
        (_, sd_s, lam_s), (a_t, sd_t, lam_t) = self.a_s_lam(s), self.a_s_lam(t)
        h = lam_t - lam_s
        if prev is not None:
            r = (lam_s - self.a_s_lam(prev[1])[2]) / h
            x0 = x0 + (0.5 / r) * (x0 - prev[0])
        noise = torch.randn(mu.shape, device=mu.device, dtype=mu.dtype, generator=generator)
        return ((sd_t / sd_s) * math.exp(-h)) * mu + (a_t * -math.expm1(-2.0 * h)) * x0 + (sd_t * math.sqrt(-math.expm1(-2.0 * h))) * noise


class CategoricalPath:
    """Discrete data: state y (*shape, K), theta = softmax(y); beta(t) = beta_1 t^2 (sec. 6)."""

    def __init__(self, flow: DiscreteBayesianFlow, shape: tuple[int, ...], device):
        self.flow, self.shape, self.device = flow, shape, device
        self.K, self.beta_1 = flow.K, flow.beta_1

    def beta(self, t: float) -> float:
        return self.beta_1 * t * t

    def init(self, t0: float, generator) -> Tensor:
        """y = 0 (the uniform prior) at t = 0; later, the zero-mean p_F, N(0, K beta I) (the solver code's default start)."""
        y = torch.zeros((*self.shape, self.K), device=self.device)
        if t0 > 0.0:
            y = math.sqrt(self.K * self.beta(t0)) * torch.randn(y.shape, device=self.device, generator=generator)
        return y

    def theta(self, y: Tensor, t: float) -> Params:
        return (torch.softmax(y, -1),)

    def back(self, y: Tensor, t: float, s: float, generator) -> Tensor:
        """y_s given y_t (s < t): y = beta (K e_x - 1) + sqrt(K) W(beta) is Brownian in beta (bridge_draw)."""
        return bridge_draw(y, self.beta(t), self.beta(s), float(self.K), generator)

    def paper_step(self, y, out, s, t, generator) -> Tensor:
        # Bayes' update softmax(y_sender + ln theta) is a sum of logits: kept as one, nothing underflows.
        alpha = torch.tensor(self.beta(t) - self.beta(s), dtype=y.dtype, device=y.device)
        return y + self.flow.sender_sample(out.sample(generator), alpha, generator)

    def ode(self, y, e, s, t, prev) -> Tensor:
        """y_t = (t / s) y_s + beta_1 t (t - s) (K e - 1) [+ K beta_1 t (t - s)^2 / 2 D1]: ode_bfnsolver1_update / ode_bfnsolver2_multi_step_update."""
        out = (t / s) * y + (self.beta_1 * t * (t - s)) * (self.K * e - 1.0)
        if prev is not None:  # e_hat linear in t through the previous step's value
            out = out + (self.K * self.beta_1 * t * (t - s) ** 2 / 2.0 / (s - prev[1])) * (e - prev[0])
        return out

    def sde(self, y, e, s, t, prev, generator) -> Tensor:
        """y_s + (beta_t - beta_s) (K e - 1) + sqrt(K (beta_t - beta_s)) z [+ 2nd-order term]: sde_bfnsolver1_update / sde_bfnsolver2_multi_step_update."""
        d_beta = self.beta(t) - self.beta(s)
        noise = torch.randn(y.shape, device=y.device, dtype=y.dtype, generator=generator)
        out = y + d_beta * (self.K * e - 1.0) + math.sqrt(self.K * d_beta) * noise
        if prev is not None:  # integral of beta'(u) (u - s) du = beta_1 (t - s)^2 (2t + s) / 3
            out = out + (self.K * self.beta_1 * (t - s) ** 2 * (2.0 * t + s) / 3.0 / (s - prev[1])) * (e - prev[0])
        return out


def bridge_draw(z: Tensor, b_t: float, b_s: float, scale: float, generator) -> Tensor:
    """z(b_s) given z(b_t), b_s < b_t, for z(b) = b d + sqrt(scale) W(b): (b_s / b_t) z + N(0, scale b_s (b_t - b_s) / b_t).

    A Brownian motion with drift d, given its value at b_t, is a Brownian bridge whatever d is, so the step
    back towards the prior needs no data: it is RePaint's re-noising (Lugmayr et al., 2022) for BFN states.
    """
    if b_t <= 0.0:
        return torch.zeros_like(z)
    noise = torch.randn(z.shape, device=z.device, dtype=z.dtype, generator=generator)
    return (b_s / b_t) * z + math.sqrt(scale * b_s * (b_t - b_s) / b_t) * noise


def path_for(flow: BayesianFlow, shape: tuple[int, ...], device) -> GaussianPath | CategoricalPath:
    if isinstance(flow, ContinuousBayesianFlow):
        return GaussianPath(flow, shape, device)
    if isinstance(flow, DiscreteBayesianFlow):
        return CategoricalPath(flow, shape, device)
    raise BfnError(f"the samplers know ContinuousBayesianFlow and DiscreteBayesianFlow, got {type(flow).__name__}")


# A step rule maps (path, state, p_O at t_i, i, times, memory, generator) to the state at t_{i+1}.
StepRule = Callable[..., Tensor]


@torch.no_grad()
def integrate(rule: StepRule, output_fn: OutputFn, flow: BayesianFlow, shape, times, *, generator=None,
              callback=None, final: str = "sample", drop_last: bool = False, return_trajectory: bool = False,
              device=None, start_above_zero: bool = False, who: str = "sampler", observed=None, mask=None,
              resample: int = 1):
    """Run `rule` over the grid: p_O at each t_i drives step i; the result comes from p_O at t_n (or t_{n-1} with drop_last).

    With observed and mask (inpainting.py), the known coordinates' state is redrawn from p_F(. | observed; t_i)
    before every network call and the result equals observed on the mask. resample = R > 1 (inpainting only)
    takes every step R times: after each try but the last, the state goes back from t_{i+1} to t_i by the
    flow's bridge (path.back), so the unknown coordinates re-meet the known ones (RePaint's resampling, jump
    length 1); about R times the network calls.
    """
    final = check_choice(final, FINALS, "final")
    ts = check_times(times, start_above_zero=start_above_zero, who=who)
    shape, n = tuple(shape), len(ts) - 1
    path = path_for(flow, shape, device)
    inpaint = None if observed is None and mask is None else Inpainting(flow, observed, mask, shape, device)
    if isinstance(resample, bool) or not isinstance(resample, int) or resample < 1:
        raise BfnError(f"resample must be an int >= 1 (1: no resampling), got {resample!r}")
    if resample > 1 and inpaint is None:
        raise BfnError("resample is for inpainting: pass observed and mask, or leave resample at 1")
    state, memory, trajectory = path.init(ts[0], generator), {}, []
    for i in range(n + 1):
        for attempt in range(resample if i < n else 1):
            if inpaint is not None:
                state = inpaint.known_state(state, ts[i], generator)
            theta = path.theta(state, ts[i])
            out = output_fn(theta, torch.full((shape[0],), ts[i], device=state.device))
            if i == n or (drop_last and i == n - 1):
                break  # drop_last: the solver code's `last_drop`, the last output is the result, one call fewer
            before = dict(memory)  # a multistep rule's history must not hold the tries it takes back
            ahead = rule(path, state, out, i, ts, memory, generator)
            if attempt < resample - 1:
                state, memory = path.back(ahead, ts[i + 1], ts[i], generator), before
        if return_trajectory:
            trajectory.append(theta)
        if i == n:
            break
        if callback is not None:
            callback({"step": i + 1, "n_steps": n, "t": ts[i], "theta": theta, "output": out})
        if drop_last and i == n - 1:
            break
        state = ahead
    result = out.sample(generator) if final == "sample" else out.mode
    if inpaint is not None:
        result = inpaint.result(result)
    return (result, trajectory) if return_trajectory else result


def _solver_rule(method: str, order: int) -> StepRule:
    """One step of path.ode / path.sde on the data prediction E_{p_O}[x]; order 2 also uses the previous step's."""
    def rule(path, state, out, i, ts, memory, generator):
        prev = memory.get("prev") if order == 2 else None
        x0 = out.mean
        memory["prev"] = (x0, ts[i])
        if method == "ode":
            return path.ode(state, x0, ts[i], ts[i + 1], prev)
        return path.sde(state, x0, ts[i], ts[i + 1], prev, generator)
    return rule


def prefers_grid(name: str, discrete: str | None = None):
    """Mark a sampler's default time grid (a TIME_GRIDS name; `discrete` for discrete flows if it differs).

    Samplers without the mark use 'uniform'. fn.time_grid stays the continuous-data name (callers read it).
    """
    def mark(fn):
        fn.time_grid, fn.time_grid_discrete = name, discrete or name
        return fn
    return mark


# Grids: the authors' uniform-in-t grid from their eta ('solver') for everything except the continuous ODEs,
# which take DPM-Solver's log-SNR spacing between the same ends ('logsnr'): on a trained 2-D mixture MLP, ode2 at
# 10 NFE gave a sample NLL of 0.14 nats against 0.47 on 'solver' (the SDE solvers did as well or better on 'solver').
@prefers_grid("logsnr", discrete="solver")
def ode1(output_fn: OutputFn, flow: BayesianFlow, shape, times, **options):
    """BFN-Solver1 (first-order ODE): ImageBFNSolver / TextBFNSolver.ode_bfnsolver1_update."""
    return integrate(_solver_rule("ode", 1), output_fn, flow, shape, times, start_above_zero=True, who="ode1", **options)


@prefers_grid("logsnr", discrete="solver")
def ode2(output_fn: OutputFn, flow: BayesianFlow, shape, times, **options):
    """BFN-Solver(++)2, second-order multistep ODE on the data prediction: ode_bfnsolver2_multi_step_update."""
    return integrate(_solver_rule("ode", 2), output_fn, flow, shape, times, start_above_zero=True, who="ode2", **options)


@prefers_grid("solver")
def sde1(output_fn: OutputFn, flow: BayesianFlow, shape, times, **options):
    """First-order SDE solver: TextBFNSolver.sde_bfnsolver1_update; continuous, the 'bfn' line in ImageBFNSolver.sde_euler_update."""
    gaussian = isinstance(flow, ContinuousBayesianFlow)
    return integrate(_solver_rule("sde", 1), output_fn, flow, shape, times, start_above_zero=gaussian, who="sde1", **options)


@prefers_grid("solver")
def sde2(output_fn: OutputFn, flow: BayesianFlow, shape, times, **options):
    """SDE-BFN-Solver++2, second-order multistep SDE: ImageBFNSolver / TextBFNSolver.sde_bfnsolver2_multi_step_update."""
    gaussian = isinstance(flow, ContinuousBayesianFlow)
    return integrate(_solver_rule("sde", 2), output_fn, flow, shape, times, start_above_zero=gaussian, who="sde2", **options)
