"""The paper's data sets from their canonical files: MNIST, CIFAR-10 and text8.

See download.py for the lookup order, checksums and the cache. MNIST and CIFAR-10 publish train and
test only: their ``val`` is held out of train (1%, as the reference code does). text8 is cut 90/5/5
into train/val/test; its training split is stored as overlapping records from which the reader
takes a 256-character window at a random offset on every read (as the reference code samples
windows), while val and test are contiguous, non-overlapping 256-character chunks.

Class labels come from the same canonical downloads: MNIST's idx1-ubyte label files (fetched with
the images, and only when labels are wanted) and the ``labels`` of CIFAR-10's python batches;
text8 has none.
"""
from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from pipelines.data.download import LocalFile, RemoteFile, locate
from pipelines.data.schema import FieldSpec, ReadSpec, class_label_field
from pipelines.data.source import VAL_SPLIT, DatasetSource, Holdout, SourceSplit
from pipelines.data.text import TEXT8_ALPHABET, encode_text
from pipelines.errors import DownloadError, PipelineError

VAL_FRACTION = 0.01  # of the training images held out for validation (the reference's val_frac)


def files_info(files: dict[str, LocalFile]) -> dict:
    return {
        "files": {name: f.sha256 for name, f in files.items()},
        "verified": all(f.verified for f in files.values()),
        "obtained_from": sorted({f.origin for f in files.values()}),
    }


def grey_levels_field(shape: tuple[int, ...], levels: int) -> FieldSpec:
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
MNIST_LABEL_FILES = {
    "train": RemoteFile("train-labels-idx1-ubyte.gz", MNIST_BASE + "train-labels-idx1-ubyte.gz",
                        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881,
                        alternatives=("train-labels-idx1-ubyte",)),
    "test": RemoteFile("t10k-labels-idx1-ubyte.gz", MNIST_BASE + "t10k-labels-idx1-ubyte.gz",
                       "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542,
                       alternatives=("t10k-labels-idx1-ubyte",)),
}


def _read_maybe_gzipped(path: Path) -> bytes:
    opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
    with opener(path, "rb") as f:
        return f.read()


def read_idx_images(path: Path) -> np.ndarray:
    """An IDX3 ubyte image file (gzipped or not) -> (N, rows, cols) uint8."""
    raw = _read_maybe_gzipped(path)
    if len(raw) < 16 or raw[0:2] != b"\x00\x00" or raw[2] != 0x08 or raw[3] != 3:
        raise PipelineError(f"{path} is not an IDX3 ubyte image file; place the canonical MNIST files")
    n, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    if len(raw) != 16 + n * rows * cols:
        raise PipelineError(f"{path} is truncated ({len(raw) - 16} pixel bytes for {n}x{rows}x{cols}); "
                            "place the canonical MNIST files")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows, cols)


def read_idx_labels(path: Path) -> np.ndarray:
    """An IDX1 ubyte label file (gzipped or not) -> (N,) int64 class ids."""
    raw = _read_maybe_gzipped(path)
    if len(raw) < 8 or raw[0:2] != b"\x00\x00" or raw[2] != 0x08 or raw[3] != 1:
        raise PipelineError(f"{path} is not an IDX1 ubyte label file; place the canonical MNIST files")
    n = int.from_bytes(raw[4:8], "big")
    if len(raw) != 8 + n:
        raise PipelineError(f"{path} is truncated ({len(raw) - 8} label bytes for {n}); place the canonical MNIST files")
    return np.frombuffer(raw, dtype=np.uint8, offset=8).astype(np.int64)


class MNIST(DatasetSource):
    name = "mnist"
    description = "MNIST 28x28 grey digits (256 levels); read binarised (default, fresh draw per read) or as levels"
    field = grey_levels_field((28, 28, 1), 256)
    label_field = class_label_field(10, [str(d) for d in range(10)])
    default_read = ReadSpec("discrete", 2)
    variants = {"binarised": ReadSpec("discrete", 2), "discretised": ReadSpec("discretised", 256)}
    splits = ("train", VAL_SPLIT, "test")
    holdout = Holdout(VAL_FRACTION)
    needs_download = True

    def _load(self, split, *, source_dir, seed, on_progress, labels=True):
        remote, label_file = MNIST_FILES[split], MNIST_LABEL_FILES[split]
        files = locate(self.name, [remote], source_dir, on_progress)
        images = read_idx_images(files[remote.name].path)
        info = {"origin": MNIST_BASE, **files_info(files)}
        if not labels:
            return SourceSplit(images[..., None].copy(), info)
        # recorded apart from "files", which says which images a held-out val split was cut from
        try:
            found = locate(self.name, [label_file], source_dir, on_progress)
        except DownloadError as err:
            raise DownloadError(f"{err}; or write the images alone: `bfn data shard mnist --no-labels`") from None
        y = read_idx_labels(found[label_file.name].path)
        if len(y) != len(images):
            raise PipelineError(f"{label_file.name} holds {len(y)} labels for {len(images)} images in {remote.name}; "
                                "place the canonical MNIST files")
        info["label_files"] = files_info(found)
        return SourceSplit(images[..., None].copy(), info, labels=y)


# ----------------------------------------------------------------------------------------- CIFAR-10

CIFAR10_FILE = RemoteFile("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                          "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", 170498071)
CIFAR10_MEMBERS = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
# batches.meta's label_names, in class-id order
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


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


def read_cifar_batches(path: Path, members: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The named batches of the CIFAR-10 python tarball -> (N, 32, 32, 3) uint8 (channel-last) images
    and their (N,) int64 class ids (each batch's ``labels`` list)."""
    arrays, labels = [], []
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in members:
                f = tar.extractfile(f"cifar-10-batches-py/{member}")
                if f is None:
                    raise KeyError(member)
                batch = _BatchUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
                data = np.asarray(batch[b"data"], dtype=np.uint8)
                arrays.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                labels.append(np.asarray(batch[b"labels"], dtype=np.int64).reshape(-1))
                if len(labels[-1]) != len(arrays[-1]):
                    raise ValueError(f"{member} has {len(labels[-1])} labels for {len(arrays[-1])} images")
    except (tarfile.TarError, KeyError, pickle.UnpicklingError, EOFError, ValueError) as err:
        raise PipelineError(f"{path} is not the CIFAR-10 python tarball ({type(err).__name__}: {err}); "
                            "place the canonical cifar-10-python.tar.gz") from None
    return np.ascontiguousarray(np.concatenate(arrays)), np.concatenate(labels)


class CIFAR10(DatasetSource):
    name = "cifar10"
    description = "CIFAR-10 32x32x3 colour images (256 levels); read as K = 256 (default) or 16 bins on [-1, 1]"
    field = grey_levels_field((32, 32, 3), 256)
    label_field = class_label_field(10, CIFAR10_CLASSES)
    default_read = ReadSpec("discretised", 256)
    variants = {"discretised": ReadSpec("discretised", 256), "discretised16": ReadSpec("discretised", 16),
                "continuous": ReadSpec("continuous")}
    splits = ("train", VAL_SPLIT, "test")
    holdout = Holdout(VAL_FRACTION)
    needs_download = True

    def _load(self, split, *, source_dir, seed, on_progress, labels=True):
        files = locate(self.name, [CIFAR10_FILE], source_dir, on_progress)
        images, y = read_cifar_batches(files[CIFAR10_FILE.name].path, CIFAR10_MEMBERS[split])
        return SourceSplit(images, {"origin": CIFAR10_FILE.url, **files_info(files)}, labels=y)


# -------------------------------------------------------------------------------------------- text8

TEXT8_FILE = RemoteFile("text8.zip", "http://mattmahoney.net/dc/text8.zip", None, 31344016, alternatives=("text8",))
TEXT8_SPLITS = {"train": (0.0, 0.9), VAL_SPLIT: (0.9, 0.95), "test": (0.95, 1.0)}  # 90M / 5M / 5M characters
TEXT8_CHUNK = 256
TEXT8_FIELD = FieldSpec("uint8", (TEXT8_CHUNK,), "discrete", 27, "text", alphabet=TEXT8_ALPHABET)
# A training record holds the characters of every window that starts in its first TEXT8_CHUNK
# positions, so a window at a uniform offset of a uniform record is a window at a uniform position.
TEXT8_TRAIN_FIELD = FieldSpec("uint8", (2 * TEXT8_CHUNK - 1,), "discrete", 27, "text", alphabet=TEXT8_ALPHABET,
                              extra={"window": TEXT8_CHUNK})


def read_text8(path: Path) -> bytes:
    """The text8 characters, from text8.zip or the unpacked ``text8`` file."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                return z.read("text8")
        return path.read_bytes()
    except (zipfile.BadZipFile, KeyError) as err:
        raise PipelineError(f"{path} is not text8.zip ({err}); place the canonical text8.zip") from None


def text8_split_ids(text: bytes, split: str) -> np.ndarray:
    """The split's characters as ids (the standard 90% / 5% / 5% cut, i.e. 90M/5M/5M of the 100M)."""
    lo, hi = TEXT8_SPLITS[split]
    n = len(text)
    try:
        return encode_text(text[int(round(lo * n)):int(round(hi * n))], TEXT8_ALPHABET)
    except ValueError as err:
        raise PipelineError(f"text8 contains a character outside space and a-z ({err}); place the canonical text8.zip") from None


def text8_chunks(ids: np.ndarray, chunk: int = TEXT8_CHUNK) -> np.ndarray:
    """Consecutive, non-overlapping chunks of ``chunk`` ids; a final partial chunk is dropped."""
    usable = (len(ids) // chunk) * chunk
    return ids[:usable].reshape(-1, chunk)


def text8_window_records(ids: np.ndarray, window: int = TEXT8_CHUNK) -> np.ndarray:
    """Records of 2 window - 1 ids starting every ``window`` ids: record r holds every window that starts
    at r window + o, o = 0 .. window - 1 (the last starts that have no full record are dropped)."""
    length = 2 * window - 1
    if len(ids) < length:
        raise PipelineError(f"text8's training split has {len(ids)} characters, fewer than one record of {length}")
    return np.ascontiguousarray(np.lib.stride_tricks.sliding_window_view(ids, length)[::window])


class Text8(DatasetSource):
    name = "text8"
    description = ("text8: 27 symbols (space, a-z), 90M/5M/5M characters; train read as 256-character windows "
                   "at random offsets, val/test as contiguous chunks of 256")
    splits = ("train", VAL_SPLIT, "test")
    field = TEXT8_FIELD
    default_read = ReadSpec("discrete", 27)
    needs_download = True

    def _load(self, split, *, source_dir, seed, on_progress, labels=False):  # text8 has no labels
        files = locate(self.name, [TEXT8_FILE], source_dir, on_progress)
        text = read_text8(files[TEXT8_FILE.name].path)
        ids = text8_split_ids(text, split)
        info = {"origin": TEXT8_FILE.url, "characters": len(text), **files_info(files)}
        if split == "train":
            return SourceSplit(text8_window_records(ids), info, TEXT8_TRAIN_FIELD)
        return SourceSplit(text8_chunks(ids), info)
