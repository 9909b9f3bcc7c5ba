"""Data set sources: each turns one split of a data set into one uint8/float32 array plus provenance.

Real sets (``mnist``, ``cifar10``, ``text8``) read their canonical files (see download.py for the
lookup order, checksums and the cache); ``digits`` reads the 8x8 digits that scikit-learn ships;
``synthetic-mixture`` and ``synthetic-markov`` are generated from a seed with a known generating
process, recorded in the manifest so tests and examples can compare against the truth.

Every source stores raw values (grey levels, symbol ids, float points) and declares a default
model-side read; the read itself (binarised, rebinned, ...) happens in the reader.
"""
from __future__ import annotations

import gzip
import importlib.util
import io
import pickle
import tarfile
import zipfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.data.download import LocalFile, ProgressFn, RemoteFile, locate, sha256_file
from pipelines.data.schema import FieldSpec, ReadSpec
from pipelines.data.transforms import TEXT8_ALPHABET, encode_text
from pipelines.errors import PipelineError


@dataclass
class SourceSplit:
    """One split as a single array (N, *shape) of the field's dtype, and where it came from."""

    data: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


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

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise PipelineError(f"{self.name} has no split {split!r}: choose one of {', '.join(self.splits)}")

    def load(self, split: str, *, source_dir: str | None = None, seed: int = 0,
             on_progress: ProgressFn | None = None) -> SourceSplit:
        """The split's samples (N, *field.shape) and provenance for the manifest."""
        self.check_split(split)
        out = self._load(split, source_dir=source_dir, seed=seed, on_progress=on_progress)
        expected = (len(out.data), *self.field.shape)
        if out.data.shape != expected or out.data.dtype != np.dtype(self.field.dtype):
            raise PipelineError(f"{self.name}/{split}: loaded {out.data.dtype}{out.data.shape}, expected "
                                f"{self.field.dtype}{expected}; the source files are not the canonical ones")
        out.info = {"name": self.name, "version": self.version, **out.info}
        return out

    @abstractmethod
    def _load(self, split: str, *, source_dir: str | None, seed: int, on_progress: ProgressFn | None) -> SourceSplit:
        ...


def _files_info(files: dict[str, LocalFile]) -> dict[str, Any]:
    return {
        "files": {name: f.sha256 for name, f in files.items()},
        "verified": all(f.verified for f in files.values()),
        "obtained_from": sorted({f.origin for f in files.values()}),
    }


def _grey_levels_field(shape: tuple[int, ...], levels: int) -> FieldSpec:
    return FieldSpec("uint8", shape, "discretised", levels, "image")


# -------------------------------------------------------------------------------------------- MNIST

MNIST_BASE = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # torchvision's mirror of yann.lecun.com/exdb/mnist
MNIST_FILES = {
    "train": RemoteFile("train-images-idx3-ubyte.gz", MNIST_BASE + "train-images-idx3-ubyte.gz",
                        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422,
                        alternatives=("train-images-idx3-ubyte",)),
    "test": RemoteFile("t10k-images-idx3-ubyte.gz", MNIST_BASE + "t10k-images-idx3-ubyte.gz",
                       "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877,
                       alternatives=("t10k-images-idx3-ubyte",)),
}


def read_idx_images(path: Path) -> np.ndarray:
    """An IDX3 ubyte image file (gzipped or not) -> (N, rows, cols) uint8."""
    opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 16 or raw[0:2] != b"\x00\x00" or raw[2] != 0x08 or raw[3] != 3:
        raise PipelineError(f"{path} is not an IDX3 ubyte image file; place the canonical MNIST files")
    n, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    if len(raw) != 16 + n * rows * cols:
        raise PipelineError(f"{path} is truncated ({len(raw) - 16} pixel bytes for {n}x{rows}x{cols}); "
                            "place the canonical MNIST files")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows, cols)


class MNIST(DatasetSource):
    name = "mnist"
    description = "MNIST 28x28 grey digits (256 levels); read binarised (default, fresh draw per read) or as levels"
    field = _grey_levels_field((28, 28, 1), 256)
    default_read = ReadSpec("discrete", 2)
    variants = {"binarised": ReadSpec("discrete", 2), "discretised": ReadSpec("discretised", 256)}
    needs_download = True

    def _load(self, split, *, source_dir, seed, on_progress):
        remote = MNIST_FILES[split]
        files = locate(self.name, [remote], source_dir, on_progress)
        images = read_idx_images(files[remote.name].path)
        return SourceSplit(images[..., None].copy(), {"origin": MNIST_BASE, **_files_info(files)})


# ----------------------------------------------------------------------------------------- CIFAR-10

CIFAR10_FILE = RemoteFile("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                          "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", 170498071)
CIFAR10_MEMBERS = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batch dicts only: plain containers and numpy arrays, never arbitrary code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def read_cifar_batches(path: Path, members: list[str]) -> np.ndarray:
    """The named batches of the CIFAR-10 python tarball -> (N, 32, 32, 3) uint8 (channel-last)."""
    arrays = []
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in members:
                f = tar.extractfile(f"cifar-10-batches-py/{member}")
                if f is None:
                    raise KeyError(member)
                batch = _BatchUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
                data = np.asarray(batch[b"data"], dtype=np.uint8)
                arrays.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    except (tarfile.TarError, KeyError, pickle.UnpicklingError, EOFError, ValueError) as err:
        raise PipelineError(f"{path} is not the CIFAR-10 python tarball ({type(err).__name__}: {err}); "
                            "place the canonical cifar-10-python.tar.gz") from None
    return np.ascontiguousarray(np.concatenate(arrays))


class CIFAR10(DatasetSource):
    name = "cifar10"
    description = "CIFAR-10 32x32x3 colour images (256 levels); read as K = 256 (default) or 16 bins on [-1, 1]"
    field = _grey_levels_field((32, 32, 3), 256)
    default_read = ReadSpec("discretised", 256)
    variants = {"discretised": ReadSpec("discretised", 256), "discretised16": ReadSpec("discretised", 16),
                "continuous": ReadSpec("continuous")}
    needs_download = True

    def _load(self, split, *, source_dir, seed, on_progress):
        files = locate(self.name, [CIFAR10_FILE], source_dir, on_progress)
        images = read_cifar_batches(files[CIFAR10_FILE.name].path, CIFAR10_MEMBERS[split])
        return SourceSplit(images, {"origin": CIFAR10_FILE.url, **_files_info(files)})


# -------------------------------------------------------------------------------------------- text8

TEXT8_FILE = RemoteFile("text8.zip", "http://mattmahoney.net/dc/text8.zip", None, 31344016, alternatives=("text8",))
TEXT8_SPLITS = {"train": (0.0, 0.9), "validation": (0.9, 0.95), "test": (0.95, 1.0)}  # 90M / 5M / 5M characters
TEXT8_CHUNK = 256


def read_text8(path: Path) -> bytes:
    """The text8 characters, from text8.zip or the unpacked ``text8`` file."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                return z.read("text8")
        return path.read_bytes()
    except (zipfile.BadZipFile, KeyError) as err:
        raise PipelineError(f"{path} is not text8.zip ({err}); place the canonical text8.zip") from None


def text8_chunks(text: bytes, split: str, chunk: int = TEXT8_CHUNK) -> np.ndarray:
    """The split's characters (the standard 90% / 5% / 5% cut, i.e. 90M/5M/5M of the 100M) as
    consecutive, non-overlapping chunks of ``chunk`` ids; a final partial chunk is dropped."""
    lo, hi = TEXT8_SPLITS[split]
    n = len(text)
    part = text[int(round(lo * n)):int(round(hi * n))]
    usable = (len(part) // chunk) * chunk
    try:
        ids = encode_text(part[:usable], TEXT8_ALPHABET)
    except ValueError as err:
        raise PipelineError(f"text8 contains a character outside space and a-z ({err}); place the canonical text8.zip") from None
    return ids.reshape(-1, chunk)


class Text8(DatasetSource):
    name = "text8"
    description = "text8: 27 symbols (space, a-z), 90M/5M/5M characters, chunks of 256"
    splits = ("train", "validation", "test")
    field = FieldSpec("uint8", (TEXT8_CHUNK,), "discrete", 27, "text", alphabet=TEXT8_ALPHABET)
    default_read = ReadSpec("discrete", 27)
    needs_download = True

    def _load(self, split, *, source_dir, seed, on_progress):
        files = locate(self.name, [TEXT8_FILE], source_dir, on_progress)
        text = read_text8(files[TEXT8_FILE.name].path)
        return SourceSplit(text8_chunks(text, split), {"origin": TEXT8_FILE.url, "characters": len(text),
                                                       **_files_info(files)})


# ------------------------------------------------------------------------------------------- digits

DIGITS_TRAIN = 1500  # of 1797; the rest is the test split (same cut as `bfn quickstart`)


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


class Digits(DatasetSource):
    name = "digits"
    description = "scikit-learn's 8x8 digits (17 grey levels), offline; read discretised K=17 (default) or binarised"
    field = _grey_levels_field((8, 8, 1), 17)
    default_read = ReadSpec("discretised", 17)
    variants = {"discretised": ReadSpec("discretised", 17), "binarised": ReadSpec("discrete", 2),
                "discretised16": ReadSpec("discretised", 16)}

    def _load(self, split, *, source_dir, seed, on_progress):
        images, path = read_sklearn_digits()
        order = np.random.default_rng(0).permutation(len(images))  # fixed: the split never depends on --seed
        idx = order[:DIGITS_TRAIN] if split == "train" else order[DIGITS_TRAIN:]
        return SourceSplit(np.ascontiguousarray(images[idx]), {
            "origin": "sklearn.datasets.load_digits (shipped with scikit-learn)", "files": {path.name: sha256_file(path)},
            "split_rule": f"permutation of default_rng(0); first {DIGITS_TRAIN} train, rest test"})


# ---------------------------------------------------------------------------------------- synthetic

def _split_rng(seed: int, splits: tuple[str, ...], split: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), splits.index(split), 0xB7A])


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
        self.num_samples = num_samples or {"train": 10000, "test": 2000}

    def means(self) -> np.ndarray:
        angles = 2 * np.pi * np.arange(self.components) / self.components
        return self.radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)

    def _load(self, split, *, source_dir, seed, on_progress):
        rng = _split_rng(seed, self.splits, split)
        n = self.num_samples[split]
        comp = rng.integers(self.components, size=n)
        x = self.means()[comp] + self.std * rng.standard_normal((n, 2))
        return SourceSplit(np.clip(x, -1.0, 1.0).astype(np.float32), {
            "generator": {"process": "equal-weight isotropic Gaussian mixture, clipped to [-1, 1]",
                          "means": self.means().round(12).tolist(), "std": self.std, "seed": int(seed)}})


class MarkovSequences(DatasetSource):
    """Sequences of a stationary first-order Markov chain over a small alphabet (known entropy rate)."""

    name = "synthetic-markov"
    description = "synthetic symbol sequences (K=4, length 16) from a fixed Markov chain (known likelihood)"
    field = FieldSpec("uint8", (16,), "discrete", 4, "sequence", alphabet="abcd")
    default_read = ReadSpec("discrete", 4)

    TRANSITIONS = np.array([[0.70, 0.20, 0.05, 0.05],
                            [0.05, 0.70, 0.20, 0.05],
                            [0.05, 0.05, 0.70, 0.20],
                            [0.20, 0.05, 0.05, 0.70]])

    def __init__(self, num_samples: dict[str, int] | None = None):
        self.num_samples = num_samples or {"train": 10000, "test": 2000}

    def _load(self, split, *, source_dir, seed, on_progress):
        rng = _split_rng(seed, self.splits, split)
        n, length, k = self.num_samples[split], self.field.shape[0], self.field.num_classes
        cumulative = np.cumsum(self.TRANSITIONS, axis=1)
        seq = np.empty((n, length), dtype=np.uint8)
        seq[:, 0] = rng.integers(k, size=n)  # uniform start: the chain's stationary law (doubly stochastic)
        for t in range(1, length):
            u = rng.random(n)[:, None]
            seq[:, t] = np.minimum((u > cumulative[seq[:, t - 1]]).sum(axis=1), k - 1)
        return SourceSplit(seq, {"generator": {"process": "first-order Markov chain, uniform start",
                                               "transitions": self.TRANSITIONS.tolist(), "seed": int(seed)}})


# ---------------------------------------------------------------------------------- in-memory sets

class ArraySource(DatasetSource):
    """Any in-memory arrays as a source: for tests, benchmarks and notebooks."""

    def __init__(self, name: str, arrays: dict[str, np.ndarray], field: FieldSpec, default_read: ReadSpec,
                 info: dict[str, Any] | None = None):
        self.name, self.field, self.default_read = name, field, default_read
        self.arrays = arrays
        self.splits = tuple(arrays)
        self.info = info or {"origin": "in-memory arrays"}
        self.description = f"in-memory arrays ({', '.join(f'{k}: {len(v)}' for k, v in arrays.items())})"

    def _load(self, split, *, source_dir, seed, on_progress):
        return SourceSplit(np.ascontiguousarray(self.arrays[split], dtype=self.field.dtype), dict(self.info))


# --------------------------------------------------------------------------------------- registry

SOURCES: dict[str, DatasetSource] = {s.name: s for s in (
    MNIST(), CIFAR10(), Text8(), Digits(), GaussianMixture2D(), MarkovSequences())}


def get_source(name: str) -> DatasetSource:
    """The registered source called ``name``; an unknown name is a one-line error listing the known ones."""
    try:
        return SOURCES[name]
    except KeyError:
        raise PipelineError(f"unknown data set {name!r}: choose one of {', '.join(SOURCES)} "
                            "(see `bfn data shard --help`)") from None
