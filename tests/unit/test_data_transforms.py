"""Read-time transforms: binarisation statistics, binning to [-1, 1] centres, text encoding."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bfn_core import bin_centres as core_bin_centres
from pipelines.data.schema import FieldSpec, ReadSpec
from pipelines.data.text import TEXT8_ALPHABET, decode_text, encode_text
from pipelines.data.transforms import BernoulliTransform, make_transform, rebin_levels
from pipelines.errors import UnsupportedReadError

MNIST = FieldSpec("uint8", (28, 28, 1), "discretised", 256, "image")
DIGITS = FieldSpec("uint8", (8, 8, 1), "discretised", 17, "image")
TEXT = FieldSpec("uint8", (256,), "discrete", 27, "text", alphabet=TEXT8_ALPHABET)
POINTS = FieldSpec("float32", (2,), "continuous", None, "points")


def bin_centres(k: int) -> np.ndarray:
    return core_bin_centres(k).numpy()


@pytest.mark.parametrize("k", [2, 16, 17, 256])
def test_values_are_bfn_cores_bin_centres_exactly(k):
    """The data's bin centres are bfn_core's, bit for bit: the model's bins and the data agree."""
    levels = np.arange(k, dtype=np.uint8 if k <= 256 else np.int64)
    for field in (FieldSpec("uint8", (k,), "discretised", k, "image"), POINTS):
        raw = levels if field is not POINTS else bin_centres(k)
        out = make_transform(field, "discretised", k)(raw)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, bin_centres(k))


def test_levels_read_as_their_bin_centres():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    t = make_transform(FieldSpec("uint8", (16, 16, 1), "discretised", 256, "image"), "discretised", 256)
    out = t(levels)
    assert out.dtype == np.float32 and out.shape == levels.shape
    np.testing.assert_allclose(out.reshape(-1), (2 * np.arange(256) + 1) / 256 - 1, atol=1e-7)
    assert out.min() > -1 and out.max() < 1


def test_rebinning_256_to_16_is_integer_division():
    v = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(rebin_levels(256, 16), v // 16)
    out = make_transform(MNIST, "discretised", 16)(v.reshape(16, 16, 1)).reshape(-1)
    np.testing.assert_allclose(out, bin_centres(16)[v // 16])
    assert set(np.unique(out)) == set(bin_centres(16))


@pytest.mark.parametrize("levels,k", [(17, 16), (17, 256), (256, 16), (16, 256), (17, 17)])
def test_rebinning_keeps_order_and_lands_on_centres(levels, k):
    idx = rebin_levels(levels, k)
    assert np.all(np.diff(idx) >= 0)
    if k <= levels:  # coarser bins: the extremes stay the extremes
        assert idx[0] == 0 and idx[-1] == k - 1
    out = make_transform(FieldSpec("uint8", (levels,), "discretised", levels, "image"), "discretised", k)(
        np.arange(levels, dtype=np.uint8))
    assert np.isin(out, bin_centres(k)).all()
    # each level's centre lies in the bin it is mapped to
    centre = (2 * np.arange(levels) + 1) / levels - 1
    lo, hi = -1 + 2 * idx / k, -1 + 2 * (idx + 1) / k
    assert np.all((centre >= lo - 1e-9) & (centre <= hi + 1e-9))


def test_continuous_read_of_levels_and_quantised_points():
    assert np.allclose(make_transform(DIGITS, "continuous")(np.array([0, 16], dtype=np.uint8)), [-16 / 17, 16 / 17])
    pts = np.array([-1.0, -0.99, 0.0, 0.49, 1.0], dtype=np.float32)
    out = make_transform(POINTS, "discretised", 4)(pts)
    np.testing.assert_allclose(out, [-0.75, -0.75, 0.25, 0.25, 0.75])
    same = make_transform(POINTS)(pts)
    assert same.dtype == np.float32 and np.array_equal(same, pts)


def test_binarisation_statistics_match_the_intensity():
    t = make_transform(MNIST, "discrete", 2)
    assert isinstance(t, BernoulliTransform) and t.stochastic
    v = np.array([0, 32, 64, 128, 192, 255], dtype=np.uint8)
    rng = np.random.default_rng(0)
    n = 20000
    draws = np.stack([t(v, rng) for _ in range(n)])
    assert draws.dtype == np.int64 and set(np.unique(draws)) <= {0, 1}
    p = v / 255.0
    mean = draws.mean(axis=0)
    se = np.sqrt(p * (1 - p) / n) + 1e-12
    assert np.all(np.abs(mean - p) <= 5 * se + 1e-12)
    assert np.all(draws[:, 0] == 0) and np.all(draws[:, -1] == 1)  # v = 0 never on, v = max always on


def test_binarisation_draws_fresh_pixels_each_read():
    t = make_transform(DIGITS, "discrete", 2)
    image = np.full((8, 8, 1), 8, dtype=np.uint8)  # p = 0.5
    rng = np.random.default_rng(1)
    a, b = t(image, rng), t(image, rng)
    assert not np.array_equal(a, b)
    again = make_transform(DIGITS, "discrete", 2)(image, np.random.default_rng(1))
    assert np.array_equal(a, again)  # same seed, same draw: reproducible
    with pytest.raises(ValueError, match="random generator"):
        t(image)


def test_levels_kept_as_classes_and_text_ids():
    out = make_transform(DIGITS, "discrete", 17)(np.arange(17, dtype=np.uint8))
    assert out.dtype == np.int64 and np.array_equal(out, np.arange(17))
    ids = encode_text("hello world" + " " * 245)
    out = make_transform(TEXT)(ids)
    assert out.dtype == np.int64 and torch.from_numpy(out).shape == (256,)


def test_text_encoding_round_trip_and_alphabet():
    text = "the quick brown fox jumps over the lazy dog"
    ids = encode_text(text)
    assert ids.dtype == np.uint8
    assert ids[3] == 0 and ids[0] == ord("t") - ord("a") + 1
    assert encode_text("az ").tolist() == [1, 26, 0]
    assert decode_text(ids) == text
    assert decode_text(encode_text(TEXT8_ALPHABET)) == TEXT8_ALPHABET
    with pytest.raises(ValueError, match="'A'"):
        encode_text("A")


def test_defaults_come_from_the_manifest_default():
    t = make_transform(MNIST, default=ReadSpec("discrete", 2))
    assert t.spec == ReadSpec("discrete", 2)
    assert make_transform(MNIST, "discretised").spec == ReadSpec("discretised", 256)
    assert make_transform(TEXT).spec == ReadSpec("discrete", 27)


@pytest.mark.parametrize("field,kind,k,match", [
    (TEXT, "discretised", 27, "only be read as discrete"),
    (TEXT, "discrete", 2, "only be read as discrete K=27"),
    (MNIST, "discrete", 5, "K=2 .binarised. or K=256"),
    (POINTS, "discrete", 2, "cannot be read"),
    (MNIST, "discretised", 1, ">= 2"),
    (MNIST, "gaussian", None, "unknown data kind"),
    (MNIST, None, 16, "without data_kind"),
    (POINTS, "discrete", None, "pass num_classes"),
])
def test_impossible_reads_are_clear_value_errors(field, kind, k, match):
    with pytest.raises(UnsupportedReadError, match=match) as info:
        make_transform(field, kind, k)
    assert isinstance(info.value, ValueError)


def test_continuous_data_on_k_levels_reads_as_the_bin_centres_of_k_bins():
    """CIFAR-10 modelled as continuous at 16 levels (the paper's continuous 16-bin setup): the values are
    the 16 bin centres, as floats for a continuous model; the same for stored continuous values."""
    t = make_transform(MNIST, "continuous", 16)
    levels = np.arange(256, dtype=np.uint8)
    out = t(levels)
    assert t.spec == ReadSpec("continuous", 16) and out.dtype == np.float32
    np.testing.assert_array_equal(out, make_transform(MNIST, "discretised", 16)(levels))
    assert len(np.unique(out)) == 16
    q = make_transform(POINTS, "continuous", 4)(np.array([-0.9, -0.1, 0.2, 0.99], dtype=np.float32))
    np.testing.assert_allclose(q, [-0.75, -0.25, 0.25, 0.75])
