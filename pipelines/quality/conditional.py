"""Class-conditional sample quality: does a sample drawn for class c look like class c?

``class_accuracy`` scores samples with the data set's classifier (digits: the cached DigitsNet of
digits_classifier.py) against the classes they were drawn for: ``class_accuracy`` over all samples
and ``class_accuracy_<c>`` for each class requested. Only digits has a classifier that runs here with
no download; other data sets get a one-line error naming that.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from pipelines.errors import PipelineError
from pipelines.quality.metrics import DEFAULT, _default_levels, quality_dataset

CLASSIFIED = ("digits",)  # data sets with a local classifier


def has_classifier(dataset: str) -> bool:
    """Whether class accuracy can be measured on this data set here."""
    return quality_dataset(dataset) in CLASSIFIED


def class_metric_name(c: int | None = None) -> str:
    """class_accuracy, or class_accuracy_<c> for class c: the one place these names are spelled."""
    return "class_accuracy" if c is None else f"class_accuracy_{int(c)}"


def class_accuracy(dataset: str, samples: np.ndarray, labels: np.ndarray, *,
                   levels: int | None | Literal["default"] = DEFAULT, cache_dir: str | Path | None = None) -> dict[str, float]:
    """Fraction of samples the classifier assigns to the class they were drawn for: overall and per class.

    samples: as the sampler returns them (levels as quality_metrics takes them); labels: (N,) class ids.
    """
    name = quality_dataset(dataset)
    if name not in CLASSIFIED:
        raise PipelineError(f"class accuracy needs a classifier of the data: there is one for {', '.join(CLASSIFIED)}, "
                            f"not {name}")
    labels = np.asarray(labels, np.int64).reshape(-1)
    if len(labels) != len(samples) or not len(labels):
        raise PipelineError(f"class accuracy needs one label per sample, got {len(labels)} labels for {len(samples)} samples")
    from pipelines.quality.digits_classifier import load_digits_classifier
    from pipelines.quality.image_metrics import samples_to_unit

    k = _default_levels(name) if levels == DEFAULT else levels
    predicted = load_digits_classifier(cache_dir).probabilities(samples_to_unit(samples, k)).argmax(1)
    hit = predicted == labels
    out = {class_metric_name(): float(hit.mean())}
    for c in sorted(set(labels.tolist())):
        out[class_metric_name(c)] = float(hit[labels == c].mean())
    return out
