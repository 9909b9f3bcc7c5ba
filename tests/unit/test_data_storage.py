"""URLs, atomic local writes, and the manifest format (S3 itself is exercised in tests/integration)."""
from __future__ import annotations

import dataclasses
import json
import os
import pickle

import pytest

from pipelines.data import storage
from pipelines.data.manifest import Manifest, ShardInfo, load_manifest, manifest_url, write_manifest
from pipelines.data.schema import FieldSpec, ReadSpec
from pipelines.errors import ManifestError, ShardError, StorageError


def test_urls_parse_join_and_redact():
    assert storage.parse("s3://bucket/a/b/") == storage.Location("s3", bucket="bucket", key="a/b")
    assert storage.parse("file:///tmp/x") == storage.Location("file", path="/tmp/x")
    assert storage.parse("relative/dir").path == "relative/dir"
    assert storage.join("s3://b/p", "train", "manifest.json") == "s3://b/p/train/manifest.json"
    assert storage.join("/tmp/x", "train") == "/tmp/x/train"
    assert storage.parent("s3://b/p/train/manifest.json") == "s3://b/p/train"
    assert storage.redact("http://user:secret@127.0.0.1:9000/x?X-Amz-Signature=abc") == "http://127.0.0.1:9000/x"
    for bad in ("", "s3://", "gs://bucket/x", "ftp://host/x"):
        with pytest.raises(StorageError):
            storage.parse(bad)


def test_local_write_is_atomic_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    target = tmp_path / "d" / "manifest.json"
    storage.write_bytes(str(target), b"old", durable=True)
    assert target.read_bytes() == b"old"

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StorageError, match="cannot write .*No space left on device; choose a writable --out"):
        storage.write_bytes(str(target), b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(target.parent) == ["manifest.json"]


def test_unwritable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    with pytest.raises(StorageError, match="cannot write to .*a-file/sub.*choose a writable --out"):
        storage.check_writable(str(blocker / "sub"))
    storage.check_writable(str(tmp_path / "new" / "dir"))
    assert os.listdir(tmp_path / "new" / "dir") == []


def test_local_read_list_delete(tmp_path):
    storage.write_bytes(str(tmp_path / "b"), b"2")
    storage.write_bytes(str(tmp_path / "a"), b"1")
    assert storage.list_names(str(tmp_path)) == ["a", "b"]
    assert storage.read_bytes(f"file://{tmp_path}/a") == b"1"
    with storage.open_read(str(tmp_path / "b")) as f:
        assert f.read() == b"2"
    storage.delete(str(tmp_path / "a"))
    storage.delete(str(tmp_path / "a"))  # missing is fine
    assert not storage.exists(str(tmp_path / "a"))
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(str(tmp_path / "a"))


def manifest(url: str = "") -> Manifest:
    return Manifest(
        dataset="digits", split="train",
        shards=[ShardInfo("train-000000.tar", 3, "ab" * 32, 4096), ShardInfo("train-000001.tar", 2, "cd" * 32, 3072)],
        schema={"x": FieldSpec("uint8", (8, 8, 1), "discretised", 17, "image")},
        default_read=ReadSpec("discretised", 17), variants={"binarised": ReadSpec("discrete", 2)},
        source={"name": "digits", "version": "1"}, seed=3, shard_size=3, created="2025-01-01T00:00:00Z", url=url,
    )


def test_manifest_round_trip_and_relative_shard_urls(tmp_path):
    url = str(tmp_path / "train" / "manifest.json")
    write_manifest(manifest(), url)
    loaded = load_manifest(str(tmp_path / "train"))  # the folder is accepted too
    assert loaded.url == url and loaded.num_samples == 5
    assert loaded.to_json() == manifest().to_json()
    assert loaded.shard_url(1) == str(tmp_path / "train" / "train-000001.tar")
    m = manifest("s3://bucket/sets/digits/train/manifest.json")
    assert m.shard_url(0) == "s3://bucket/sets/digits/train/train-000000.tar"
    assert manifest_url("s3://b/x/") == "s3://b/x/manifest.json"
    data = json.loads((tmp_path / "train" / "manifest.json").read_text())
    assert data["format"] == "bfn-shards" and data["num_samples"] == 5 and data["schema"]["x"]["shape"] == [8, 8, 1]


def test_bad_manifests_say_what_to_do(tmp_path):
    with pytest.raises(ManifestError, match="no manifest at .*: write the shards with `bfn data shard"):
        load_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ManifestError, match="not a bfn shard manifest"):
        load_manifest(str(tmp_path))
    broken = manifest().to_json()
    broken["num_samples"] = 6
    (tmp_path / "manifest.json").write_text(json.dumps(broken))
    with pytest.raises(ManifestError, match="shards add up to 5"):
        load_manifest(str(tmp_path))
    newer = manifest().to_json() | {"format_version": 99}
    (tmp_path / "manifest.json").write_text(json.dumps(newer))
    with pytest.raises(ManifestError, match="upgrade bfn-platform"):
        load_manifest(str(tmp_path))


def test_manifest_says_the_bits_unit_by_content():
    assert manifest().bits_unit == "dim"
    text = dataclasses.replace(manifest(), schema={"x": FieldSpec("uint8", (256,), "discrete", 27, "text")})
    assert text.bits_unit == "char"


def test_shard_error_survives_a_dataloader_worker_round_trip():
    err = ShardError("s3://b/train-000001.tar", "s3://b/manifest.json", "it is missing")
    assert (err.shard_url, err.manifest_url, err.reason) == ("s3://b/train-000001.tar", "s3://b/manifest.json",
                                                             "it is missing")
    assert str(pickle.loads(pickle.dumps(err))) == str(err) and pickle.loads(pickle.dumps(err)).reason == err.reason
    # torch re-creates worker exceptions as type(msg) with the whole worker traceback as msg
    wrapped = ("Caught ShardError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\n'
               f"pipelines.errors.ShardError: {err}\n")
    again = ShardError(wrapped)
    assert str(again) == str(err)
    assert again.shard_url is None  # only the message: no fields parsed back out of text
    assert str(pickle.loads(pickle.dumps(again))) == str(err)
    assert StorageError(wrapped.replace("ShardError", "StorageError")).args[0] == str(err)
