"""Shards (boto3) and checkpoints (pyarrow, as Ray Train writes them) reach the same S3 server from the
same environment variables, and each side reads what the other wrote."""
from __future__ import annotations

import uuid

import pyarrow.fs
import pytest

from pipelines.data import s3, storage
from pipelines.data.localserver import free_port
from pipelines.data.manifest import load_manifest
from pipelines.data.writer import write_shards

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("endpoint_variable", ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"])
def test_shards_and_checkpoints_land_in_the_same_bucket(s3_env, tmp_path, monkeypatch, endpoint_variable):
    if endpoint_variable == "AWS_ENDPOINT_URL_S3":  # the S3-only variable wins over the general one, for both
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_env.endpoint_url)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    bucket = s3_env.make_bucket(f"bfn-{uuid.uuid4().hex[:12]}")  # "s3://bfn-..."; the env is all that is set
    manifest = write_shards("digits", "test", f"{bucket}/data", shard_size=100, seed=0)

    # a checkpoint folder, written the way Ray Train writes one to RunConfig(storage_path, storage_filesystem)
    local = tmp_path / "checkpoint_000000"
    local.mkdir()
    (local / "model.pt").write_bytes(b"weights" * 100)
    (local / "state.json").write_text('{"step": 10}')
    path, fs = storage.checkpoint_location(f"{bucket}/runs", "unused")
    assert path == f"{bucket[len('s3://'):]}/runs" and isinstance(fs, pyarrow.fs.S3FileSystem)
    pyarrow.fs.copy_files(str(local), f"{path}/run-1/checkpoint_000000",
                          source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=fs)
    with fs.open_output_stream(f"{path}/run-1/result.json") as out:
        out.write(b'{"loss": 1.0}')

    # both are on the one server the environment names, in the one bucket
    objects = s3.s3_client().list_objects_v2(Bucket=bucket[len("s3://"):])["Contents"]
    keys = {o["Key"] for o in objects}
    shard_keys = {f"data/test/{s.name}" for s in manifest.shards} | {"data/test/manifest.json"}
    checkpoint_keys = {"runs/run-1/checkpoint_000000/model.pt", "runs/run-1/checkpoint_000000/state.json",
                       "runs/run-1/result.json"}
    assert keys == shard_keys | checkpoint_keys

    # and each client reads what the other wrote
    assert storage.read_bytes(f"{bucket}/runs/run-1/checkpoint_000000/state.json") == b'{"step": 10}'
    with fs.open_input_stream(f"{path[:-len('/runs')]}/data/test/manifest.json") as f:
        assert f.read() == storage.read_bytes(manifest.url)
    assert load_manifest(manifest.url).num_samples == 297
