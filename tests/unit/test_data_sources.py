"""Data set sources, offline: small fake files in the real formats, a loopback download, the offline error."""
from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import pickle
import re
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipelines.data import paper_sets, sources
from pipelines.data.download import ChecksumWarning, RemoteFile
from pipelines.data.localserver import free_port
from pipelines.data.sources import (
    CIFAR10,
    MNIST,
    Digits,
    GaussianMixture2D,
    MarkovSequences,
    Text8,
    get_source,
)
from pipelines.data.text import TEXT8_ALPHABET, decode_text
from pipelines.errors import DownloadError, PipelineError


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No test here may touch the network or a real cache."""
    monkeypatch.setenv("BFN_OFFLINE", "1")
    monkeypatch.setenv("BFN_DATA_CACHE", str(tmp_path / "cache"))


def idx_images(images: np.ndarray, gz: bool = True) -> bytes:
    n, rows, cols = images.shape
    raw = b"\x00\x00\x08\x03" + b"".join(int(d).to_bytes(4, "big") for d in (n, rows, cols)) + images.tobytes()
    return gzip.compress(raw) if gz else raw


def idx_labels(labels: np.ndarray, gz: bool = True) -> bytes:
    """An IDX1 ubyte label file as MNIST publishes them: magic 0x00000801, count, one byte per label."""
    raw = b"\x00\x00\x08\x01" + int(len(labels)).to_bytes(4, "big") + np.asarray(labels, dtype=np.uint8).tobytes()
    return gzip.compress(raw) if gz else raw


def cifar_tarball(batches: dict[str, np.ndarray], labels: dict[str, np.ndarray] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, images in batches.items():  # images (N, 32, 32, 3) -> rows of 1024 R, 1024 G, 1024 B
            rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
            y = [int(c) for c in labels[name]] if labels else [0] * len(images)  # a list of ints, as published
            blob = pickle.dumps({b"batch_label": b"fake", b"data": rows, b"labels": y}, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


def fake_text(n_chars: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return "".join(TEXT8_ALPHABET[i] for i in rng.integers(0, 27, n_chars)).encode()


# ------------------------------------------------------------------------------------------ registry

def test_unknown_data_set_and_split_are_one_line_errors():
    with pytest.raises(PipelineError, match=r"unknown data set 'mnistt': choose one of mnist, cifar10, text8, digits"):
        get_source("mnistt")
    with pytest.raises(PipelineError, match="text8 has no split 'dev': choose one of train, val, test"):
        get_source("text8").check_split("dev")


def test_every_data_set_names_its_validation_split_val():
    assert all(src.splits == ("train", "val", "test") for src in sources.SOURCES.values())


def test_every_source_declares_a_readable_default():
    from pipelines.data.transforms import make_transform

    for name, src in sources.SOURCES.items():
        t = make_transform(src.field, default=src.default_read)
        assert t.spec == src.default_read, name
        for variant in src.variants.values():
            make_transform(src.field, variant.data_kind, variant.num_classes)


# -------------------------------------------------------------------------------- shipped and generated

def test_digits_are_sklearns_digits_with_a_fixed_split():
    from sklearn.datasets import load_digits

    train, val = Digits().load("train"), Digits().load("val")
    test = Digits().load("test").data
    assert train.data.shape == (1350, 8, 8, 1) and val.data.shape == (150, 8, 8, 1) and test.shape == (297, 8, 8, 1)
    assert train.data.dtype == np.uint8 and train.data.max() == 16 and train.data.min() == 0
    images = load_digits().images.astype(np.uint8)[..., None]
    order = np.random.default_rng(0).permutation(len(images))
    cut = Digits.holdout.indices(1500)
    np.testing.assert_array_equal(train.data, images[order[:1500]][cut["train"]])
    np.testing.assert_array_equal(val.data, images[order[:1500]][cut["val"]])
    np.testing.assert_array_equal(test, images[order[1500:]])
    assert np.array_equal(Digits().load("train", seed=5).data, train.data)  # the split never depends on the seed
    record = {k: v for k, v in train.info["holdout"].items() if k != "role"}
    assert record == {k: v for k, v in val.info["holdout"].items() if k != "role"}
    assert record["parent"] == "train" and record["fraction"] == 0.1 and record["held_out"] == 150


@pytest.mark.parametrize("n", [2, 7, 100, 50000])
def test_a_held_out_validation_split_never_overlaps_training(n):
    from pipelines.data.source import Holdout

    cut = Holdout(0.01).indices(n)
    assert len(np.intersect1d(cut["val"], cut["train"])) == 0
    assert np.array_equal(np.sort(np.concatenate([cut["val"], cut["train"]])), np.arange(n))
    assert len(cut["val"]) == min(n - 1, max(1, round(0.01 * n)))
    assert np.array_equal(Holdout(0.01).indices(n)["val"], cut["val"])  # fixed by the data set, not by a write


def test_mixture_is_deterministic_per_seed_and_follows_its_process():
    src = GaussianMixture2D(num_samples={"train": 4000, "test": 500})
    a, b = src.load("train", seed=1), src.load("train", seed=1)
    assert np.array_equal(a.data, b.data) and a.data.dtype == np.float32 and a.data.shape == (4000, 2)
    assert not np.array_equal(a.data[:500], src.load("test", seed=1).data)
    assert not np.array_equal(a.data, src.load("train", seed=2).data)
    assert np.abs(a.data).max() <= 1.0
    nearest = np.linalg.norm(a.data[:, None] - src.means()[None], axis=-1).min(axis=1)
    assert np.mean(nearest < 4 * src.std) > 0.99
    assert a.info["generator"]["std"] == src.std


def test_markov_sequences_follow_the_transition_matrix():
    src = MarkovSequences(num_samples={"train": 4000, "test": 10})
    seq = src.load("train", seed=0).data.astype(np.int64)
    assert seq.shape == (4000, 16) and seq.max() < 4
    counts = np.zeros((4, 4))
    np.add.at(counts, (seq[:, :-1].ravel(), seq[:, 1:].ravel()), 1)
    empirical = counts / counts.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(empirical, MarkovSequences.TRANSITIONS, atol=0.02)


# ------------------------------------------------------------------------------- real formats, offline

def test_mnist_reads_idx_files_from_source_dir(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(idx_images(images))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(idx_labels(np.arange(7) % 10))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_labels(np.arange(3), gz=False))
    with pytest.warns(ChecksumWarning, match="does not match the canonical"):
        out = MNIST().load("train", source_dir=str(tmp_path))
    with pytest.warns(ChecksumWarning):
        val = MNIST().load("val", source_dir=str(tmp_path))
    cut = MNIST.holdout.indices(7)  # 1% of the training images, at least one, held out as val
    np.testing.assert_array_equal(out.data, images[cut["train"], ..., None])
    np.testing.assert_array_equal(val.data, images[cut["val"], ..., None])
    assert val.info["holdout"]["role"] == "validation" and out.info["holdout"]["fraction"] == 0.01
    assert out.info["verified"] is False and out.info["obtained_from"] == ["source-dir"]
    assert out.info["files"]["train-images-idx3-ubyte.gz"] == hashlib.sha256(idx_images(images)).hexdigest()
    # the unpacked form is accepted too
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_images(images[:3], gz=False))
    np.testing.assert_array_equal(MNIST().load("test", source_dir=str(tmp_path)).data, images[:3, ..., None])


def test_mnist_rejects_a_file_that_is_not_idx(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"not an idx file at all"))
    with pytest.warns(ChecksumWarning), pytest.raises(PipelineError, match="not an IDX3 ubyte image file"):
        MNIST().load("train", source_dir=str(tmp_path))


def test_cifar10_reads_the_python_tarball_channel_last(tmp_path):
    rng = np.random.default_rng(0)
    batches = {f"data_batch_{i}": rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8) for i in range(1, 6)}
    batches["test_batch"] = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(cifar_tarball(batches))
    with pytest.warns(ChecksumWarning):
        train = CIFAR10().load("train", source_dir=str(tmp_path)).data
    expected = np.concatenate([batches[f"data_batch_{i}"] for i in range(1, 6)])
    assert train.shape == (14, 32, 32, 3)  # one of 15 held out as val
    np.testing.assert_array_equal(train, expected[CIFAR10.holdout.indices(15)["train"]])
    with pytest.warns(ChecksumWarning):
        np.testing.assert_array_equal(CIFAR10().load("test", source_dir=str(tmp_path)).data, batches["test_batch"])


def test_cifar_batches_never_unpickle_arbitrary_objects(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:  # os.system, not print: Ray swaps builtins.print once it is imported in the process
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        blob = pickle.dumps({b"data": Evil()}, protocol=2)
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(buf.getvalue())
    with pytest.warns(ChecksumWarning), pytest.raises(PipelineError, match=r"refusing to load (posix|os|nt)\.system"):
        CIFAR10().load("test", source_dir=str(tmp_path))
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore::pipelines.data.download.ChecksumWarning")
def test_text8_zip_splits_90_5_5_into_windows_and_chunks_of_256(tmp_path):
    text = fake_text(256 * 40 + 100)
    with zipfile.ZipFile(tmp_path / "text8.zip", "w") as z:
        z.writestr("text8", text)
    out = {s: Text8().load(s, source_dir=str(tmp_path)).data for s in ("train", "val", "test")}
    n = len(text)
    train_chars = round(0.9 * n)
    # training records of 511 characters every 256: each holds the windows starting in its first 256
    assert out["train"].shape == ((train_chars - 511) // 256 + 1, 511) and out["train"].dtype == np.uint8
    assert decode_text(out["train"][1]) == text[256:256 + 511].decode()
    assert out["val"].shape[0] == (round(0.95 * n) - round(0.9 * n)) // 256
    assert decode_text(out["val"][0]) == text[round(0.9 * n):round(0.9 * n) + 256].decode()
    assert decode_text(out["test"][-1]) in text.decode()
    # the unpacked file is accepted too
    (tmp_path / "text8.zip").unlink()
    (tmp_path / "text8").write_bytes(text)
    np.testing.assert_array_equal(Text8().load("train", source_dir=str(tmp_path)).data, out["train"])


@pytest.mark.filterwarnings("ignore::pipelines.data.download.ChecksumWarning")
def test_text8_training_reads_windows_at_uniform_random_offsets(tmp_path):
    from pipelines.data.transforms import make_transform

    text = fake_text(256 * 60)
    (tmp_path / "text8").write_bytes(text)
    train = Text8().load("train", source_dir=str(tmp_path))
    transform = make_transform(train.field, default=Text8.default_read)
    assert transform.out_shape(train.field.shape) == (256,) and transform.stochastic
    rng = np.random.default_rng(0)
    records = np.repeat(train.data[:1], 4000, axis=0)
    windows = transform(records, rng)
    assert windows.shape == (4000, 256) and windows.dtype == np.int64
    whole = decode_text(train.data[0])
    offsets = np.array([whole.index(decode_text(w)) for w in windows[:400]])  # every window is a real substring
    assert offsets.min() >= 0 and offsets.max() <= 255
    counts = np.bincount(np.array([whole.find(decode_text(w)) for w in windows[:2000]]), minlength=256)
    assert (counts > 0).sum() > 200  # offsets spread over the whole range 0..255


def test_text8_rejects_characters_outside_the_alphabet(tmp_path):
    (tmp_path / "text8").write_bytes(b"Hello World" * 100)
    with pytest.raises(PipelineError, match="outside space and a-z"):
        Text8().load("train", source_dir=str(tmp_path))


# ----------------------------------------------------------------------------- downloads and the cache

def test_offline_error_says_where_to_place_the_files(tmp_path):
    with pytest.raises(DownloadError) as info:
        MNIST().load("train")
    message = str(info.value)
    assert re.match(r"could not download mnist from https://\S+/train-images-idx3-ubyte\.gz: place the files in "
                    rf"{re.escape(str(tmp_path / 'cache' / 'mnist'))} or pass --source-dir", message)
    assert "\n" not in message


def test_missing_file_in_source_dir_names_the_file(tmp_path):
    with pytest.raises(DownloadError, match=r"cifar-10-python\.tar\.gz not found in .* \(--source-dir\)"):
        CIFAR10().load("train", source_dir=str(tmp_path / "empty"))


@pytest.fixture
def http_dir(tmp_path):
    """A loopback HTTP server over a folder, stopped afterwards."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_download_checks_sha256_then_caches(http_dir, monkeypatch, tmp_path):
    root, base = http_dir
    monkeypatch.delenv("BFN_OFFLINE")
    images = np.random.default_rng(3).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    blob = idx_images(images)
    (root / "train-images-idx3-ubyte.gz").write_bytes(blob)
    remote = RemoteFile("train-images-idx3-ubyte.gz", f"{base}/train-images-idx3-ubyte.gz",
                        hashlib.sha256(blob).hexdigest())
    monkeypatch.setitem(paper_sets.MNIST_FILES, "train", remote)
    labels = idx_labels(np.array([3, 1, 4, 1, 5]))
    (root / "train-labels-idx1-ubyte.gz").write_bytes(labels)
    monkeypatch.setitem(paper_sets.MNIST_LABEL_FILES, "train", RemoteFile(
        "train-labels-idx1-ubyte.gz", f"{base}/train-labels-idx1-ubyte.gz", hashlib.sha256(labels).hexdigest()))
    progress = []
    out = MNIST().load("train", on_progress=lambda done, total: progress.append((done, total)))
    rows = MNIST.holdout.indices(5)["train"]
    np.testing.assert_array_equal(out.data[..., 0], images[rows])
    np.testing.assert_array_equal(out.labels, np.array([3, 1, 4, 1, 5])[rows])
    assert out.info["verified"] is True and out.info["obtained_from"] == ["download"]
    assert out.info["label_files"]["verified"] is True
    assert progress and progress[0][0] == len(blob) and progress[-1][0] == len(labels)
    cached = tmp_path / "cache" / "mnist" / "train-images-idx3-ubyte.gz"
    assert cached.read_bytes() == blob
    (root / "train-images-idx3-ubyte.gz").unlink()  # the cache serves it from now on
    (root / "train-labels-idx1-ubyte.gz").unlink()
    assert MNIST().load("train").info["obtained_from"] == ["cache"]


def test_download_with_a_wrong_checksum_leaves_nothing_in_the_cache(http_dir, monkeypatch, tmp_path):
    root, base = http_dir
    monkeypatch.delenv("BFN_OFFLINE")
    (root / "text8.zip").write_bytes(b"tampered")
    monkeypatch.setattr(paper_sets, "TEXT8_FILE", RemoteFile("text8.zip", f"{base}/text8.zip", "0" * 64))
    with pytest.raises(DownloadError, match=r"could not download text8 from http://127\.0\.0\.1:\d+/text8\.zip: "
                                            r"place the files in .* or pass --source-dir \(the download does not match"):
        Text8().load("train")
    assert list((tmp_path / "cache" / "text8").iterdir()) == []


def test_unreachable_download_fails_fast_with_the_offline_message(monkeypatch):
    monkeypatch.delenv("BFN_OFFLINE")
    url = f"http://127.0.0.1:{free_port()}/cifar-10-python.tar.gz"
    monkeypatch.setattr(paper_sets, "CIFAR10_FILE", RemoteFile("cifar-10-python.tar.gz", url, "0" * 64))
    with pytest.raises(DownloadError, match=rf"could not download cifar10 from {re.escape(url)}: place the files in "
                                            r".* or pass --source-dir \(.*refused"):
        CIFAR10().load("train")


def test_source_split_shape_is_checked():
    class Broken(GaussianMixture2D):
        def _load(self, split, **kw):
            return sources.SourceSplit(np.zeros((3, 3), np.float32))  # noqa

    with pytest.raises(PipelineError, match=r"expected float32\(3, 2\)"):
        Broken().load("train")


def test_source_files_paths_do_not_leak_into_provenance(tmp_path):
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(idx_images(images))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(idx_labels(np.array([0, 1])))
    with pytest.warns(ChecksumWarning):
        info = MNIST().load("train", source_dir=str(tmp_path)).info
    assert str(tmp_path) not in repr(info)
    assert Path(tmp_path).name not in repr(info)
