"""What a data set source is: named splits of one stored field, loaded as one array plus provenance.

Every source stores raw values (grey levels, symbol ids, float points) and declares a default
model-side read; the read itself (binarised, rebinned, windowed, ...) happens in the reader.

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
    training windows); ``DatasetSource.load`` fills it in otherwise."""

    data: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    field: FieldSpec | None = None


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
    default_read: ReadSpec
    variants: dict[str, ReadSpec] = {}
    needs_download: bool = False
    holdout: Holdout | None = None  # where set, ``val`` is held out of ``holdout.parent``

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise PipelineError(f"{self.name} has no split {split!r}: choose one of {', '.join(self.splits)}")

    def load(self, split: str, *, source_dir: str | None = None, seed: int = 0,
             on_progress: ProgressFn | None = None) -> SourceSplit:
        """The split's samples (N, *field.shape) and provenance for the manifest."""
        self.check_split(split)
        if self.holdout is not None and split in (VAL_SPLIT, self.holdout.parent):
            parent = self._load(self.holdout.parent, source_dir=source_dir, seed=seed, on_progress=on_progress)
            n = len(parent.data)
            rows = self.holdout.indices(n)[split]
            out = SourceSplit(np.ascontiguousarray(parent.data[rows]),
                              {**parent.info, "holdout": self.holdout.record(split, n)}, parent.field)
        else:
            out = self._load(split, source_dir=source_dir, seed=seed, on_progress=on_progress)
        out.field = out.field or self.field
        expected = (len(out.data), *out.field.shape)
        if out.data.shape != expected or out.data.dtype != np.dtype(out.field.dtype):
            raise PipelineError(f"{self.name}/{split}: loaded {out.data.dtype}{out.data.shape}, expected "
                                f"{out.field.dtype}{expected}; the source files are not the canonical ones")
        out.info = {"name": self.name, "version": self.version, **out.info}
        return out

    @abstractmethod
    def _load(self, split: str, *, source_dir: str | None, seed: int, on_progress: ProgressFn | None) -> SourceSplit:
        """A split as the data set publishes it (the parent of a held-out split, never ``val`` itself)."""


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
