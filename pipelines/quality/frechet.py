"""The Fréchet distance between Gaussians fitted to two sets of features: one implementation, used by
the digits score (the classifier's features) and by FID (Inception's features; Heusel et al. 2017).

d^2 = |mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^(1/2)).

The trace of the square root is taken as tr((S_1^(1/2) S_2 S_1^(1/2))^(1/2)), which has the same
eigenvalues as (S_1 S_2)^(1/2) but is a symmetric positive semi-definite product: its eigenvalues come
from ``eigh`` (real, clipped at 0), so singular covariances (dead ReLU features, fewer samples than
dimensions) need no epsilon offset and leave no imaginary part, unlike a general ``sqrtm``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from pipelines.errors import PipelineError


class GaussianStats(NamedTuple):
    """Mean and covariance (float64) of a set of feature vectors."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int


def gaussian_stats(features: np.ndarray) -> GaussianStats:
    """The mean and unbiased covariance of (N, D) features, N >= 2."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise PipelineError(f"Fréchet statistics need (N >= 2, D) features, got shape {x.shape}: pass more samples")
    if not np.isfinite(x).all():
        raise PipelineError("features contain NaN or infinity: check the samples passed to the quality metrics")
    return GaussianStats(x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False)), len(x))


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix (negative rounding clipped)."""
    sym = (matrix + matrix.T) / 2
    values, vectors = np.linalg.eigh(sym)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S_1 S_2)^(1/2)) for symmetric PSD S_1, S_2, via the symmetric S_1^(1/2) S_2 S_1^(1/2)."""
    root1 = psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    values = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(np.clip(values, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise PipelineError(f"Fréchet distance of mismatched statistics: means {mu1.shape} / {mu2.shape}, "
                            f"covariances {sigma1.shape} / {sigma2.shape}; compute both with the same features")
    diff = mu1 - mu2
    d2 = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))
    return max(d2, 0.0)  # rounding can leave a tiny negative for identical statistics


def frechet_distance_of_stats(a: GaussianStats, b: GaussianStats) -> float:
    """frechet_distance between two fitted GaussianStats."""
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def frechet_distance_of_features(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to feature sets a (N, D) and b (M, D)."""
    return frechet_distance_of_stats(gaussian_stats(a), gaussian_stats(b))
