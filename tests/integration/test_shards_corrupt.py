"""Missing and corrupt shards, skip mode, and interrupted writes: on local disk and on an S3 server."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from pipelines.data import storage
from pipelines.data.manifest import load_manifest
from pipelines.data.reader import ShardSkippedWarning, make_loader, shard_dataset
from pipelines.data.writer import write_shards
from pipelines.errors import PipelineError, ShardError

pytestmark = pytest.mark.integration


def shard_keys(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [m.name.split(".")[0] for m in tar.getmembers()]


@pytest.fixture
def digits(storage_root):
    """The digits test split (297 samples) in 8 shards of 40."""
    return write_shards("digits", "test", storage_root, shard_size=40, seed=0)


def read_all(manifest_url, **kw):
    return list(shard_dataset(manifest_url, rank=0, world_size=1, shuffle=False, **kw))


def test_truncated_shard_is_named_with_its_manifest(digits):
    url = digits.shard_url(2)
    data = storage.read_bytes(url)
    storage.write_bytes(url, data[: len(data) // 2 + 100])  # cut inside a member
    with pytest.raises(ShardError) as info:
        read_all(digits.url)
    assert info.value.shard_url == url and info.value.manifest_url == digits.url
    assert url in str(info.value) and digits.url in str(info.value) and "\n" not in str(info.value)


def test_errors_from_dataloader_workers_keep_their_type_and_message(digits):
    url = digits.shard_url(5)
    storage.delete(url)
    loader, _ = make_loader(digits.url, batch_size=8, rank=0, world_size=1, num_workers=2, shuffle=False)
    with pytest.raises(ShardError, match="it is missing") as info:
        list(loader)
    message = str(info.value)
    assert url in message and digits.url in message  # the message itself names shard and manifest
    assert "Traceback" not in message and "\n" not in message
    assert info.value.shard_url is None  # re-created from its message: no fields parsed back out of text


def test_flipped_payload_bytes_fail_the_sha256_check(digits):
    url = digits.shard_url(1)
    data = bytearray(storage.read_bytes(url))
    data[512 + 10] ^= 0xFF  # inside the first sample's pixels: the tar stays well formed
    storage.write_bytes(url, bytes(data))
    with pytest.raises(ShardError, match=r"sha256 [0-9a-f]{64} differs from the manifest's"):
        read_all(digits.url, verify_sha256=True)
    # without verification, a grey level beyond the 17 levels is still caught by the range check
    with pytest.raises(ShardError, match=r"holds 2\d\d, outside 0\.\.16"):
        read_all(digits.url)


def test_flipped_header_bytes_are_caught_by_the_sample_count(digits):
    url = digits.shard_url(0)
    data = bytearray(storage.read_bytes(url))
    record = digits.layout["record_bytes"]  # per sample: x's member, then its label's
    data[3 * record + 5] ^= 0xFF  # the name field of the fourth sample's first header: its checksum fails
    storage.write_bytes(url, bytes(data))
    with pytest.raises(ShardError, match="it holds 3 samples, the manifest lists 40"):
        read_all(digits.url)


def test_skip_mode_counts_skipped_shards_and_keeps_batch_counts_equal(digits):
    truncated, missing = digits.shard_url(3), digits.shard_url(6)
    original = {i: shard_keys(storage.read_bytes(digits.shard_url(i))) for i in range(len(digits.shards))}
    data = storage.read_bytes(truncated)
    storage.write_bytes(truncated, data[:1500])
    storage.delete(missing)

    skipped, real, pads = set(), [], 0
    for rank in range(2):
        loader, n = make_loader(digits.url, batch_size=16, rank=rank, world_size=2, num_workers=2, seed=1,
                                on_corrupt="skip")
        batches = list(loader)
        assert len(batches) == n == 10  # same count as with intact shards
        skipped.update(loader.skipped_shards)
        for b in batches:
            real += [k for k, p in zip(b["__key__"], b["pad"].tolist()) if not p]
            pads += int(b["pad"].sum())
    assert skipped == {digits.shards[3].name, digits.shards[6].name}
    intact = {k for i, keys in original.items() if i not in (3, 6) for k in keys}
    assert intact <= set(real) and len(real) == len(set(real))  # intact samples once each, no duplicates
    assert not set(real) & set(original[6])
    assert len(real) + pads == 2 * 2 * 75


def test_skip_mode_warns_in_the_main_process(digits):
    storage.delete(digits.shard_url(0))
    ds = shard_dataset(digits.url, rank=0, world_size=1, on_corrupt="skip", shuffle=False)
    with pytest.warns(ShardSkippedWarning, match=r"skipping shard .*test-000000-[0-9a-f]{8}\.tar of .*manifest\.json: it is missing"):
        items = list(ds)
    assert len(items) == 297 and sum(it["pad"] for it in items) == 40
    assert ds.skipped_shards == [digits.shards[0].name]


def _intact(manifest) -> None:
    """The set a manifest lists is all there, byte for byte."""
    import hashlib

    again = load_manifest(manifest.url)
    assert [s.name for s in again.shards] == [s.name for s in manifest.shards]
    for i, shard in enumerate(again.shards):
        assert hashlib.sha256(storage.read_bytes(again.shard_url(i))).hexdigest() == shard.sha256


def test_a_failed_rewrite_leaves_the_good_set_readable(storage_root, monkeypatch):
    first = write_shards("digits", "test", storage_root, shard_size=40, seed=0)
    calls = {"n": 0}
    real_write = storage.write_bytes

    def failing_write(url, data, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk pulled mid-write")
        return real_write(url, data, **kw)

    monkeypatch.setattr(storage, "write_bytes", failing_write)
    with pytest.raises(RuntimeError, match="mid-write"):
        write_shards("digits", "test", storage_root, shard_size=40, seed=1)
    monkeypatch.setattr(storage, "write_bytes", real_write)
    _intact(first)  # the old manifest and every shard it lists, untouched
    leftovers = storage.list_names(storage.parent(first.url))
    assert sorted(leftovers) == sorted(["manifest.json"] + [s.name for s in first.shards])  # the attempt's own shards went

    # a source that fails to load (a bad --source-dir, a failed download) touches nothing either
    from pipelines.data.sources import get_source

    source = get_source("digits")
    monkeypatch.setattr(source, "load", lambda *a, **k: (_ for _ in ()).throw(PipelineError("source files not found")))
    with pytest.raises(PipelineError, match="not found"):
        write_shards(source, "test", storage_root, shard_size=40, seed=2)
    _intact(first)


def test_rewrite_with_fewer_shards_removes_stale_ones(storage_root):
    write_shards("digits", "test", storage_root, shard_size=40, seed=0)
    m = write_shards("digits", "test", storage_root, shard_size=100, seed=0)
    assert storage.list_names(storage.parent(m.url)) == ["manifest.json"] + [s.name for s in m.shards]


def test_training_and_evaluation_refuse_a_tampered_shard(digits):
    """A changed byte that stays in range (grey level 3 -> 4) passes every structural check; only the
    sha256 catches it, and training and evaluation check it by default."""
    import torch

    from pipelines.config import load_config
    from pipelines.data.reader import evaluation_batches
    from pipelines.worker import train_batches

    url = digits.shard_url(1)
    data = bytearray(storage.read_bytes(url))
    offset = next(i for i in range(512, 512 + 64) if data[i] < 16)  # a pixel of the first sample below the top level
    data[offset] += 1
    storage.write_bytes(url, bytes(data))
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "digits_discretised.yaml",
                      {"data.train": digits.url, "data.val": digits.url, "data.loader_workers": 0,
                       "training.batch_size": 40})
    with pytest.raises(ShardError, match=rf"{digits.shards[1].name}.*sha256 [0-9a-f]{{64}} differs"):
        for _ in range(10):
            next(train_batches(cfg, 0, 1, 0, torch.device("cpu")))
    with pytest.raises(ShardError, match="differs from the manifest's"):
        list(evaluation_batches(digits.url, batch_size=40, rank=0, world_size=1, data_kind="discretised",
                                num_classes=17, device=torch.device("cpu")))
    # switched off, the altered sample is read as it is (the structural checks cannot see it)
    assert len(list(evaluation_batches(digits.url, batch_size=40, rank=0, world_size=1, data_kind="discretised",
                                       num_classes=17, device=torch.device("cpu"), verify_sha256=False))) == 8
