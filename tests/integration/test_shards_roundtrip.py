"""Shard a data set to local disk and to a real S3-compatible server, read it back as 2 ranks x 2 workers.

Every test runs twice (``storage_root``): on local disk and on moto's standalone S3 server on loopback.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from bfn_core import bin_centres
from pipelines.data.reader import make_loader, shard_dataset
from pipelines.data.sources import Digits, GaussianMixture2D, MarkovSequences
from pipelines.data.writer import write_shards

pytestmark = pytest.mark.integration


def read_epoch(url, *, world_size, num_workers, batch_size, **kw):
    """Per rank: (promised batch count, batches actually yielded)."""
    out = []
    for rank in range(world_size):
        loader, n = make_loader(url, batch_size=batch_size, rank=rank, world_size=world_size,
                                num_workers=num_workers, **kw)
        out.append((n, list(loader)))
    return out


def test_one_epoch_yields_every_sample_once_with_equal_batch_counts(storage_root):
    manifest = write_shards("digits", "test", storage_root, shard_size=40, seed=0)  # 297 samples, 8 shards
    assert manifest.num_samples == 297 and len(manifest.shards) == 8
    loaded = Digits().load("test")
    source = loaded.data
    ranks = read_epoch(manifest.url, world_size=2, num_workers=2, batch_size=16, shuffle=True, seed=5)

    # equal batch counts, as promised before reading: 2 workers x ceil(75 / 16)
    assert [n for n, _ in ranks] == [10, 10]
    assert [len(batches) for _, batches in ranks] == [10, 10]

    real, padded = Counter(), 0
    centres = bin_centres(17).numpy()
    for _, batches in ranks:
        for batch in batches:
            assert batch["x"].dtype.is_floating_point and batch["x"].shape[1:] == (8, 8, 1)
            keys = [int(k) for k in batch["__key__"]]  # every sample's class label travelled with it
            assert batch["y"].dtype == torch.int64 and batch["y"].tolist() == loaded.labels[keys].tolist()
            for key, x, pad in zip(batch["__key__"], batch["x"].numpy(), batch["pad"].tolist()):
                np.testing.assert_array_equal(x, centres[source[int(key)]])  # the sample equals its source
                if pad:
                    padded += 1
                else:
                    real[key] += 1
    assert len(real) == 297 and set(real.values()) == {1}  # every sample exactly once across ranks
    assert padded == 2 * 2 * 75 - 297  # the documented padding: ceil(N / slots) per slot


def test_samples_are_exact_for_symbols_and_floats(storage_root):
    markov = MarkovSequences(num_samples={"train": 203, "test": 10})
    mixture = GaussianMixture2D(num_samples={"train": 150, "test": 10})
    for source, shard_size in ((markov, 32), (mixture, 64)):
        m = write_shards(source, "train", storage_root, shard_size=shard_size, seed=4)
        expected = source.load("train", seed=4).data
        seen = {}
        for rank in range(3):  # world size 3 in the main process: no workers
            for item in shard_dataset(m.url, rank=rank, world_size=3, shuffle=False):
                if not item["pad"]:
                    seen[item["__key__"]] = item["x"].numpy()
        assert len(seen) == len(expected)
        for key, x in seen.items():
            want = expected[int(key)].astype(np.int64 if source is markov else np.float32)
            assert x.dtype == want.dtype
            np.testing.assert_array_equal(x, want)


def test_epochs_are_reproducible_from_the_seed(storage_root):
    m = write_shards("digits", "test", storage_root, shard_size=30, seed=0)

    def epoch(seed, number):
        ds = shard_dataset(m.url, rank=1, world_size=2, data_kind="discrete", num_classes=2, seed=seed,
                           shuffle_buffer=50)
        ds.set_epoch(number)
        items = list(ds)
        return [it["__key__"] for it in items], np.stack([it["x"].numpy() for it in items])

    keys0, x0 = epoch(seed=1, number=0)
    keys0b, x0b = epoch(seed=1, number=0)
    keys1, x1 = epoch(seed=1, number=1)
    assert keys0 == keys0b and np.array_equal(x0, x0b)  # same seed and epoch: same order, same binarisation
    assert keys0 != keys1  # next epoch: new order
    assert x0.dtype == np.int64 and set(np.unique(x0)) == {0, 1}
    first = {k: x for k, x in zip(keys0, x0)}
    again = {k: x for k, x in zip(keys1, x1)}
    common = [k for k in first if k in again]
    assert any(not np.array_equal(first[k], again[k]) for k in common)  # fresh Bernoulli draws per epoch


def test_writes_are_deterministic_for_a_seed(storage_root):
    a = write_shards("digits", "test", f"{storage_root}/a", shard_size=100, seed=3)
    b = write_shards("digits", "test", f"{storage_root}/b", shard_size=100, seed=3)
    c = write_shards("digits", "test", f"{storage_root}/c", shard_size=100, seed=4)
    assert [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards]
    assert [s.sha256 for s in a.shards] != [s.sha256 for s in c.shards]
    assert a.to_json()["schema"] == c.to_json()["schema"]


def test_evaluation_mode_with_drop_last_and_manifest_metadata(storage_root):
    m = write_shards("digits", "train", storage_root, shard_size=128, seed=0)  # 1350 samples (150 held out as val), 11 shards
    text = repr(m.to_json())
    assert "testing" not in text and "AWS" not in text  # nothing credential-like in a manifest
    assert m.default_read.label() == "discretised K=17" and m.source["name"] == "digits"
    ranks = read_epoch(m.url, world_size=2, num_workers=2, batch_size=64, drop_last=True, shuffle=False,
                       data_kind="discretised", num_classes=16)
    assert [n for n, _ in ranks] == [len(b) for _, b in ranks] == [2 * (338 // 64)] * 2  # ceil(1350 / 4 slots) = 338 per slot
    assert all(batch["x"].shape[0] == 64 for _, batches in ranks for batch in batches)
    values = np.unique(np.concatenate([b["x"].numpy().ravel() for _, bs in ranks for b in bs]))
    assert set(values) <= set(bin_centres(16).numpy())


def test_shards_are_plain_webdataset_tars(storage_root):
    import webdataset as wds

    from pipelines.data import storage

    storage.register_webdataset_opener()  # s3:// through boto3, no `aws` command
    m = write_shards("digits", "test", storage_root, shard_size=100, seed=0)
    samples = list(wds.WebDataset([m.shard_url(s) for s in m.shards], shardshuffle=False, empty_check=False))
    source = Digits().load("test")
    assert len(samples) == 297 and len({s["__key__"] for s in samples}) == 297
    for s in samples:
        image = np.frombuffer(s["x.uint8"], dtype=np.uint8).reshape(8, 8, 1)
        np.testing.assert_array_equal(image, source.data[int(s["__key__"])])
        assert np.frombuffer(s["y.int64"], dtype=np.int64)[0] == source.labels[int(s["__key__"])]


def test_shard_sets_without_the_fixed_layout_read_the_same(storage_root):
    import dataclasses

    m = write_shards("digits", "test", storage_root, shard_size=40, seed=0)
    general = dataclasses.replace(m, layout=None)  # as if written by another tool: member by member
    for rank in range(2):
        fast = [(it["__key__"], it["x"], it["y"]) for it in shard_dataset(m, rank=rank, world_size=2, seed=3)]
        slow = [(it["__key__"], it["x"], it["y"]) for it in shard_dataset(general, rank=rank, world_size=2, seed=3)]
        assert [k for k, _, _ in fast] == [k for k, _, _ in slow]
        assert all(np.array_equal(a, b) and int(ya) == int(yb) for (_, a, ya), (_, b, yb) in zip(fast, slow))


def test_file_urls_work_like_paths(tmp_path):
    m = write_shards("synthetic-markov", "test", f"file://{tmp_path}/sets", shard_size=300, seed=0)
    assert m.url == f"file://{tmp_path}/sets/test/manifest.json"
    assert (tmp_path / "sets" / "test" / m.shards[6].name).is_file() and m.shards[6].name.startswith("test-000006-")
    loader, n = make_loader(m.url, batch_size=100, rank=0, world_size=1, shuffle=False)
    batches = list(loader)
    assert n == len(batches) == 20 and batches[0]["x"].dtype == torch.int64 and batches[0]["x"].shape == (100, 16)
