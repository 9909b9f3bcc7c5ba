"""Class labels travel in the shards: sources give them, the writer stores them as ``KEY.y.int64``
beside ``KEY.x.DTYPE``, the readers yield them as ``"y"``; sets without labels read as before.

Local disk only and small sets, so this stays fast; tests/integration/test_shards_* read labelled
sets through S3 and DataLoader workers too.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import tarfile
import zipfile

import numpy as np
import pytest
import torch

from pipelines.data import storage
from pipelines.data.download import ChecksumWarning
from pipelines.data.manifest import load_manifest
from pipelines.data.reader import evaluation_batches, make_loader, shard_dataset
from pipelines.data.schema import class_label_field
from pipelines.data.sources import (
    CIFAR10,
    MNIST,
    ArraySource,
    Digits,
    GaussianMixture2D,
    MarkovSequences,
    Text8,
    read_sklearn_digit_labels,
)
from pipelines.data.tarlayout import LayoutError, parse_records
from pipelines.data.writer import write_shards
from pipelines.errors import DownloadError, ManifestError, PipelineError, ShardError
from test_data_sources import cifar_tarball, fake_text, idx_images, idx_labels

# sha256 of the digits test split's shards (shard size 100, seed 0) as written before labels existed:
# a set written without labels must stay byte for byte what it was
UNLABELLED_DIGITS_TEST = ["3bf49e71d0fadc0cd697885d704952e20a334c03cdb622c9955f5f3cb8085796",
                          "41bc275b6c216088555088a2aa8b5a1a76c58d21f7e9d6e8a68685896df2dd6c",
                          "5d237548370007cbc9d2bdc1300541064be548556f9e58216a0d7cf2147ca59e"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("BFN_OFFLINE", "1")
    monkeypatch.setenv("BFN_DATA_CACHE", str(tmp_path / "cache"))


def read_items(url, **kw):
    return list(shard_dataset(url, rank=0, world_size=1, shuffle=False, **kw))


# ------------------------------------------------------------------------------------------- sources

def test_digits_labels_are_sklearns_targets_through_the_split_and_holdout():
    from sklearn.datasets import load_digits

    target = load_digits().target
    order = np.random.default_rng(0).permutation(len(target))
    cut = Digits.holdout.indices(1500)
    train, val, test = (Digits().load(s) for s in ("train", "val", "test"))
    np.testing.assert_array_equal(train.labels, target[order[:1500]][cut["train"]])
    np.testing.assert_array_equal(val.labels, target[order[:1500]][cut["val"]])
    np.testing.assert_array_equal(test.labels, target[order[1500:]])
    assert train.labels.dtype == np.int64 and np.array_equal(read_sklearn_digit_labels(), target)
    assert Digits().load("test", labels=False).labels is None
    assert Digits.label_field.num_classes == 10 and Digits.label_field.class_names[3] == "3"


def test_mixture_label_is_the_component_and_mostly_the_nearest_mean():
    src = GaussianMixture2D(num_samples={"train": 4000, "test": 10})
    out = src.load("train", seed=1)
    nearest = np.linalg.norm(out.data[:, None] - src.means()[None], axis=-1).argmin(axis=1)
    assert np.mean(nearest == out.labels) > 0.999
    assert np.array_equal(np.unique(out.labels), np.arange(8)) and src.label_field.num_classes == 8


def test_one_markov_chain_keeps_its_data_and_several_chains_are_told_apart():
    one = MarkovSequences(num_samples={"train": 300, "test": 10})
    assert hashlib.sha256(MarkovSequences().load("test", seed=3).data.tobytes()).hexdigest() == (
        "c35d8b961c5d4be7e2da8f6c62599326f91c9a423dfffde61f32e9341f4a52a3")  # as pinned in test_quality
    assert set(one.load("train").labels.tolist()) == {0} and one.label_field.num_classes == 1

    chains = MarkovSequences(num_samples={"train": 6000, "test": 10}, chains=4)
    assert chains.name == "synthetic-markov-chains"
    out = chains.load("train", seed=0)
    seq, y = out.data.astype(np.int64), out.labels
    assert np.all(np.bincount(y, minlength=4) > 1300)
    for c, matrix in enumerate(chains.transition_matrices()):
        counts = np.zeros((4, 4))
        np.add.at(counts, (seq[y == c, :-1].ravel(), seq[y == c, 1:].ravel()), 1)
        np.testing.assert_allclose(counts / counts.sum(axis=1, keepdims=True), matrix, atol=0.03)
        np.testing.assert_allclose(matrix.sum(axis=0), 1.0)  # doubly stochastic: the uniform start is stationary
    # the label says which chain: the most frequent step (next - previous mod 4) is the chain id
    steps = np.stack([np.bincount(row, minlength=4) for row in (seq[:, 1:] - seq[:, :-1]) % 4])
    assert np.mean(steps.argmax(axis=1) == y) > 0.95


def test_mnist_labels_come_from_the_idx1_files(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (12, 28, 28), dtype=np.uint8)
    labels = np.array([5, 0, 4, 1, 9, 2, 1, 3, 1, 4, 3, 5])
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(idx_images(images))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(idx_labels(labels))
    with pytest.warns(ChecksumWarning):
        train, val = (MNIST().load(s, source_dir=str(tmp_path)) for s in ("train", "val"))
    cut = MNIST.holdout.indices(12)
    np.testing.assert_array_equal(train.labels, labels[cut["train"]])
    np.testing.assert_array_equal(val.labels, labels[cut["val"]])
    assert set(train.info["label_files"]["files"]) == {"train-labels-idx1-ubyte.gz"}
    assert "train-labels-idx1-ubyte.gz" not in train.info["files"]  # images only: what a holdout is cut from

    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(idx_labels(labels[:5]))
    with pytest.warns(ChecksumWarning), pytest.raises(PipelineError, match="holds 5 labels for 12 images"):
        MNIST().load("train", source_dir=str(tmp_path))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(idx_images(images[:1]))  # an image file in its place
    with pytest.warns(ChecksumWarning), pytest.raises(PipelineError, match="not an IDX1 ubyte label file"):
        MNIST().load("train", source_dir=str(tmp_path))
    truncated = gzip.compress(gzip.decompress(idx_labels(labels))[:-2])
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(truncated)
    with pytest.warns(ChecksumWarning), pytest.raises(PipelineError, match="truncated"):
        MNIST().load("train", source_dir=str(tmp_path))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(idx_labels(np.full(12, 10)))  # not a digit
    with pytest.warns(ChecksumWarning), pytest.raises(PipelineError, match=r"expected 11 class ids in 0\.\.9; .*--no-labels"):
        MNIST().load("train", source_dir=str(tmp_path))

    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.warns(ChecksumWarning), pytest.raises(DownloadError) as info:
        MNIST().load("train", source_dir=str(tmp_path))
    assert "train-labels-idx1-ubyte.gz" in str(info.value) and "--no-labels" in str(info.value)
    with pytest.warns(ChecksumWarning):  # the images alone need no label file
        assert MNIST().load("train", source_dir=str(tmp_path), labels=False).labels is None


def test_cifar10_labels_come_from_the_batches(tmp_path):
    rng = np.random.default_rng(0)
    batches = {f"data_batch_{i}": rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8) for i in range(1, 6)}
    batches["test_batch"] = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    labels = {name: rng.integers(0, 10, len(images)) for name, images in batches.items()}
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(cifar_tarball(batches, labels))
    with pytest.warns(ChecksumWarning):
        train, test = (CIFAR10().load(s, source_dir=str(tmp_path)) for s in ("train", "test"))
    everything = np.concatenate([labels[f"data_batch_{i}"] for i in range(1, 6)])
    np.testing.assert_array_equal(train.labels, everything[CIFAR10.holdout.indices(15)["train"]])
    np.testing.assert_array_equal(test.labels, labels["test_batch"])
    assert CIFAR10.label_field.class_names[:2] == ["airplane", "automobile"]

    labels["test_batch"] = labels["test_batch"][:2]  # fewer labels than images
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(cifar_tarball(batches, labels))
    with pytest.warns(ChecksumWarning), pytest.raises(PipelineError, match="2 labels for 4 images"):
        CIFAR10().load("test", source_dir=str(tmp_path))


@pytest.mark.filterwarnings("ignore::pipelines.data.download.ChecksumWarning")
def test_text8_has_no_labels_and_its_sets_have_no_y(tmp_path):
    with zipfile.ZipFile(tmp_path / "text8.zip", "w") as z:
        z.writestr("text8", fake_text(256 * 30))
    assert Text8.label_field is None and Text8().load("test", source_dir=str(tmp_path)).labels is None
    m = write_shards("text8", "test", str(tmp_path / "sets"), source_dir=str(tmp_path))
    assert not m.has_labels and m.to_json()["format_version"] == 1 and "y" not in read_items(m.url)[0]
    with pytest.raises(ManifestError) as info:
        shard_dataset(m.url, rank=0, world_size=1, labels=True)
    message = str(info.value)
    assert "\n" not in message and m.url in message and "has no class labels" in message
    assert "`bfn data shard text8 --split test`" in message


# ------------------------------------------------------------------------------ writer and readers

def test_digits_labels_round_trip_through_writer_and_reader(tmp_path):
    m = write_shards("digits", "test", str(tmp_path), shard_size=100, seed=0)
    source = Digits().load("test")
    data = json.loads(storage.read_bytes(m.url))
    assert data["format_version"] == 2 and data["layout"]["members"] == ["x.uint8", "y.int64"]
    assert data["layout"]["record_bytes"] == 2048  # 512 + 512 for x (64 bytes), 512 + 512 for y (8)
    y_schema = data["schema"]["y"]
    assert y_schema["dtype"] == "int64" and y_schema["shape"] == [] and y_schema["num_classes"] == 10
    assert y_schema["class_counts"] == np.bincount(source.labels, minlength=10).tolist()
    again = load_manifest(m.url)
    assert again.has_labels and again.label_field.class_names == [str(d) for d in range(10)]

    items = read_items(m.url)
    assert len(items) == 297
    for item in items:
        assert item["y"].dtype == torch.int64 and item["y"].shape == ()
        assert int(item["y"]) == source.labels[int(item["__key__"])]
    assert "y" not in read_items(m.url, labels=False)[0]

    # a shard is still a plain tar: `tar` sees KEY.x.uint8 then KEY.y.int64 for every sample
    with tarfile.open(tmp_path / "test" / m.shards[0].name) as tar:
        names = tar.getnames()
        first = names[0].split(".")[0]
        assert names[:2] == [f"{first}.x.uint8", f"{first}.y.int64"] and len(names) == 200
        assert int(np.frombuffer(tar.extractfile(names[1]).read(), np.int64)[0]) == source.labels[int(first)]


def test_batches_carry_labels_with_workers_and_padding(tmp_path):
    m = write_shards("digits", "test", str(tmp_path), shard_size=40, seed=0)
    labels = Digits().load("test").labels
    loader, n = make_loader(m.url, batch_size=32, rank=1, world_size=2, num_workers=2, seed=3, labels=True)
    batches = list(loader)
    assert len(batches) == n
    for batch in batches:
        assert batch["y"].shape == (len(batch["x"]),) and batch["y"].dtype == torch.int64
        np.testing.assert_array_equal(batch["y"].numpy(), labels[[int(k) for k in batch["__key__"]]])
    assert any(batch["pad"].any() for batch in batches)  # padded rows carry their sample's label too

    pairs = list(evaluation_batches(m.url, batch_size=64, rank=0, world_size=1, data_kind=None, num_classes=None,
                                    device=torch.device("cpu"), labels=True))
    y = torch.cat([p[1] for p in pairs]).numpy()
    assert sum(len(x) for x, _ in pairs) == len(y) == 297
    assert np.array_equal(np.bincount(y, minlength=10), np.bincount(labels, minlength=10))


def test_mixture_labels_round_trip(tmp_path):
    src = GaussianMixture2D(num_samples={"train": 300, "test": 10})
    m = write_shards(src, "train", str(tmp_path), shard_size=64, seed=2)
    expected = src.load("train", seed=2)
    items = read_items(m.url)
    keys = [int(it["__key__"]) for it in items]
    y = np.array([int(it["y"]) for it in items])
    np.testing.assert_array_equal(y, expected.labels[keys])
    x = np.stack([it["x"].numpy() for it in items])
    nearest = np.linalg.norm(x[:, None] - src.means()[None], axis=-1).argmin(axis=1)
    assert np.mean(nearest == y) > 0.99


def test_fast_path_and_webdataset_fallback_agree_on_labels(tmp_path):
    import webdataset as wds

    src = MarkovSequences(num_samples={"train": 230, "test": 10}, chains=3)
    m = write_shards(src, "train", str(tmp_path), shard_size=50, seed=1)
    general = dataclasses.replace(m, layout=None)  # member by member through webdataset's tar iterator
    for rank in range(2):
        fast = list(shard_dataset(m, rank=rank, world_size=2, seed=4))
        slow = list(shard_dataset(general, rank=rank, world_size=2, seed=4))
        assert [it["__key__"] for it in fast] == [it["__key__"] for it in slow]
        assert all(torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"]) for a, b in zip(fast, slow))
    labels = src.load("train", seed=1).labels
    plain = list(wds.WebDataset([m.shard_url(s) for s in m.shards], shardshuffle=False, empty_check=False))
    assert len(plain) == 230
    assert all(int(np.frombuffer(s["y.int64"], np.int64)[0]) == labels[int(s["__key__"])] for s in plain)


def test_unlabelled_sets_are_written_and_read_exactly_as_before(tmp_path):
    m = write_shards("digits", "test", str(tmp_path / "new"), shard_size=100, seed=0, labels=False)
    assert [s.sha256 for s in m.shards] == UNLABELLED_DIGITS_TEST
    assert not m.has_labels and m.label_field is None and m.layout["record_bytes"] == 1024
    # the manifest as the previous version wrote it: format 1, a layout without "members"
    old = json.loads(storage.read_bytes(m.url))
    assert old["format_version"] == 1 and set(old["schema"]) == {"x"}
    del old["layout"]["members"]
    storage.write_bytes(m.url, json.dumps(old).encode())
    items = read_items(m.url)
    source = Digits().load("test", labels=False)
    assert len(items) == 297 and all(set(it) == {"__key__", "x", "pad"} for it in items)
    assert all(np.array_equal(it["x"].numpy(), read_items(m.url, data_kind="discretised", num_classes=17)[i]["x"].numpy())
               for i, it in enumerate(items[:5]))
    batch = next(iter(make_loader(m.url, batch_size=300, rank=0, world_size=1, shuffle=False)[0]))
    assert set(batch) == {"x", "__key__", "pad"}
    raw = read_items(m.url, data_kind="discrete", num_classes=17)
    assert all(np.array_equal(it["x"].numpy(), source.data[int(it["__key__"])]) for it in raw)
    with pytest.raises(ManifestError, match=r"digits/test\) has no class labels: rewrite it with `bfn data shard digits"):
        make_loader(m.url, batch_size=8, rank=0, world_size=1, labels=True)


def test_a_tampered_label_is_caught(tmp_path):
    m = write_shards("digits", "test", str(tmp_path), shard_size=100, seed=0)
    url = m.shard_url(0)
    data = bytearray(storage.read_bytes(url))
    label_at = 1024 + 512  # the first sample's y member: after x's header and block, and y's header
    original = int(np.frombuffer(bytes(data[label_at:label_at + 8]), np.int64)[0])
    data[label_at] = (original + 1) % 10  # another valid class: only the sha256 can tell
    storage.write_bytes(url, bytes(data))
    with pytest.raises(ShardError, match=r"sha256 [0-9a-f]{64} differs from the manifest's"):
        read_items(m.url, verify_sha256=True)
    assert int(read_items(m.url)[0]["y"]) == (original + 1) % 10  # unverified, the structure cannot see it

    data[label_at + 7] = 0x80  # a negative id: out of range, caught without the sha256 as well
    storage.write_bytes(url, bytes(data))
    with pytest.raises(ShardError, match=r"holds -\d+, outside 0\.\.9"):
        read_items(m.url)
    data[label_at + 7], data[label_at] = 0, 10
    storage.write_bytes(url, bytes(data))
    with pytest.raises(ShardError, match=r"holds 10, outside 0\.\.9"):
        read_items(m.url)


def test_in_memory_sources_can_carry_labels_and_their_range_is_checked(tmp_path):
    from pipelines.data.schema import FieldSpec, ReadSpec

    field = FieldSpec("uint8", (3,), "discrete", 5, "sequence")
    data = {"train": np.arange(12, dtype=np.uint8).reshape(4, 3) % 5}
    src = ArraySource("toy", data, field, ReadSpec("discrete", 5), labels={"train": np.array([0, 1, 1, 0])},
                      label_field=class_label_field(2, ["no", "yes"]))
    m = write_shards(src, "train", str(tmp_path), shard_size=3)
    assert [int(it["y"]) for it in sorted(read_items(m.url), key=lambda it: it["__key__"])] == [0, 1, 1, 0]
    bad = ArraySource("toy", data, field, ReadSpec("discrete", 5), labels={"train": np.array([0, 1, 2, 0])},
                      label_field=class_label_field(2))
    with pytest.raises(PipelineError, match="expected 4 class ids in 0..1"):
        write_shards(bad, "train", str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="3 class names for 2 classes"):
        class_label_field(2, ["a", "b", "c"])


def test_a_manifest_whose_y_is_not_a_class_label_is_refused(tmp_path):
    m = write_shards("digits", "test", str(tmp_path), shard_size=100)
    data = json.loads(storage.read_bytes(m.url))
    data["schema"]["y"]["shape"] = [2]
    storage.write_bytes(m.url, json.dumps(data).encode())
    with pytest.raises(ManifestError, match="field 'y' that is not a scalar integer class label"):
        load_manifest(m.url)


def test_record_pairs_with_different_keys_are_not_the_fixed_layout(tmp_path):
    m = write_shards("digits", "test", str(tmp_path), shard_size=100)
    data = bytearray(storage.read_bytes(m.shard_url(0)))
    members = [("x.uint8", 64), ("y.int64", 8)]
    keys, (x, y) = parse_records(bytes(data), count=3, members=members, key_chars=6)
    assert x.shape == (3, 64) and y.shape == (3, 8) and len(keys) == 3
    name = bytearray(data[1024:1024 + 6])  # the first sample's y header gets another key (checksum fixed)
    data[1024:1030] = b"999999"
    checksum = sum(data[1024:1024 + 512]) - sum(data[1024 + 148:1024 + 156]) + 8 * ord(" ")
    data[1024 + 148:1024 + 155] = f"{checksum:06o}\0".encode()
    assert name != data[1024:1030]
    with pytest.raises(LayoutError, match="different keys"):
        parse_records(bytes(data), count=3, members=members, key_chars=6)
