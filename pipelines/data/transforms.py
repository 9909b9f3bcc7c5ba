"""Read-time transforms: stored raw values -> the exact tensors bfn_core expects.

bfn_core's conventions (see bfn_core/distributions.py):
  * "continuous": float32 in [-1, 1];
  * "discretised": float32 bin centres (2k + 1) / K - 1, k = 0..K-1;
  * "discrete": int64 class indices in [0, K).

Shards keep the raw data (grey levels, symbol ids, float points) and the choice of (data kind, K)
is made when reading, so one shard set serves a binarised and a 256-level MNIST model alike, and
dynamic binarisation draws fresh Bernoulli pixels every time a sample is read (as in the BFN paper)
rather than freezing one draw into the shards.

Transforms work on numpy arrays per sample with precomputed lookup tables: one fancy-index per
sample, no per-pixel arithmetic, so the reader keeps up with the raw tar rate.  Bin centres and bin
indices come from bfn_core itself (turned into numpy tables once per transform), so the data lands
exactly on the values the model's discretised distributions use.  Transforms are small classes
rather than lambdas so they pickle into DataLoader workers started with "spawn".
"""
from __future__ import annotations

import numpy as np
import torch

from bfn_core import bin_centres, bin_index
from pipelines.data.schema import DATA_KINDS, FieldSpec, ReadSpec
from pipelines.errors import UnsupportedReadError


def rebin_levels(levels: int, num_bins: int) -> np.ndarray:
    """For each of L grey levels, the bin among K that holds its bin centre.

    k = floor((2v + 1) K / (2L)).  For L = 256 and K = 16 this is v // 16; for L = K it is v.
    """
    v = np.arange(levels, dtype=np.int64)
    return np.minimum(((2 * v + 1) * num_bins) // (2 * levels), num_bins - 1)


class Transform:
    """A raw stored array -> a model-side array; ``__call__(raw, rng)``.

    ``spec`` is the (data kind, K) produced, ``dtype`` the numpy dtype of the output, ``stochastic``
    whether the output depends on ``rng`` (dynamic binarisation).
    """

    stochastic = False

    def __init__(self, spec: ReadSpec, description: str):
        self.spec = spec
        self.description = description

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.int64 if self.spec.data_kind == "discrete" else np.float32)

    def __call__(self, raw: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        raise NotImplementedError

    def out_shape(self, stored_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of one transformed sample: the stored shape, as transforms are elementwise."""
        return tuple(stored_shape)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.label()}: {self.description})"


class LookupTransform(Transform):
    """out = table[raw]: levels to bin centres, rebinning, or levels kept as classes."""

    def __init__(self, spec: ReadSpec, table: np.ndarray, description: str):
        super().__init__(spec, description)
        self.table = np.ascontiguousarray(table)

    def __call__(self, raw, rng=None):
        return self.table[raw]


class BernoulliTransform(Transform):
    """Dynamic binarisation: class 1 with probability p[raw], a fresh draw on every call."""

    stochastic = True

    def __init__(self, spec: ReadSpec, p: np.ndarray, description: str):
        super().__init__(spec, description)
        self.p = np.ascontiguousarray(p, dtype=np.float32)

    def __call__(self, raw, rng=None):
        if rng is None:
            raise ValueError("dynamic binarisation needs a random generator (rng)")
        return (rng.random(raw.shape, dtype=np.float32) < self.p[raw]).astype(np.int64)


class CastTransform(Transform):
    """Classes kept as they are (int64), or continuous values kept (float32)."""

    def __call__(self, raw, rng=None):
        return raw.astype(self.dtype)


class QuantiseTransform(Transform):
    """Continuous values in [-1, 1] -> the centre of their bin among K."""

    def __init__(self, spec: ReadSpec, description: str):
        super().__init__(spec, description)
        self.centres = bin_centres(spec.num_classes).numpy()

    def __call__(self, raw, rng=None):
        # torch.tensor copies: stored blocks are read-only views of the shard's bytes
        return self.centres[bin_index(torch.tensor(raw), self.spec.num_classes).numpy()]


class RandomWindowTransform(Transform):
    """A window of ``length`` values at a uniform random offset of each stored record, drawn afresh on
    every read (text8's training windows), then the inner transform."""

    stochastic = True

    def __init__(self, inner: Transform, length: int):
        super().__init__(inner.spec, f"random {length}-long windows, {inner.description}")
        self.inner, self.length = inner, int(length)

    def __call__(self, raw, rng=None):
        if rng is None:
            raise ValueError("random windows need a random generator (rng)")
        span = raw.shape[-1] - self.length + 1
        offsets = rng.integers(0, span, size=raw.shape[:-1])
        rows = np.take_along_axis(raw, offsets[..., None] + np.arange(self.length), axis=-1)
        return self.inner(rows, rng)

    def out_shape(self, stored_shape):
        return (*stored_shape[:-1], self.length)


def resolve_read(stored: FieldSpec, default: ReadSpec | None, data_kind: str | None,
                 num_classes: int | None) -> ReadSpec:
    """The (data kind, K) to produce: the request, completed from the stored field or the default."""
    if data_kind is None:
        if num_classes is not None:
            raise UnsupportedReadError("num_classes given without data_kind: pass both (e.g. data_kind='discretised', num_classes=16)")
        return default or ReadSpec(stored.data_kind, stored.num_classes)
    if data_kind not in DATA_KINDS:
        raise UnsupportedReadError(f"unknown data kind {data_kind!r}: choose one of {', '.join(DATA_KINDS)}")
    if num_classes is None and data_kind != "continuous":
        if stored.data_kind == data_kind:
            num_classes = stored.num_classes
        elif default is not None and default.data_kind == data_kind:
            num_classes = default.num_classes
        else:
            raise UnsupportedReadError(f"pass num_classes with data_kind={data_kind!r} "
                             f"(the stored data is {ReadSpec(stored.data_kind, stored.num_classes).label()})")
    return ReadSpec(data_kind, num_classes)


def make_transform(stored: FieldSpec, data_kind: str | None = None, num_classes: int | None = None, *,
                   default: ReadSpec | None = None) -> Transform:
    """The transform from the stored field to (data_kind, K); None means the dataset's default.

    Possible reads:
      * grey levels (stored "discretised", L levels): continuous (bin centres of L, or with K the
        centres of K bins: data quantised to K levels and modelled as continuous), discretised
        with any K >= 2 (K = L: the levels' centres; otherwise rebinned), discrete K = 2 (dynamic
        binarisation, p = v / (L - 1)), or discrete K = L (the levels as classes);
      * classes (stored "discrete", K classes): discrete with the same K only;
      * continuous values: continuous (with K: quantised to the centres of K bins), or discretised
        with any K (quantised to bin centres).
    Anything else raises UnsupportedReadError (a ValueError) saying which reads the data allows.
    A stored field with a ``window`` (text8's training records) is read as random windows of it.
    """
    inner = _value_transform(stored, data_kind, num_classes, default)
    window = stored.extra.get("window")
    return RandomWindowTransform(inner, window) if window else inner


def _value_transform(stored: FieldSpec, data_kind: str | None, num_classes: int | None,
                     default: ReadSpec | None) -> Transform:
    spec = resolve_read(stored, default, data_kind, num_classes)
    kind, k = spec.data_kind, spec.num_classes
    if k is not None and (not isinstance(k, (int, np.integer)) or k < 2):
        raise UnsupportedReadError(f"num_classes must be an integer >= 2, not {k!r}")
    stored_label = ReadSpec(stored.data_kind, stored.num_classes).label()

    if stored.data_kind == "discretised":  # L grey levels 0..L-1
        levels = int(stored.num_classes)
        if kind == "continuous" and k is None:
            return LookupTransform(spec, bin_centres(levels).numpy(), f"{levels} levels -> their bin centres")
        if kind in ("continuous", "discretised"):
            table = bin_centres(k).numpy()[rebin_levels(levels, k)]
            what = "bin centres" if k == levels else f"rebinned to {k} bins"
            return LookupTransform(spec, table, f"{levels} levels -> {what}")
        if k == 2:
            p = np.arange(levels, dtype=np.float64) / (levels - 1)
            return BernoulliTransform(spec, p, f"{levels} levels -> Bernoulli(v / {levels - 1}), fresh per read")
        if k == levels:
            return LookupTransform(spec, np.arange(levels, dtype=np.int64), f"{levels} levels as classes")
        raise UnsupportedReadError(f"data stored as {stored_label} can be read as discrete only with K=2 (binarised) "
                         f"or K={levels} (levels as classes), not K={k}")

    if stored.data_kind == "discrete":
        if kind == "discrete" and k == stored.num_classes:
            return CastTransform(spec, f"{k} classes as they are")
        raise UnsupportedReadError(f"data stored as {stored_label} (symbols) can only be read as discrete "
                         f"K={stored.num_classes}, not {spec.label()}")

    # continuous
    if kind == "continuous" and k is None:
        return CastTransform(spec, "continuous values as they are")
    if kind in ("continuous", "discretised"):
        return QuantiseTransform(spec, f"continuous values -> centres of {k} bins")
    raise UnsupportedReadError(f"continuous data cannot be read as {spec.label()}: use continuous or discretised")
