"""One entry point for sample quality: ``quality_metrics(dataset, samples)`` picks the scores that fit a
data set, and ``QUALITY_METRIC`` names each data set's headline score and its direction (what a sweep
optimises: ``mode`` as Ray Tune and the sweep spec spell it).

| data set | metrics (headline first) | reference (default) |
| --- | --- | --- |
| digits | fd_digits (min), digits_confidence, digits_class_entropy (ln 10 = full coverage) | digits test split |
| synthetic-mixture | nll_true (min, nats/point), mmd2_true, mmd_bandwidth | GaussianMixture2D() |
| synthetic-markov | nll_true_per_token (min, nats), entropy_true_per_token | MarkovSequences() |
| text8 | spelling_accuracy (max), spelling_words | text8 training vocabulary |
| mnist, cifar10 | fid (min) | the source's test split (Inception stats cached) |
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipelines.errors import PipelineError


@dataclass(frozen=True)
class QualityMetric:
    """A data set's headline quality metric and whether lower ("min") or higher ("max") is better."""

    name: str
    mode: Literal["min", "max"]

    @property
    def lower_is_better(self) -> bool:
        return self.mode == "min"


QUALITY_METRIC: dict[str, QualityMetric] = {
    "digits": QualityMetric("fd_digits", "min"),
    "synthetic-mixture": QualityMetric("nll_true", "min"),
    "synthetic-markov": QualityMetric("nll_true_per_token", "min"),
    "text8": QualityMetric("spelling_accuracy", "max"),
    "mnist": QualityMetric("fid", "min"),
    "cifar10": QualityMetric("fid", "min"),
}
ALIASES = {"mixture": "synthetic-mixture", "markov": "synthetic-markov"}
DEFAULT = "default"  # levels: the data set's default read (K of its default ReadSpec)


def quality_dataset(name: str) -> str:
    """The registered data-set name that ``name`` (or its short alias) stands for."""
    key = ALIASES.get(name, name)
    if key not in QUALITY_METRIC:
        raise PipelineError(f"no quality metrics for data set {name!r}: choose one of {', '.join(QUALITY_METRIC)}")
    return key


def headline(name: str) -> QualityMetric:
    """QUALITY_METRIC of a data set name or alias."""
    return QUALITY_METRIC[quality_dataset(name)]


def _default_levels(dataset: str) -> int | None:
    from pipelines.data.sources import get_source

    return get_source(dataset).default_read.num_classes


def quality_metrics(dataset: str, samples: np.ndarray, *, reference: Any = None,
                    levels: int | None | Literal["default"] = DEFAULT, seed: int = 0,
                    cache_dir: str | Path | None = None, source_dir: str | None = None,
                    feature_extractor=None, weights_path: str | Path | None = None,
                    device: str = "auto") -> dict[str, float]:
    """Sample-quality metrics of ``samples`` (as the BFN sampler returns them) for ``dataset``.

    reference: digits: intensities (N, 8, 8[, 1]) in [-1, 1] or GaussianStats; synthetic-mixture /
    synthetic-markov: the source object (its parameters are the truth); text8: a vocabulary (set of
    words); mnist / cifar10: uint8 images (N, H, W, C) or GaussianStats. None: the defaults in the
    module's table. levels: K of the samples' discretised / discrete read ("default": the data set's
    default read; None: float intensities in [-1, 1]). feature_extractor replaces Inception for FID
    (uint8 (N, H, W, C) -> (N, D)); weights_path is Inception's local weights file; cache_dir holds the
    digits classifier, vocabularies and reference statistics ($BFN_HOME/quality by default).
    """
    name = quality_dataset(dataset)
    k = _default_levels(name) if levels == DEFAULT else levels
    if name == "digits":
        from pipelines.quality.digits_classifier import load_digits_classifier
        from pipelines.quality.image_metrics import digits_scores

        return digits_scores(load_digits_classifier(cache_dir), samples, levels=k, reference=reference)
    if name == "synthetic-mixture":
        from pipelines.data.sources import GaussianMixture2D
        from pipelines.quality.synthetic import mixture_mmd, mixture_nll

        source = reference if reference is not None else GaussianMixture2D()
        mmd2, bandwidth = mixture_mmd(samples, source, seed=seed)
        return {"nll_true": mixture_nll(samples, source), "mmd2_true": mmd2, "mmd_bandwidth": bandwidth}
    if name == "synthetic-markov":
        from pipelines.data.sources import MarkovSequences
        from pipelines.quality.synthetic import markov_entropy_per_token, markov_nll_per_token

        source = reference if reference is not None else MarkovSequences()
        return {"nll_true_per_token": markov_nll_per_token(samples, source),
                "entropy_true_per_token": markov_entropy_per_token(source)}
    if name == "text8":
        from pipelines.quality.spelling import spelling_accuracy, text8_vocabulary

        if reference is None:
            vocabulary = text8_vocabulary(source_dir, cache_dir)
        else:
            vocabulary = frozenset(w.encode("ascii") if isinstance(w, str) else bytes(w) for w in reference)
        accuracy, words = spelling_accuracy(samples, vocabulary)
        return {"spelling_accuracy": accuracy, "spelling_words": float(words)}
    return {"fid": _fid(name, samples, reference=reference, levels=k, cache_dir=cache_dir, source_dir=source_dir,
                        feature_extractor=feature_extractor, weights_path=weights_path, device=device)}


def _fid(name: str, samples: np.ndarray, *, reference, levels, cache_dir, source_dir, feature_extractor,
         weights_path, device) -> float:
    from pipelines.quality.frechet import GaussianStats
    from pipelines.quality.image_metrics import fid, samples_to_uint8
    from pipelines.quality.inception import cached_reference_stats, inception_extractor

    extractor = feature_extractor if feature_extractor is not None else inception_extractor(weights_path, device)
    images = samples_to_uint8(samples, levels)
    if reference is None:
        from pipelines.data.sources import get_source

        reference = get_source(name).load("test", source_dir=source_dir).data
    if not isinstance(reference, GaussianStats):
        reference = cached_reference_stats(np.asarray(reference), extractor, cache_dir)
    return fid(images, reference, extractor)
