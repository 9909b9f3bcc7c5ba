"""The registry of data set sources, and the small ones that need no download.

The paper's sets (``mnist``, ``cifar10``, ``text8``) read their canonical files (paper_sets.py);
``digits`` reads the 8x8 digits that scikit-learn ships; ``synthetic-mixture`` and
``synthetic-markov`` are generated from a seed with a known generating process, recorded in the
manifest so tests and examples can compare against the truth. What a source is: source.py.

Class labels: digits their digit, the mixture its component, the Markov sets their chain
(``synthetic-markov`` has one chain, so one class; ``synthetic-markov-chains`` draws each sequence
from one of 4 chains, a label worth conditioning on).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.data.download import sha256_file
from pipelines.data.paper_sets import CIFAR10, MNIST, Text8, grey_levels_field
from pipelines.data.schema import FieldSpec, ReadSpec, class_label_field
from pipelines.data.source import VAL_SPLIT, DatasetSource, Holdout, SourceSplit
from pipelines.errors import PipelineError
from pipelines.seeds import numpy_rng

__all__ = ["SOURCES", "get_source", "DatasetSource", "SourceSplit", "MNIST", "CIFAR10", "Text8", "Digits",
           "GaussianMixture2D", "MarkovSequences", "ArraySource", "read_sklearn_digit_labels", "digits_split_rows"]


# ------------------------------------------------------------------------------------------- digits

DIGITS_TRAIN = 1500  # of 1797; the rest is the test split
DIGITS_VAL_FRACTION = 0.1  # of those 1500, held out as val (a 1% cut of a small set would be 15 images)


def read_sklearn_digits() -> tuple[np.ndarray, Path]:
    """scikit-learn's shipped digits.csv.gz -> (1797, 8, 8, 1) uint8 values 0..16, without importing
    scikit-learn (seconds of import for one small file)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError("the digits set ships with scikit-learn, which is not installed: pip install scikit-learn")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise PipelineError(f"scikit-learn's digits file is not at {path}: reinstall scikit-learn")
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    return table[:, :64].reshape(-1, 8, 8, 1).astype(np.uint8), path


def read_sklearn_digit_labels() -> np.ndarray:
    """The class (0..9) of each of scikit-learn's shipped digits, in the file's order (its last column)."""
    _, path = read_sklearn_digits()
    return np.loadtxt(path, delimiter=",", dtype=np.int64, usecols=64)


def digits_split_rows(split: str, n: int) -> np.ndarray:
    """Rows of the shipped file in the published ``train`` (before its val holdout) or ``test`` split."""
    order = np.random.default_rng(0).permutation(n)  # fixed: the split never depends on --seed
    return order[:DIGITS_TRAIN] if split == "train" else order[DIGITS_TRAIN:]


class Digits(DatasetSource):
    name = "digits"
    description = "scikit-learn's 8x8 digits (17 grey levels), offline; read discretised K=17 (default) or binarised"
    field = grey_levels_field((8, 8, 1), 17)
    label_field = class_label_field(10, [str(d) for d in range(10)])
    default_read = ReadSpec("discretised", 17)
    variants = {"discretised": ReadSpec("discretised", 17), "binarised": ReadSpec("discrete", 2),
                "discretised16": ReadSpec("discretised", 16)}
    splits = ("train", VAL_SPLIT, "test")
    holdout = Holdout(DIGITS_VAL_FRACTION)

    def _load(self, split, *, source_dir, seed, on_progress, labels=True):
        images, path = read_sklearn_digits()
        idx = digits_split_rows(split, len(images))
        return SourceSplit(np.ascontiguousarray(images[idx]), {
            "origin": "sklearn.datasets.load_digits (shipped with scikit-learn)", "files": {path.name: sha256_file(path)},
            "split_rule": f"permutation of default_rng(0); first {DIGITS_TRAIN} train, rest test"},
            labels=read_sklearn_digit_labels()[idx] if labels else None)


# ---------------------------------------------------------------------------------------- synthetic

SYNTHETIC_STREAMS = {"train": 0, "test": 1, VAL_SPLIT: 2}  # fixed: adding a split never changes another's draws
SYNTHETIC_SPLITS = ("train", VAL_SPLIT, "test")


def _split_rng(seed: int, split: str) -> np.random.Generator:
    return numpy_rng("synthetic-split", seed, SYNTHETIC_STREAMS[split])


class GaussianMixture2D(DatasetSource):
    """Points from an equal-weight mixture of isotropic Gaussians on a circle (clipped to [-1, 1])."""

    name = "synthetic-mixture"
    description = "synthetic 2-D mixture of 8 Gaussians on a circle, continuous in [-1, 1] (known density)"
    field = FieldSpec("float32", (2,), "continuous", None, "points")
    default_read = ReadSpec("continuous")
    variants = {"continuous": ReadSpec("continuous"), "discretised64": ReadSpec("discretised", 64)}

    def __init__(self, components: int = 8, radius: float = 0.6, std: float = 0.06,
                 num_samples: dict[str, int] | None = None):
        self.components, self.radius, self.std = components, radius, std
        self.label_field = class_label_field(components)  # the component a point was drawn from
        self.num_samples = num_samples or {"train": 10000, VAL_SPLIT: 2000, "test": 2000}
        self.splits = tuple(s for s in SYNTHETIC_SPLITS if s in self.num_samples)

    def weights(self) -> np.ndarray:
        """The components' mixing weights (equal)."""
        return np.full(self.components, 1.0 / self.components)

    def means(self) -> np.ndarray:
        angles = 2 * np.pi * np.arange(self.components) / self.components
        return self.radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)

    def _load(self, split, *, source_dir, seed, on_progress, labels=True):
        rng = _split_rng(seed, split)
        n = self.num_samples[split]
        comp = rng.integers(self.components, size=n)
        x = self.means()[comp] + self.std * rng.standard_normal((n, 2))
        return SourceSplit(np.clip(x, -1.0, 1.0).astype(np.float32), {
            "generator": {"process": "equal-weight isotropic Gaussian mixture, clipped to [-1, 1]",
                          "means": self.means().round(12).tolist(), "std": self.std, "seed": int(seed)}},
            labels=comp)


class MarkovSequences(DatasetSource):
    """Sequences of stationary first-order Markov chains over a small alphabet (known entropy rate).

    With ``chains`` C > 1, each sequence is drawn from one of C chains chosen uniformly, and its
    label is that chain: chain c moves from symbol i to i + c (mod K) with probability 0.7, so the
    chains differ clearly over 16 symbols.  C = 1 (``synthetic-markov``) draws exactly what it drew
    before labels existed, and labels every sequence 0.
    """

    name = "synthetic-markov"
    description = "synthetic symbol sequences (K=4, length 16) from a fixed Markov chain (known likelihood)"
    field = FieldSpec("uint8", (16,), "discrete", 4, "sequence", alphabet="abcd")
    default_read = ReadSpec("discrete", 4)

    TRANSITIONS = np.array([[0.70, 0.20, 0.05, 0.05],
                            [0.05, 0.70, 0.20, 0.05],
                            [0.05, 0.05, 0.70, 0.20],
                            [0.20, 0.05, 0.05, 0.70]])

    def __init__(self, num_samples: dict[str, int] | None = None, chains: int = 1):
        k = self.field.num_classes
        if not 1 <= chains <= k:
            raise ValueError(f"chains must be in 1..{k}, not {chains}")
        self.chains = chains
        self.label_field = class_label_field(chains, [f"chain {c}" for c in range(chains)])
        if chains > 1:
            self.name = f"{MarkovSequences.name}-chains"
            self.description = (f"synthetic symbol sequences (K=4, length 16), each from one of {chains} Markov "
                                "chains; labelled with its chain (known likelihood)")
        self.num_samples = num_samples or {"train": 10000, VAL_SPLIT: 2000, "test": 2000}
        self.splits = tuple(s for s in SYNTHETIC_SPLITS if s in self.num_samples)

    def initial_probabilities(self) -> np.ndarray:
        """The law of the first symbol: uniform, as ``_load`` draws it (also every chain's stationary law)."""
        k = self.field.num_classes
        return np.full(k, 1.0 / k)

    def transition_matrix(self) -> np.ndarray:
        """P[i, j] = Pr(next symbol j | symbol i) of chain 0, a copy of TRANSITIONS."""
        return self.TRANSITIONS.copy()

    def transition_matrices(self) -> np.ndarray:
        """(C, K, K): chain c is TRANSITIONS with its columns rotated by c (still doubly stochastic)."""
        return np.stack([np.roll(self.TRANSITIONS, c, axis=1) for c in range(self.chains)])

    def _load(self, split, *, source_dir, seed, on_progress, labels=True):
        rng = _split_rng(seed, split)
        n, length, k = self.num_samples[split], self.field.shape[0], self.field.num_classes
        # one chain: no draw for it, so the stream (and the data) is what it was before chains existed
        chain = rng.integers(self.chains, size=n) if self.chains > 1 else np.zeros(n, dtype=np.int64)
        cumulative = np.cumsum(self.transition_matrices(), axis=2)
        seq = np.empty((n, length), dtype=np.uint8)
        seq[:, 0] = rng.integers(k, size=n)  # uniform start: every chain's stationary law (doubly stochastic)
        for t in range(1, length):
            u = rng.random(n)[:, None]
            seq[:, t] = np.minimum((u > cumulative[chain, seq[:, t - 1]]).sum(axis=1), k - 1)
        generator = {"process": "first-order Markov chain, uniform start", "transitions": self.TRANSITIONS.tolist(),
                     "seed": int(seed)}
        if self.chains > 1:
            generator.update(process=f"one of {self.chains} first-order Markov chains (uniform), uniform start",
                             transitions=self.transition_matrices().tolist())
        return SourceSplit(seq, {"generator": generator}, labels=chain)


# ---------------------------------------------------------------------------------- in-memory sets

class ArraySource(DatasetSource):
    """Any in-memory arrays as a source: for tests, benchmarks and notebooks."""

    def __init__(self, name: str, arrays: dict[str, np.ndarray], field: FieldSpec, default_read: ReadSpec,
                 info: dict[str, Any] | None = None, labels: dict[str, np.ndarray] | None = None,
                 label_field: FieldSpec | None = None):
        self.name, self.field, self.default_read = name, field, default_read
        self.arrays, self.labels, self.label_field = arrays, labels, label_field
        self.splits = tuple(arrays)
        self.info = info or {"origin": "in-memory arrays"}
        self.description = f"in-memory arrays ({', '.join(f'{k}: {len(v)}' for k, v in arrays.items())})"

    def _load(self, split, *, source_dir, seed, on_progress, labels=True):
        return SourceSplit(np.ascontiguousarray(self.arrays[split], dtype=self.field.dtype), dict(self.info),
                           labels=self.labels[split] if self.labels is not None else None)


# --------------------------------------------------------------------------------------- registry

SOURCES: dict[str, DatasetSource] = {s.name: s for s in (
    MNIST(), CIFAR10(), Text8(), Digits(), GaussianMixture2D(), MarkovSequences(), MarkovSequences(chains=4))}


def get_source(name: str) -> DatasetSource:
    """The registered source called ``name``; an unknown name is a one-line error listing the known ones."""
    try:
        return SOURCES[name]
    except KeyError:
        raise PipelineError(f"unknown data set {name!r}: choose one of {', '.join(SOURCES)} "
                            "(see `bfn data shard --help`)") from None
