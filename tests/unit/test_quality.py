"""Sample-quality metrics, offline: the Fréchet distance against closed forms, the digits classifier
(trained once per session into a temporary cache), exact likelihoods of the synthetic sets, MMD,
spelling accuracy, and the FID path with the digits features in place of Inception."""
from __future__ import annotations

import hashlib
import math
import sys

import numpy as np
import pytest
import scipy.linalg
import torch

from pipelines.data.sources import Digits, GaussianMixture2D, MarkovSequences
from pipelines.data.text import encode_text
from pipelines.errors import PipelineError
from pipelines.quality import QUALITY_METRIC, headline, quality_metrics
from pipelines.quality.digits_classifier import (
    DigitsRecipe,
    digits_labelled,
    levels_to_unit,
    load_digits_classifier,
    recipe_hash,
    train_digits_net,
)
from pipelines.quality.frechet import frechet_distance, frechet_distance_of_features, gaussian_stats
from pipelines.quality.image_metrics import class_entropy, digits_scores
from pipelines.quality.inception import ENV_INCEPTION_WEIGHTS, INCEPTION_WEIGHTS_URL, cached_reference_stats
from pipelines.quality.spelling import counted_words, spelling_accuracy, text8_vocabulary, vocabulary_from_text
from pipelines.quality.synthetic import (
    gaussian_mmd2,
    markov_entropy_per_token,
    mixture_draws,
    mixture_entropy_separated,
    mixture_nll,
)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("quality-cache")


@pytest.fixture(scope="session")
def classifier(cache_dir):
    """The default-recipe digits classifier, trained once per session (a few seconds)."""
    return load_digits_classifier(cache_dir)


@pytest.fixture(scope="session")
def digits():
    train, train_labels = digits_labelled("train")
    test, test_labels = digits_labelled("test")
    return train, train_labels, test, test_labels


def random_spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T + 0.1 * np.eye(d)


# ------------------------------------------------------------------------------------ Fréchet distance

def test_frechet_distance_matches_closed_forms():
    # one dimension: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    # commuting (diagonal) covariances: |dm|^2 + sum (sqrt a - sqrt b)^2
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.0])
    mu = np.array([0.5, -1.0, 2.0])
    expect = mu @ mu + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu, np.diag(a), np.zeros(3), np.diag(b)) == pytest.approx(expect)
    # general SPD pairs: the textbook formula with scipy's sqrtm of the non-symmetric product
    rng = np.random.default_rng(0)
    for d in (2, 5, 16):
        s1, s2, m1, m2 = random_spd(rng, d), random_spd(rng, d), rng.standard_normal(d), rng.standard_normal(d)
        textbook = (m1 - m2) @ (m1 - m2) + np.trace(s1 + s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
        assert frechet_distance(m1, s1, m2, s2) == pytest.approx(textbook, rel=1e-9)
        assert frechet_distance(m1, s1, m2, s2) == pytest.approx(frechet_distance(m2, s2, m1, s1), rel=1e-9)
        assert frechet_distance(m1, s1, m1, s1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_samples_approaches_the_gaussians_and_survives_singular_features():
    rng = np.random.default_rng(1)
    s1, s2 = random_spd(rng, 3), random_spd(rng, 3)
    m2 = np.array([1.0, 0.0, -1.0])
    x = rng.multivariate_normal(np.zeros(3), s1, size=200_000)
    y = rng.multivariate_normal(m2, s2, size=200_000)
    assert frechet_distance_of_features(x, y) == pytest.approx(frechet_distance(np.zeros(3), s1, m2, s2), rel=0.02)
    # dead features (a constant column) and fewer samples than dimensions: finite, real, non-negative
    z = rng.standard_normal((10, 32))
    z[:, 0] = 0.0
    d = frechet_distance_of_features(z, z + 0.5)
    assert np.isfinite(d) and d == pytest.approx(32 * 0.25, rel=1e-6)
    with pytest.raises(PipelineError, match="N >= 2"):
        gaussian_stats(np.zeros((1, 3)))


# ------------------------------------------------------------------------------------ digits classifier

def test_digits_classifier_is_accurate_and_recorded(classifier):
    meta = classifier.meta
    assert meta["test_accuracy"] > 0.9, meta
    assert meta["train_examples"] == 1350 and meta["test_examples"] == 297
    assert (classifier.path / "weights.safetensors").is_file() and (classifier.path / "meta.json").is_file()
    assert classifier.path.name == f"digits-classifier-{meta['hash'][:16]}"


def test_digits_classifier_cache_is_reused_and_a_changed_recipe_retrains(classifier, cache_dir):
    again = load_digits_classifier(cache_dir)
    assert not again.trained_now and again.path == classifier.path and again.meta == classifier.meta
    x = levels_to_unit(digits_labelled("test")[0])
    np.testing.assert_array_equal(again.probabilities(x), classifier.probabilities(x))
    quick = DigitsRecipe(epochs=1)
    other = load_digits_classifier(cache_dir, quick)
    assert other.trained_now and other.path != classifier.path
    assert not load_digits_classifier(cache_dir, quick).trained_now
    (other.path / "weights.safetensors").write_bytes(b"damaged")  # a damaged entry is trained again
    assert load_digits_classifier(cache_dir, quick).trained_now
    # the key covers the data digest and every recipe field
    assert len({recipe_hash(DigitsRecipe(), "a"), recipe_hash(DigitsRecipe(), "b"), recipe_hash(DigitsRecipe(seed=1), "a"),
                recipe_hash(DigitsRecipe(widths=(8, 32)), "a")}) == 4


def test_digits_training_is_deterministic(digits):
    train, labels, _, _ = digits
    x = levels_to_unit(train)[:300, None, :, :, 0]
    recipe = DigitsRecipe(epochs=1)
    torch.manual_seed(123)
    a = train_digits_net(recipe, x, labels[:300]).state_dict()
    b = train_digits_net(recipe, x, labels[:300]).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the caller's global RNG is left as it was
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    train_digits_net(recipe, x, labels[:300])
    assert torch.equal(torch.rand(3), before)


def test_digits_scores_rank_real_above_noise_and_collapse(classifier, digits):
    train, train_labels, _, _ = digits
    rng = np.random.default_rng(0)
    real = digits_scores(classifier, train[:300].astype(np.int64))  # levels 0..16, scored against the test split
    noise = digits_scores(classifier, rng.uniform(-1, 1, (300, 8, 8, 1)).astype(np.float32))
    collapsed = digits_scores(classifier, np.repeat(train[train_labels == 3][:1], 300, axis=0).astype(np.int64))
    print(f"\nreal {real}\nnoise {noise}\ncollapsed {collapsed}")
    assert real["fd_digits"] < noise["fd_digits"] / 10 and real["fd_digits"] < collapsed["fd_digits"] / 10
    assert real["digits_confidence"] > 0.95 > noise["digits_confidence"]
    assert real["digits_class_entropy"] > math.log(10) - 0.05
    assert collapsed["digits_class_entropy"] == 0.0
    # bin centres of K = 17 (what a discretised model samples) read as the same levels
    centres = (2 * train[:300].astype(np.float32) + 1) / 17 - 1
    assert digits_scores(classifier, centres) == pytest.approx(real)


def test_digits_through_the_entry_point_with_binarised_samples(cache_dir, digits):
    _, _, test, _ = digits
    full = quality_metrics("digits", test.astype(np.int64), cache_dir=cache_dir)
    assert full["fd_digits"] == pytest.approx(0.0, abs=1e-6)  # the test split against itself
    # a binarised model's samples are scored against the binarised test split
    binary = quality_metrics("digits", (test >= 8).astype(np.int64), levels=2, cache_dir=cache_dir)
    assert binary["fd_digits"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(PipelineError, match="outside 0..1"):
        quality_metrics("digits", test.astype(np.int64), levels=2, cache_dir=cache_dir)


def test_class_entropy_spans_zero_to_log_classes():
    assert class_entropy(np.arange(1000) % 10) == pytest.approx(math.log(10))
    assert class_entropy(np.zeros(50, np.int64)) == 0.0


# ------------------------------------------------------------------------------------ synthetic sets

def test_mixture_nll_of_true_draws_is_the_entropy_and_noise_is_far_worse():
    source = GaussianMixture2D()
    test = source.load("test").data
    entropy = mixture_nll(mixture_draws(source, 200_000, np.random.default_rng(0)), source)  # Monte Carlo
    assert entropy == pytest.approx(mixture_entropy_separated(source), abs=0.01)
    scores = quality_metrics("synthetic-mixture", test)
    se = 1.0 / np.sqrt(len(test))  # -ln p of one point (2-D Gaussian) has a standard deviation of 1 nat
    noise = quality_metrics("mixture", np.random.default_rng(1).uniform(-1, 1, (2000, 2)))
    print(f"\nentropy {entropy:.4f} true {scores} noise {noise}")
    assert abs(scores["nll_true"] - entropy) < 4 * se
    assert noise["nll_true"] > entropy + 5


def test_mmd_is_near_zero_for_true_draws_and_grows_with_a_shift():
    source = GaussianMixture2D()
    test = source.load("test").data
    true = quality_metrics("synthetic-mixture", test, seed=3)
    shifted = quality_metrics("synthetic-mixture", test + np.float32(0.1), seed=3)
    print(f"\nmmd2 true {true['mmd2_true']:.2e} shifted {shifted['mmd2_true']:.2e} bandwidth {true['mmd_bandwidth']:.3f}")
    assert abs(true["mmd2_true"]) < 1e-3 < shifted["mmd2_true"]
    assert shifted["mmd2_true"] > 20 * abs(true["mmd2_true"])
    assert true["mmd_bandwidth"] == shifted["mmd_bandwidth"]  # the kernel depends on the true draws only
    # far-apart N(0, I_2) clouds: k_xy = 0 and E k_xx = E exp(-chi^2_2) = 1/3, so MMD^2 = 2/3
    x = np.random.default_rng(0).standard_normal((400, 2))
    y = np.random.default_rng(1).standard_normal((400, 2)) + 100.0
    assert gaussian_mmd2(x, y, 1.0) == pytest.approx(2 / 3, abs=0.03)
    # by hand, the U-statistic (no k(x_i, x_i) terms): e^-1/2 + e^-1/2 - 2 (1 + 2 e^-1/2 + e^-1) / 4
    by_hand = np.exp(-0.5) - 0.5 - 0.5 * np.exp(-1.0)
    pair_x, pair_y = np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([[0.0, 0.0], [0.0, 1.0]])
    assert gaussian_mmd2(pair_x, pair_y, 1.0) == pytest.approx(by_hand)


def test_markov_nll_of_true_draws_is_the_entropy_rate_and_uniform_tokens_are_worse():
    source = MarkovSequences()
    row = -(0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 2 * 0.05 * np.log(0.05))  # every row has this entropy
    assert markov_entropy_per_token(source) == pytest.approx((np.log(4) + 15 * row) / 16)
    true = quality_metrics("synthetic-markov", source.load("test").data)
    uniform = quality_metrics("markov", np.random.default_rng(0).integers(0, 4, (2000, 16)))
    print(f"\nmarkov true {true} uniform {uniform}")
    assert true["nll_true_per_token"] == pytest.approx(true["entropy_true_per_token"], abs=0.02)
    assert uniform["nll_true_per_token"] > true["entropy_true_per_token"] + 0.5
    with pytest.raises(PipelineError, match="outside 0..3"):
        quality_metrics("markov", np.full((2, 16), 4))


def test_source_accessors_describe_the_data_and_leave_it_unchanged():
    expected = {  # sha256 of seed-3 splits, recorded before the read-only accessors were added
        ("digits", "train"): "2f8d7a72b36829eb4eb8a18094abcaefe0d6ea29d2f43649decdc642c172bbe2",
        ("digits", "test"): "5a5cef63efc660ef1862b6eca4b8c41e5a668a490faf83b52abe0bc4f73cb02c",
        ("synthetic-mixture", "val"): "d11d9dee81177fad3a713f0bbbcafb9c270277d5c9b3d0edc95fb3906587bc1c",
        ("synthetic-markov", "train"): "f0771b2a78958a9f4909f3f2327d260c679f60f2975103b5ea8eac03a9d60b8f",
        ("synthetic-markov", "test"): "c35d8b961c5d4be7e2da8f6c62599326f91c9a423dfffde61f32e9341f4a52a3",
    }
    for (name, split), digest in expected.items():
        source = {"digits": Digits(), "synthetic-mixture": GaussianMixture2D(), "synthetic-markov": MarkovSequences()}[name]
        assert hashlib.sha256(source.load(split, seed=3).data.tobytes()).hexdigest() == digest, (name, split)
    markov = MarkovSequences()
    init, trans = markov.initial_probabilities(), markov.transition_matrix()
    np.testing.assert_allclose(init @ trans, init)  # the uniform start is stationary
    first = np.bincount(markov.load("train").data[:, 0], minlength=4) / 10000
    np.testing.assert_allclose(first, init, atol=0.02)
    np.testing.assert_allclose(GaussianMixture2D().weights().sum(), 1.0)
    _, labels = digits_labelled("train")
    assert sorted(set(labels.tolist())) == list(range(10))


# ------------------------------------------------------------------------------------ text8 spelling

def _training_text(rng, n_words=4000):
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, rng.integers(3, 9))) for _ in range(300)]
    return " ".join(rng.choice(vocab, n_words))


def test_spelling_counts_only_words_with_a_space_on_both_sides():
    assert counted_words(["ab cd  ef gh"]) == [b"cd", b"ef"]
    assert counted_words([" ab cd "]) == [b"ab", b"cd"]
    assert counted_words(["abcdef"]) == []
    assert spelling_accuracy(["abcdef"], frozenset({b"abcdef"})) == (0.0, 0)
    assert spelling_accuracy(["x cat dgo x", "y dog y"], frozenset({b"cat", b"dog"})) == (2 / 3, 3)


def test_spelling_accuracy_is_one_for_training_text_and_low_for_random_letters():
    rng = np.random.default_rng(0)
    text = _training_text(rng)
    ids = encode_text(text)
    windows = np.stack([ids[s:s + 256] for s in rng.integers(0, len(ids) - 256, 64)])  # cut mid-word too
    real = quality_metrics("text8", windows, reference={w.decode() for w in vocabulary_from_text(text)})
    probs = np.r_[1 / 6, np.full(26, 5 / 6 / 26)]  # spaces about as often as in English
    random = quality_metrics("text8", rng.choice(27, size=(64, 256), p=probs), reference=vocabulary_from_text(text))
    print(f"\nspelling real {real} random {random}")
    assert real["spelling_accuracy"] == 1.0 and real["spelling_words"] > 64 * 20
    assert random["spelling_accuracy"] < 0.05 and random["spelling_words"] > 64 * 20


def test_text8_vocabulary_is_the_training_split_and_cached(tmp_path):
    # 555 characters: the training split is the first 500, ending "...beta gamma" with gamma perhaps cut short
    text = ("alpha beta " * 45 + "gamma delta " * 5).encode()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "text8").write_bytes(text)
    vocab = text8_vocabulary(str(tmp_path / "src"), tmp_path / "cache")
    assert vocab == frozenset({b"alpha", b"beta"})
    assert len(list((tmp_path / "cache").glob("text8-train-vocabulary-*.txt"))) == 1
    assert text8_vocabulary(str(tmp_path / "src"), tmp_path / "cache") == vocab


# ------------------------------------------------------------------------------------ FID

def _digits_extractor(classifier):
    """The digits classifier's features as an FID feature extractor (uint8 (N, 8, 8, 1) -> (N, 64))."""
    return lambda images: classifier.features(images[..., 0].astype(np.float32) / 127.5 - 1.0)


def test_fid_path_with_injected_digits_features(classifier, digits, cache_dir):
    train, _, test, _ = digits
    extractor = _digits_extractor(classifier)
    reference = np.round(test.astype(np.float64) * 255 / 16).astype(np.uint8)  # 8-bit images, as MNIST is stored
    real = quality_metrics("mnist", train[:300].astype(np.int64), levels=17, reference=reference,
                           feature_extractor=extractor, cache_dir=cache_dir)
    rng = np.random.default_rng(0)
    noise = quality_metrics("mnist", rng.integers(0, 256, (300, 8, 8, 1)), levels=256, reference=reference,
                            feature_extractor=extractor, cache_dir=cache_dir)
    fd = digits_scores(classifier, train[:300].astype(np.int64))["fd_digits"]
    print(f"\nfid real {real} noise {noise} fd_digits {fd:.3f}")
    assert real["fid"] < noise["fid"] / 10
    assert real["fid"] == pytest.approx(fd, rel=0.05)  # the same Fréchet code over nearly the same inputs
    # reference statistics are cached for an extractor with an identity (Inception's weights digest)
    extractor.weights_sha256 = "f" * 64
    first = cached_reference_stats(reference, extractor, cache_dir)
    assert len(list(cache_dir.glob("fid-stats-*.npz"))) == 1
    def refuse(images):
        raise AssertionError("cached reference statistics were recomputed")
    refuse.weights_sha256 = extractor.weights_sha256
    again = cached_reference_stats(reference, refuse, cache_dir)
    np.testing.assert_array_equal(first.sigma, again.sigma)


def test_fid_without_inception_weights_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_INCEPTION_WEIGHTS, raising=False)
    monkeypatch.setenv("BFN_HOME", str(tmp_path / "home"))
    images = np.zeros((4, 32, 32, 3), np.uint8)
    with pytest.raises(PipelineError) as err:
        quality_metrics("cifar10", images, reference=images)
    message = str(err.value)
    assert "\n" not in message and ENV_INCEPTION_WEIGHTS in message and INCEPTION_WEIGHTS_URL in message
    assert str(tmp_path / "home" / "quality") in message
    monkeypatch.setenv(ENV_INCEPTION_WEIGHTS, str(tmp_path / "nowhere.pth"))
    with pytest.raises(PipelineError, match=f"nowhere.pth .\\${ENV_INCEPTION_WEIGHTS}"):
        quality_metrics("cifar10", images, reference=images)
    (tmp_path / "bad.pth").write_bytes(b"not a weights file")
    with pytest.raises(PipelineError, match="is not a plain weights file"):
        quality_metrics("cifar10", images, reference=images, weights_path=tmp_path / "bad.pth")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "plain.pth")
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # as where the optional extra is not installed
    with pytest.raises(PipelineError, match=r"torch-fidelity, which is not installed: pip install 'bfn-platform\[fid\]'"):
        quality_metrics("cifar10", images, reference=images, weights_path=tmp_path / "plain.pth")


# ------------------------------------------------------------------------------------ entry point

def test_headline_metrics_have_a_direction_and_are_produced(cache_dir, digits):
    assert {k: (v.name, v.mode) for k, v in QUALITY_METRIC.items()} == {
        "digits": ("fd_digits", "min"), "synthetic-mixture": ("nll_true", "min"),
        "synthetic-markov": ("nll_true_per_token", "min"), "text8": ("spelling_accuracy", "max"),
        "mnist": ("fid", "min"), "cifar10": ("fid", "min")}
    assert headline("markov").lower_is_better and not headline("text8").lower_is_better
    produced = {
        "digits": quality_metrics("digits", digits[2].astype(np.int64), cache_dir=cache_dir),
        "synthetic-mixture": quality_metrics("mixture", GaussianMixture2D().load("test").data),
        "synthetic-markov": quality_metrics("markov", MarkovSequences().load("test").data),
        "text8": quality_metrics("text8", encode_text(" a b ")[None], reference={"a"}),
    }
    for name, scores in produced.items():
        assert QUALITY_METRIC[name].name in scores and all(isinstance(v, float) for v in scores.values()), name
    with pytest.raises(PipelineError, match="no quality metrics for data set 'svhn': choose one of digits"):
        quality_metrics("svhn", np.zeros((2, 2)))
