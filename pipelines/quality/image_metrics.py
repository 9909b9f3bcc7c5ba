"""Sample-quality scores of images: the digits scores (Fréchet distance in the digits classifier's
feature space, its confidence, the coverage of its classes) and FID over any feature extractor
(Heusel et al. 2017), the Inception one (inception.py) or an injected one.

Samples come as a BFN returns them: ``discretised`` float bin centres (2k + 1) / K - 1 or ``discrete``
int class indices k, with ``levels`` = K; or, with ``levels=None``, float intensities in [-1, 1].
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from pipelines.data.transforms import rebin_levels
from pipelines.errors import PipelineError
from pipelines.quality.digits_classifier import DIGITS_LEVELS, NUM_CLASSES, DigitsClassifier, digits_labelled, levels_to_unit
from pipelines.quality.frechet import GaussianStats, frechet_distance_of_stats, gaussian_stats

# (N, H, W, C) uint8 images 0..255 -> (N, D) float features
ImageFeatures = Callable[[np.ndarray], np.ndarray]


def samples_to_levels(samples: np.ndarray, levels: int) -> np.ndarray:
    """Samples (class indices or bin centres of K = levels bins in [-1, 1]) -> int64 levels 0..K-1."""
    x = np.asarray(samples)
    if np.issubdtype(x.dtype, np.integer) or x.dtype == bool:
        k = x.astype(np.int64)
        if k.size and (k.min() < 0 or k.max() >= levels):
            raise PipelineError(f"integer samples hold values {k.min()}..{k.max()}, outside 0..{levels - 1}: "
                                "pass the number of levels the model was trained with (levels=K)")
        return k
    if not np.isfinite(x).all():
        raise PipelineError("samples contain NaN or infinity: the sampler diverged; check the model and its step count")
    # the same floor as bfn_core.bin_index, so bin centres land exactly on their level
    return np.clip(np.floor((x.astype(np.float64) + 1.0) * (levels / 2.0)), 0, levels - 1).astype(np.int64)


def samples_to_unit(samples: np.ndarray, levels: int | None) -> np.ndarray:
    """Samples -> float32 intensities in [-1, 1], level k of K at 2k / (K - 1) - 1 (levels=None: clipped as given)."""
    if levels is None:
        x = np.asarray(samples, dtype=np.float32)
        if not np.isfinite(x).all():
            raise PipelineError("samples contain NaN or infinity: the sampler diverged; check the model and its step count")
        return np.clip(x, -1.0, 1.0)
    return levels_to_unit(samples_to_levels(samples, levels), levels)


def samples_to_uint8(samples: np.ndarray, levels: int | None) -> np.ndarray:
    """Samples -> uint8 images 0..255 (level k of K at round(255 k / (K - 1)))."""
    unit = samples_to_unit(samples, levels)
    return np.round((unit.astype(np.float64) + 1.0) * 127.5).astype(np.uint8)


def class_entropy(predicted: np.ndarray, num_classes: int = NUM_CLASSES) -> float:
    """Entropy (nats) of the histogram of predicted classes: ln(num_classes) when every class is equally
    often predicted, 0 when all samples are one class (mode collapse)."""
    counts = np.bincount(np.asarray(predicted, np.int64), minlength=num_classes).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum()) + 0.0  # + 0.0: one class gives 0.0, not -0.0


def digits_reference(levels: int | None) -> np.ndarray:
    """The digits test split as intensities in [-1, 1], re-binned to ``levels`` so the reference is read as
    the samples are (e.g. binarised for a binarised model)."""
    images, _ = digits_labelled("test")
    if levels is None or levels == DIGITS_LEVELS:
        return levels_to_unit(images, DIGITS_LEVELS)
    return levels_to_unit(rebin_levels(DIGITS_LEVELS, levels)[images], levels)


def digits_scores(classifier: DigitsClassifier, samples: np.ndarray, *, levels: int | None = DIGITS_LEVELS,
                  reference: np.ndarray | GaussianStats | None = None) -> dict[str, float]:
    """fd_digits (Fréchet distance to the test split in the classifier's features, cf. Heusel et al. 2017),
    digits_confidence (mean top-class probability) and digits_class_entropy (nats; ln 10 = all classes
    equally covered) of digits samples.

    ``reference``: intensities in [-1, 1] (N, 8, 8[, 1]) or precomputed GaussianStats; default the test split.
    """
    unit = samples_to_unit(samples, levels)
    probs = classifier.probabilities(unit)
    if reference is None:
        reference = digits_reference(levels)
    ref_stats = reference if isinstance(reference, GaussianStats) else gaussian_stats(classifier.features(reference))
    return {
        "fd_digits": frechet_distance_of_stats(gaussian_stats(classifier.features(unit)), ref_stats),
        "digits_confidence": float(probs.max(axis=1).mean()),
        "digits_class_entropy": class_entropy(probs.argmax(axis=1)),
    }


def features_in_batches(extractor: ImageFeatures, images: np.ndarray, batch_size: int = 200) -> np.ndarray:
    """extractor applied to uint8 images in batches, as one float64 (N, D) array."""
    if len(images) == 0:
        raise PipelineError("no images to score: pass at least two samples")
    return np.concatenate([np.asarray(extractor(images[i:i + batch_size]), np.float64)
                           for i in range(0, len(images), batch_size)])


def fid(samples_uint8: np.ndarray, reference: np.ndarray | GaussianStats, extractor: ImageFeatures) -> float:
    """Fréchet Inception Distance (Heusel et al. 2017) between uint8 images (N, H, W, C) and a reference
    (uint8 images or their GaussianStats under the same extractor), in the extractor's feature space."""
    ref = reference if isinstance(reference, GaussianStats) else gaussian_stats(
        features_in_batches(extractor, _as_images(reference)))
    return frechet_distance_of_stats(gaussian_stats(features_in_batches(extractor, _as_images(samples_uint8))), ref)


def _as_images(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images)
    if x.dtype != np.uint8:
        raise PipelineError(f"FID takes uint8 images 0..255, got {x.dtype}: convert samples with samples_to_uint8")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise PipelineError(f"FID takes images (N, H, W, 1 or 3), got shape {x.shape}")
    return x
