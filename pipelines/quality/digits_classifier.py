"""A small CNN classifier of the 8x8 digits, trained here deterministically and cached on disk: its
penultimate layer is the feature space of the digits Fréchet distance, its softmax the confidence and
class-coverage scores (image_metrics.py).

The cache lives in ``$BFN_HOME/quality/digits-classifier-<hash>/`` (``weights.safetensors`` and
``meta.json``). The hash covers the recipe (every training constant), the source text of the network
and of the training loop, and a digest of the training images and labels, so a changed recipe, code or
data set trains a new classifier instead of reusing a stale one. Weights are read with safetensors
only (no pickle).

Input convention: float images (N, 1, 8, 8) of intensities in [-1, 1], grey level v of 16 at 2 v / 16 - 1.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipelines.data.source import VAL_SPLIT
from pipelines.data.sources import Digits, digits_split_rows, read_sklearn_digit_labels, read_sklearn_digits
from pipelines.errors import PipelineError

DIGITS_LEVELS = 17  # grey levels 0..16 of the shipped file
NUM_CLASSES = 10
CACHE_FORMAT = 1  # bump when the layout of the cache folder changes


@dataclass(frozen=True)
class DigitsRecipe:
    """Everything that decides the trained weights, besides the code and the data (all hashed)."""

    seed: int = 0
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    widths: tuple[int, int] = (16, 32)
    feature_dim: int = 64


class DigitsNet(nn.Module):
    """conv 3x3 -> conv 3x3 -> max-pool 2 -> linear (features, ReLU) -> linear (10 logits)."""

    def __init__(self, recipe: DigitsRecipe):
        super().__init__()
        c1, c2 = recipe.widths
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(c2 * 16, recipe.feature_dim), nn.ReLU())
        self.head = nn.Linear(recipe.feature_dim, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def levels_to_unit(levels: np.ndarray, num_levels: int = DIGITS_LEVELS) -> np.ndarray:
    """Grey levels 0..L-1 -> float32 intensities in [-1, 1] (the classifier's input scale)."""
    return (2.0 * np.asarray(levels, np.float32) / (num_levels - 1) - 1.0).astype(np.float32)


def digits_labelled(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 8, 8, 1) uint8 levels, labels (N,) int64) of a digits split, as the Digits source cuts it."""
    source = Digits()
    loaded = source.load(split).data
    raw, _ = read_sklearn_digits()
    labels = read_sklearn_digit_labels()
    parent = "train" if split == VAL_SPLIT else split
    rows = digits_split_rows(parent, len(raw))
    if split != "test" and source.holdout is not None:
        rows = rows[source.holdout.indices(len(rows))[split]]
    # the labels follow our own reading of the split rule: check it still yields the source's images
    if not np.array_equal(raw[rows], loaded):
        raise PipelineError(f"digits/{split}: the labelled rows no longer match the Digits source's split; "
                            "update pipelines/quality/digits_classifier.py to the source's split rule")
    return loaded, labels[rows]


def data_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of the training images' and labels' bytes."""
    h = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def recipe_hash(recipe: DigitsRecipe, digest: str) -> str:
    """sha256 of (recipe, network and training source text, data digest, cache format): the cache key."""
    code = inspect.getsource(DigitsNet) + inspect.getsource(train_digits_net)
    blob = json.dumps({"recipe": asdict(recipe), "code": code, "data": digest, "format": CACHE_FORMAT}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def train_digits_net(recipe: DigitsRecipe, images: np.ndarray, labels: np.ndarray) -> DigitsNet:
    """Train DigitsNet with Adam on (images in [-1, 1] (N, 1, 8, 8), labels), deterministically on CPU."""
    prev_threads, prev_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    # one thread and deterministic kernels: the same weights whatever the machine's core count
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):  # leaves the caller's global RNG as it was
            torch.manual_seed(recipe.seed)
            net = DigitsNet(recipe)
            x, y = torch.from_numpy(images), torch.from_numpy(labels)
            opt = torch.optim.Adam(net.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
            order_rng = torch.Generator().manual_seed(recipe.seed)
            net.train()
            for _ in range(recipe.epochs):
                order = torch.randperm(len(x), generator=order_rng)
                for start in range(0, len(x), recipe.batch_size):
                    idx = order[start:start + recipe.batch_size]
                    loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)
    return net.eval()


@dataclass
class DigitsClassifier:
    """A trained DigitsNet and its cache record (``meta``: recipe, hash, test accuracy, training seconds)."""

    net: DigitsNet
    meta: dict
    path: Path
    trained_now: bool = False

    @torch.no_grad()
    def features(self, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Penultimate features (N, feature_dim) of float images in [-1, 1], shape (N, 8, 8[, 1])."""
        x = _as_input(images)
        return np.concatenate([self.net.features(x[i:i + batch_size]).numpy() for i in range(0, len(x), batch_size)]
                              or [np.zeros((0, self.net.head.in_features), np.float32)])

    @torch.no_grad()
    def probabilities(self, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Softmax class probabilities (N, 10) of float images in [-1, 1]."""
        x = _as_input(images)
        return np.concatenate([torch.softmax(self.net(x[i:i + batch_size]), -1).numpy()
                               for i in range(0, len(x), batch_size)] or [np.zeros((0, NUM_CLASSES), np.float32)])


def _as_input(images: np.ndarray) -> torch.Tensor:
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 2 and x.shape[1] == 64:
        x = x.reshape(-1, 8, 8)
    if x.ndim != 3 or x.shape[1:] != (8, 8):
        raise PipelineError(f"digits images must be (N, 8, 8), (N, 8, 8, 1) or (N, 64), got {x.shape}: "
                            "pass samples of a digits model")
    return torch.from_numpy(np.ascontiguousarray(x[:, None]))


def default_cache_dir() -> Path:
    """$BFN_HOME/quality (./.bfn/quality unless BFN_HOME says otherwise)."""
    from pipelines.tracking import bfn_home

    return bfn_home() / "quality"


def _read_cached(folder: Path, recipe: DigitsRecipe, key: str) -> DigitsClassifier | None:
    from safetensors.torch import load_file

    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("hash") != key:  # the folder names only a prefix of the hash
            raise ValueError(f"{folder} holds hash {meta.get('hash')}, not {key}")
        net = DigitsNet(recipe)
        net.load_state_dict(load_file(str(folder / "weights.safetensors")))
    except FileNotFoundError:
        return None
    except Exception:  # a damaged or foreign cache entry: train it again rather than fail a sweep
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return DigitsClassifier(net.eval(), meta, folder)


def load_digits_classifier(cache_dir: str | Path | None = None, recipe: DigitsRecipe = DigitsRecipe()) -> DigitsClassifier:
    """The classifier of ``recipe``, read from the cache, else trained (a few seconds) and cached."""
    from safetensors.torch import save_file

    images, labels = digits_labelled("train")
    digest = data_digest(images, labels)
    key = recipe_hash(recipe, digest)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / f"digits-classifier-{key[:16]}"
    cached = _read_cached(folder, recipe, key)
    if cached is not None:
        return cached
    start = time.perf_counter()
    net = train_digits_net(recipe, levels_to_unit(images)[:, None, :, :, 0], labels)
    seconds = time.perf_counter() - start
    test_images, test_labels = digits_labelled("test")
    classifier = DigitsClassifier(net, {}, folder, trained_now=True)
    accuracy = float((classifier.probabilities(levels_to_unit(test_images)).argmax(1) == test_labels).mean())
    classifier.meta = {"hash": key, "recipe": asdict(recipe), "data_sha256": digest, "train_examples": len(images),
                       "test_examples": len(test_images), "test_accuracy": accuracy, "train_seconds": round(seconds, 3),
                       "torch": torch.__version__, "format": CACHE_FORMAT}
    classifier.meta = json.loads(json.dumps(classifier.meta))  # as a later read of meta.json gives it back
    root.mkdir(parents=True, exist_ok=True)
    # write aside and rename: a concurrent reader (another Ray worker) never sees half a cache entry
    tmp = Path(tempfile.mkdtemp(prefix=".digits-classifier-", dir=root))
    try:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp / "weights.safetensors"))
        (tmp / "meta.json").write_text(json.dumps(classifier.meta, indent=2))
        try:
            os.rename(tmp, folder)
        except OSError:  # another process cached the same hash first: theirs is identical
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return classifier
