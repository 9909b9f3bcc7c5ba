"""Fused, chunked kernels for the discretised-Gaussian quantities that sum over K bins.

Written plainly (K-wide tensors through autograd) the discretised losses dominate a training step
at K = 256: every op allocates and streams B x D x K floats, and autograd keeps several such
tensors for the backward pass. Here each quantity's gradient with respect to (mu_x, sigma_x) is
computed in the forward pass from the same K-wide intermediates, a chunk of rows at a time in
preallocated buffers that stay in cache (fresh large CPU tensors cost page faults on every op),
and only (B x D)-sized tensors are kept for backward.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
INV_SQRT_2 = 1.0 / math.sqrt(2.0)
LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
CHUNK_ELEMENTS = 1 << 17  # K-wide work per chunk: 512 KB per float buffer


class _Workspace:
    """Named (rows x cols) buffers reused across chunks; view(name, n, cols) gives the first n rows."""

    def __init__(self, rows: int, like: Tensor):
        self.rows, self.like, self.bufs = rows, like, {}

    def __call__(self, name: str, n: int, cols: int, dtype=None) -> Tensor:
        buf = self.bufs.get(name)
        if buf is None:
            buf = self.bufs[name] = torch.empty(self.rows, cols, dtype=dtype or self.like.dtype, device=self.like.device)
        return buf[:n]


def bin_centres(num_bins: int, device=None, dtype=torch.float32) -> Tensor:
    """k_c = (2k + 1) / K - 1 for k = 0..K-1 (bins of width 2/K on [-1, 1])."""
    return (2.0 * torch.arange(num_bins, device=device, dtype=dtype) + 1.0) / num_bins - 1.0


def bin_index(x: Tensor, num_bins: int) -> Tensor:
    """The bin that holds each value of x (inverse of bin_centres)."""
    return ((x + 1.0) * (num_bins / 2.0)).floor().clamp(0, num_bins - 1).long()


def _grid(k: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """The K bin centres and the K - 1 inner bin edges, in like's dtype and device."""
    centres = bin_centres(k, like.device, like.dtype)
    return centres, centres[:-1] + 1.0 / k


def _chunks(n: int, k: int):
    step = max(1, CHUNK_ELEMENTS // k)
    return step, [(i, min(n, i + step)) for i in range(0, n, step)]


def _standardise(ws: _Workspace, edges: Tensor, m: Tensor, inv_s: Tensor) -> Tensor:
    """z_j = (e_j - mu) / sigma for the K - 1 inner edges."""
    z = ws("z", m.shape[0], edges.numel())
    return torch.sub(edges, m, out=z).mul_(inv_s)


def _edge_density(ws: _Workspace, z: Tensor, name: str = "phi") -> Tensor:
    """phi(z), the standard normal density.

    The exponent is floored at -80 (phi ~ 1e-35, still a normal float): far-away edges would
    otherwise underflow into denormals, which the CPU's vector exp handles many times slower.
    """
    return torch.mul(z, z, out=ws(name, z.shape[0], z.shape[1])).mul_(-0.5).clamp_min_(-80.0).exp_().mul_(INV_SQRT_2PI)


class _GradsOfMuSigma(torch.autograd.Function):
    """A kernel whose forward computes its outputs' derivatives w.r.t. (mu, sigma), the first two inputs,
    saves them, and has no gradient for the other inputs: backward is the chain rule, elementwise."""

    @staticmethod
    def backward(ctx, grad):
        gmu, gsig = ctx.saved_tensors
        return (grad * gmu, grad * gsig) + (None,) * ctx.n_other_inputs


class _BinnedMean(_GradsOfMuSigma):
    """sum_k p_k c_k = c_0 + (2/K) sum_j (1 - Phi(z_j)), with d/dmu and d/dsigma from phi(z_j)."""

    @staticmethod
    def forward(ctx, mu: Tensor, sigma: Tensor, k: int):
        shape, mu, sigma = mu.shape, mu.reshape(-1), sigma.reshape(-1)
        need = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        _, edges = _grid(k, mu)
        out = torch.empty_like(mu)
        gmu = torch.empty_like(mu) if need else None
        gsig = torch.empty_like(mu) if need else None
        width = 2.0 / k
        step, chunks = _chunks(mu.numel(), k)
        ws = _Workspace(step, mu)
        for a, b in chunks:
            inv_s = sigma[a:b, None].reciprocal()
            z = _standardise(ws, edges, mu[a:b, None], inv_s)
            erf = torch.mul(z, INV_SQRT_2, out=ws("erf", b - a, k - 1)).erf_()
            # sum_j (1 - Phi(z_j)) = (K - 1)/2 - sum_j erf(z_j / sqrt 2) / 2
            out[a:b] = (1.0 / k - 1.0) + width * (0.5 * (k - 1) - 0.5 * erf.sum(-1))
            if need:
                phi = _edge_density(ws, z)
                gmu[a:b] = width * phi.sum(-1) * inv_s[:, 0]
                gsig[a:b] = width * phi.mul_(z).sum(-1) * inv_s[:, 0]
        if need:
            ctx.save_for_backward(gmu.reshape(shape), gsig.reshape(shape))
        ctx.n_other_inputs = 1
        return out.reshape(shape)


def binned_mean(mu: Tensor, sigma: Tensor, k: int) -> Tensor:
    """E[k_c] under the discretised N(mu, sigma^2) over K bins with clipped edges."""
    return _BinnedMean.apply(mu, sigma, k)


class _ReceiverNLL(_GradsOfMuSigma):
    """-(1/S) sum_s ln sum_k p_k exp(-alpha/2 (c_k - x)(c_k + x - 2 y_s)), per dimension."""

    @staticmethod
    def forward(ctx, mu, sigma, x, ys, alpha, k: int, min_prob: float):
        shape = mu.shape
        mu, sigma, x, alpha = (v.reshape(-1) for v in (mu, sigma, x, alpha))
        ys = ys.reshape(ys.shape[0], -1)
        n_draws = ys.shape[0]
        need = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        centres, edges = _grid(k, mu)
        out = torch.zeros_like(mu)
        gmu = torch.empty_like(mu) if need else None
        gsig = torch.empty_like(mu) if need else None
        log_width = math.log(2.0 / k) - LOG_SQRT_2PI
        step, chunks = _chunks(mu.numel(), k)
        ws = _Workspace(step, mu)
        for a, b in chunks:
            n = b - a
            m, s, xa, al = mu[a:b, None], sigma[a:b, None], x[a:b, None], alpha[a:b, None]
            inv_s = s.reciprocal()
            z = _standardise(ws, edges, m, inv_s)  # (n, K-1)
            cdf = ws("cdf", n, k + 1)  # Phi at all K + 1 edges, the outer two at -inf and +inf
            cdf[:, 0], cdf[:, k] = 0.0, 1.0
            torch.mul(z, INV_SQRT_2, out=cdf[:, 1:k]).erf_().mul_(0.5).add_(0.5)
            p = torch.sub(cdf[:, 1:], cdf[:, :-1], out=ws("p", n, k))
            u = torch.sub(centres, m, out=ws("u", n, k)).mul_(inv_s)  # standardised centres
            guarded = torch.lt(p, min_prob, out=ws("guard", n, k, torch.bool))
            # ln p_k, or below min_prob ln(density at the centre x bin width) (reference guard)
            log_p = torch.clamp(p, min=min_prob, out=ws("log_p", n, k)).log_()
            log_dens = torch.mul(u, u, out=ws("tmp", n, k)).mul_(-0.5).add_(log_width - s.log())  # no exp: no underflow
            log_p = torch.where(guarded, log_dens, log_p, out=ws("log_p2", n, k))
            cmx = torch.sub(centres, xa, out=ws("cmx", n, k))
            weights = ws("w", n, k).zero_() if need else None
            for d in range(n_draws):
                lg = torch.add(centres, xa - 2.0 * ys[d, a:b, None], out=ws("lg", n, k))
                lg.mul_(cmx).mul_(-0.5 * al).add_(log_p)
                top = lg.amax(-1, keepdim=True)
                total = lg.sub_(top).clamp_min_(-80.0).exp_().sum(-1, keepdim=True)  # floor: see _edge_density
                out[a:b] -= (top + total.log())[:, 0] / n_draws
                if need:
                    weights.add_(lg.div_(total))  # softmax over bins of this draw's logits
            if need:
                # d ln p_k from the densities at the bin's two edges (phi z -> 0 at +-inf), or the guard's slope.
                phi = ws("phi_pad", n, k + 1)
                phi[:, 0], phi[:, k] = 0.0, 0.0
                _edge_density(ws, z, "phi")
                phi[:, 1:k] = ws("phi", n, k - 1)
                zphi = ws("zphi_pad", n, k + 1)
                zphi[:, 0], zphi[:, k] = 0.0, 0.0
                torch.mul(phi[:, 1:k], z, out=zphi[:, 1:k])
                weights.mul_(-1.0 / n_draws)
                for grad_out, edge_terms, guard_slope in ((gmu, phi, None), (gsig, zphi, True)):
                    d = torch.sub(edge_terms[:, :-1], edge_terms[:, 1:], out=ws("d", n, k)).div_(p)
                    slope = torch.mul(u, u, out=ws("tmp", n, k)).sub_(1.0) if guard_slope else u
                    d = torch.where(guarded, slope, d, out=ws("d2", n, k))
                    grad_out[a:b] = d.mul_(weights).sum(-1) * inv_s[:, 0]
        if need:
            ctx.save_for_backward(gmu.reshape(shape), gsig.reshape(shape))
        ctx.n_other_inputs = 5
        return out.reshape(shape)


def receiver_nll(mu: Tensor, sigma: Tensor, x: Tensor, ys: Tensor, alpha: Tensor, k: int, min_prob: float = 1e-5) -> Tensor:
    """ln N(y | x, 1/alpha) - ln sum_k p_O(k) N(y | k_c, 1/alpha) per dimension, averaged over draws ys (S, ...).

    The Gaussians share their variance, so their ratio is exp(-alpha/2 (k_c - x)(k_c + x - 2y)):
    exact in float32 even where alpha is near sigma_1^-2 and expanding the squares would cancel.
    """
    return _ReceiverNLL.apply(mu, sigma, x, ys, alpha.expand_as(mu), k, min_prob)
