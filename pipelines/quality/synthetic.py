"""Exact sample-quality scores of the synthetic sets, whose generating process is known: the mean
negative log-likelihood of samples under the true density (Gaussian mixture) or the true chain
(Markov sequences), and a kernel two-sample distance (MMD, Gretton et al. 2012) to fresh true draws.

All likelihoods are in nats. The mixture's density is that of the unclipped mixture: the source clips
points to [-1, 1], which moves a mass below 1e-20 for its default radius 0.6 and std 0.06.
"""
from __future__ import annotations

import numpy as np

from pipelines.data.sources import GaussianMixture2D, MarkovSequences
from pipelines.errors import PipelineError
from pipelines.seeds import numpy_rng

MMD_MAX_POINTS = 4000  # MMD costs O(N^2) memory and time: larger sets are subsampled (fixed stream)


# ------------------------------------------------------------------------------------ Gaussian mixture

def _points(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise PipelineError(f"mixture samples must be points (N, 2), got shape {x.shape}: pass samples of a "
                            "synthetic-mixture model")
    if not np.isfinite(x).all():
        raise PipelineError("samples contain NaN or infinity: the sampler diverged; check the model and its step count")
    return x


def mixture_log_density(points: np.ndarray, source: GaussianMixture2D) -> np.ndarray:
    """ln p(x) of each point (N, 2) under the source's isotropic Gaussian mixture (means, std, weights)."""
    x = _points(points)
    means, weights, std = source.means(), source.weights(), float(source.std)
    sq = ((x[:, None, :] - means[None, :, :]) ** 2).sum(-1)  # (N, components)
    log_comp = np.log(weights)[None, :] - sq / (2 * std ** 2) - x.shape[1] * np.log(std * np.sqrt(2 * np.pi))
    top = log_comp.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(log_comp - top).sum(axis=1, keepdims=True)))[:, 0]


def mixture_nll(samples: np.ndarray, source: GaussianMixture2D) -> float:
    """Mean -ln p(x) (nats per point) of samples under the true mixture density."""
    return float(-mixture_log_density(samples, source).mean())


def mixture_draws(source: GaussianMixture2D, n: int, rng: np.random.Generator) -> np.ndarray:
    """n fresh points from the source's process: a component by weight, isotropic noise, clipped to [-1, 1]."""
    comp = rng.choice(source.components, size=n, p=source.weights())
    x = source.means()[comp] + source.std * rng.standard_normal((n, 2))
    return np.clip(x, -1.0, 1.0)


def median_bandwidth(points: np.ndarray) -> float:
    """The median heuristic: the median Euclidean distance between distinct points (Gretton et al. 2012)."""
    x = np.asarray(points, np.float64)
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return float(np.sqrt(np.median(d2[np.triu_indices(len(x), k=1)])))


def gaussian_mmd2(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """The unbiased estimate of MMD^2 between samples x (N, D) and y (M, D) with the Gaussian kernel
    exp(-|a - b|^2 / (2 bandwidth^2)) (Gretton et al. 2012, eq. 3); it can be slightly negative."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or len(y) < 2:
        raise PipelineError(f"MMD needs at least two points on each side, got {len(x)} and {len(y)}")

    def kernel(a, b):
        d2 = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2 * a @ b.T
        return np.exp(-np.clip(d2, 0, None) / (2 * bandwidth ** 2))

    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    n, m = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


def mixture_mmd(samples: np.ndarray, source: GaussianMixture2D, *, seed: int = 0,
                bandwidth: float | None = None) -> tuple[float, float]:
    """(unbiased MMD^2, bandwidth) between samples and as many fresh true draws (stream "quality-mmd", seed).

    Bandwidth rule: the median heuristic on the true draws alone, so every scored model is measured with
    the same kernel for a given seed and sample count."""
    rng = numpy_rng("quality-mmd", seed)
    x = _points(samples)
    if len(x) > MMD_MAX_POINTS:
        x = x[np.sort(rng.choice(len(x), MMD_MAX_POINTS, replace=False))]
    ref = mixture_draws(source, len(x), rng)
    if bandwidth is None:
        bandwidth = median_bandwidth(ref[:1000])
    return gaussian_mmd2(x, ref, bandwidth), float(bandwidth)


def mixture_entropy_separated(source: GaussianMixture2D) -> float:
    """The mixture's entropy (nats) in the limit of well-separated components: H(weights) + D/2 ln(2 pi e std^2)."""
    w = source.weights()
    return float(-(w * np.log(w)).sum() + np.log(2 * np.pi * np.e * source.std ** 2))


# ------------------------------------------------------------------------------------- Markov chain

def _sequences(samples: np.ndarray, source: MarkovSequences) -> np.ndarray:
    s = np.asarray(samples)
    k, length = source.field.num_classes, source.field.shape[0]
    if s.ndim != 2 or s.shape[1] != length:
        raise PipelineError(f"Markov samples must be sequences (N, {length}), got shape {s.shape}")
    if not np.issubdtype(s.dtype, np.integer):
        if not np.array_equal(s, np.round(s)):
            raise PipelineError(f"Markov samples must be symbol ids 0..{k - 1}, got non-integer {s.dtype} values")
        s = s.astype(np.int64)
    if s.size and (s.min() < 0 or s.max() >= k):
        raise PipelineError(f"Markov samples hold symbols {s.min()}..{s.max()}, outside 0..{k - 1}")
    return s.astype(np.int64)


def markov_log_likelihood(samples: np.ndarray, source: MarkovSequences) -> np.ndarray:
    """ln p(sequence) of each sequence (N, L) under the source's initial law and transition matrix."""
    s = _sequences(samples, source)
    init, trans = source.initial_probabilities(), source.transition_matrix()
    with np.errstate(divide="ignore"):  # a zero-probability step is -inf: the sample is impossible
        return np.log(init)[s[:, 0]] + np.log(trans)[s[:, :-1], s[:, 1:]].sum(axis=1)


def markov_nll_per_token(samples: np.ndarray, source: MarkovSequences) -> float:
    """Mean -ln p(sequence) / L (nats per token) of samples under the true chain."""
    s = _sequences(samples, source)
    return float(-markov_log_likelihood(s, source).mean() / s.shape[1])


def markov_entropy_per_token(source: MarkovSequences) -> float:
    """The chain's exact entropy per token over its sequence length L: (H(X_1) + sum_t H(X_t | X_{t-1})) / L."""
    init, trans = source.initial_probabilities(), source.transition_matrix()
    length = source.field.shape[0]
    row_entropy = -(np.where(trans > 0, trans * np.log(np.where(trans > 0, trans, 1.0)), 0.0)).sum(axis=1)
    marginal, total = init, float(-(init[init > 0] * np.log(init[init > 0])).sum())
    for _ in range(1, length):
        total += float(marginal @ row_entropy)
        marginal = marginal @ trans
    return total / length
