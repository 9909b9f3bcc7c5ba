"""What a data set source is: named splits of one stored field, loaded as one array plus provenance.

Every source stores raw values (grey levels, symbol ids, float points) and declares a default
model-side read; the read itself (binarised, rebinned, windowed, ...) happens in the reader.
A source with class labels (for conditional models) declares ``label_field`` (K classes, optional
names, schema.class_label_field) and loads one int64 label per sample alongside the data.

Validation data has one name everywhere, ``val``. Data sets that publish no validation split (MNIST,
CIFAR-10, digits) hold one out of their training split deterministically (``Holdout``): a fixed
fraction drawn with a fixed seed, recorded in both manifests, and ``train`` then holds only the
rest, so the two never overlap whatever ``--seed`` orders the shards.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.data.download import ProgressFn
from pipelines.data.schema import FieldSpec, ReadSpec
from pipelines.errors import PipelineError

VAL_SPLIT = "val"


@dataclass
class SourceSplit:
    """One split as a single array (N, *shape) of the field's dtype, and where it came from.

    ``field`` is set where a split is stored differently from the source's default (text8's
    training windows); ``DatasetSource.load`` fills it in otherwise.  ``labels``: the class of each
    sample, int64 (N,) in 0..K-1 of the source's ``label_field``, or None where it has none."""

    data: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    field: FieldSpec | None = None
    labels: np.ndarray | None = None


@dataclass(frozen=True)
class Holdout:
    """A validation split held out of a parent split: ``fraction`` of it, drawn with ``seed``.

    The seed is part of the data set's definition, not of a write: every ``bfn data shard`` of the
    parent and of ``val`` agrees on which examples are held out.
    """

    fraction: float
    parent: str = "train"
    seed: int = 2147483647  # the reference code's random_split seed, for the same spirit of a fixed cut

    def indices(self, n: int) -> dict[str, np.ndarray]:
        """Sorted example indices of the parent split for ``val`` and for what stays in the parent."""
        if n < 2:
            raise PipelineError(f"cannot hold out a validation split from {n} example(s) of {self.parent}")
        order = np.random.default_rng(self.seed).permutation(n)
        held = min(n - 1, max(1, int(round(self.fraction * n))))
        return {VAL_SPLIT: np.sort(order[:held]), self.parent: np.sort(order[held:])}

    def record(self, split: str, n: int) -> dict[str, Any]:
        """The manifest's account of the cut, identical in the parent's and the validation manifest
        but for ``role``."""
        return {"parent": self.parent, "fraction": self.fraction, "seed": self.seed, "parent_samples": int(n),
                "held_out": int(len(self.indices(n)[VAL_SPLIT])),
                "role": "validation" if split == VAL_SPLIT else "training"}


class DatasetSource(ABC):
    """A named data set: its splits, the stored field, the default read, and how to load a split."""

    name: str = ""
    description: str = ""
    splits: tuple[str, ...] = ("train", "test")
    version: str = "1"
    field: FieldSpec
    label_field: FieldSpec | None = None  # the class label ``y`` where the data set has one
    default_read: ReadSpec
    variants: dict[str, ReadSpec] = {}
    needs_download: bool = False
    holdout: Holdout | None = None  # where set, ``val`` is held out of ``holdout.parent``

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise PipelineError(f"{self.name} has no split {split!r}: choose one of {', '.join(self.splits)}")

    def load(self, split: str, *, source_dir: str | None = None, seed: int = 0,
             on_progress: ProgressFn | None = None, labels: bool = True) -> SourceSplit:
        """The split's samples (N, *field.shape), their class labels (where the source has them and
        ``labels`` is on; None otherwise) and provenance for the manifest."""
        self.check_split(split)
        labels = labels and self.label_field is not None
        kw = {"source_dir": source_dir, "seed": seed, "on_progress": on_progress, "labels": labels}
        if self.holdout is not None and split in (VAL_SPLIT, self.holdout.parent):
            parent = self._load(self.holdout.parent, **kw)
            n = len(parent.data)
            rows = self.holdout.indices(n)[split]
            out = SourceSplit(np.ascontiguousarray(parent.data[rows]),
                              {**parent.info, "holdout": self.holdout.record(split, n)}, parent.field,
                              None if parent.labels is None else parent.labels[rows])
        else:
            out = self._load(split, **kw)
        out.field = out.field or self.field
        expected = (len(out.data), *out.field.shape)
        if out.data.shape != expected or out.data.dtype != np.dtype(out.field.dtype):
            raise PipelineError(f"{self.name}/{split}: loaded {out.data.dtype}{out.data.shape}, expected "
                                f"{out.field.dtype}{expected}; the source files are not the canonical ones")
        out.labels = self._checked_labels(split, out.labels, len(out.data)) if labels else None
        out.info = {"name": self.name, "version": self.version, **out.info}
        return out

    def _checked_labels(self, split: str, labels: np.ndarray | None, n: int) -> np.ndarray:
        k = self.label_field.num_classes
        y = np.asarray(labels) if labels is not None else None
        if y is None or y.shape != (n,) or y.dtype.kind not in "iu" or (n and (y.min() < 0 or y.max() >= k)):
            got = "none" if y is None else f"{y.dtype}{y.shape}"
            raise PipelineError(f"{self.name}/{split}: loaded labels {got}, expected {n} class ids in 0..{k - 1}; "
                                "the source files are not the canonical ones (or pass --no-labels)")
        return np.ascontiguousarray(y, dtype=np.int64)

    @abstractmethod
    def _load(self, split: str, *, source_dir: str | None, seed: int, on_progress: ProgressFn | None,
              labels: bool) -> SourceSplit:
        """A split as the data set publishes it (the parent of a held-out split, never ``val`` itself);
        with its ``labels`` where asked (a source whose labels come free may always give them)."""


def check_holdouts(train: dict[str, Any], val: dict[str, Any], train_url: str, val_url: str) -> None:
    """Raise when a validation set held out of a training split may overlap what training reads:
    both manifests' ``source`` must describe the same cut of the same parent files."""
    held, kept = val.get("holdout"), train.get("holdout")
    if held is None:
        return  # a split the data set publishes (text8's, a synthetic set's): disjoint by construction
    same_cut = kept is not None and all(kept.get(k) == held.get(k) for k in ("parent", "fraction", "seed", "parent_samples"))
    if not same_cut or train.get("files") != val.get("files") or train.get("name") != val.get("name"):
        raise PipelineError(f"data.val {val_url} was held out of a training split that data.train {train_url} "
                            "does not exclude: rewrite both with the same `bfn data shard` version "
                            "(--split train and --split val)")
