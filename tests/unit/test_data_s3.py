"""One S3 configuration: boto3 (shards) and pyarrow (checkpoints) built from the same settings."""
from __future__ import annotations

import pyarrow.fs
import pytest

from pipelines.data import s3, storage
from pipelines.errors import StorageError

ENV = {
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    "AWS_REGION": "eu-west-3",
    "AWS_DEFAULT_REGION": "us-west-2",  # AWS_REGION wins, for both clients
    "AWS_MAX_ATTEMPTS": "7",
    "BFN_S3_CONNECT_TIMEOUT": "2.5",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}


@pytest.fixture
def s3_vars(monkeypatch):
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)


def test_settings_from_the_environment():
    settings = s3.S3Settings.from_env(ENV)
    assert settings == s3.S3Settings(endpoint="http://127.0.0.1:9", region="eu-west-3", connect_timeout=2.5,
                                     read_timeout=60.0, max_attempts=7, addressing_style="path")
    assert s3.S3Settings.from_env({"AWS_ENDPOINT_URL_S3": "http://a:1", "AWS_ENDPOINT_URL": "http://b:2"}).endpoint \
        == "http://a:1"  # the S3-only variable first, as boto3 reads them
    assert s3.S3Settings.from_env({"AWS_DEFAULT_REGION": "ap-south-1"}).region == "ap-south-1"
    aws = s3.S3Settings.from_env({})
    assert aws.endpoint is None and aws.region == "us-east-1" and aws.addressing_style == "auto"
    assert s3.S3Settings.from_env({"AWS_ENDPOINT_URL": "minio.internal:9000"}).endpoint_parts() == \
        ("https", "minio.internal:9000")
    with pytest.raises(StorageError, match="AWS_MAX_ATTEMPTS='many' is not a positive int: fix or unset it"):
        s3.S3Settings.from_env({"AWS_MAX_ATTEMPTS": "many"})


def test_boto3_and_arrow_get_the_same_endpoint_region_timeouts_and_retries(s3_vars):
    settings = s3.S3Settings.from_env()
    client = s3.s3_client(settings)
    config = client.meta.config
    assert client.meta.endpoint_url == "http://127.0.0.1:9" and client.meta.region_name == "eu-west-3"
    assert (config.connect_timeout, config.read_timeout) == (2.5, 60.0)
    assert config.retries == {"mode": "standard", "total_max_attempts": 7} and config.s3 == {"addressing_style": "path"}
    assert s3.s3_client() is client  # cached per process and configuration

    options = settings.arrow_options()
    assert options["retry_strategy"].max_attempts == 7 and options["force_virtual_addressing"] is False
    fs = s3.arrow_filesystem()
    assert isinstance(fs, pyarrow.fs.S3FileSystem) and fs.region == "eu-west-3"
    arrow = fs.__reduce__()[1][0]  # what pyarrow itself records of the filesystem's options
    assert (arrow["scheme"], arrow["endpoint_override"], arrow["region"]) == ("http", "127.0.0.1:9", "eu-west-3")
    assert (arrow["connect_timeout"], arrow["request_timeout"]) == (2.5, 60.0)


def test_checkpoint_location(s3_vars, tmp_path, monkeypatch):
    path, fs = storage.checkpoint_location("s3://bucket/runs/", "unused")
    assert path == "bucket/runs" and isinstance(fs, pyarrow.fs.S3FileSystem) and fs.region == "eu-west-3"
    assert storage.checkpoint_location("s3://bucket", "unused")[0] == "bucket"
    monkeypatch.chdir(tmp_path)
    assert storage.checkpoint_location(None, "results") == (str(tmp_path / "results"), None)
    assert storage.checkpoint_location("", f"file://{tmp_path}/a") == (str(tmp_path / "a"), None)
    with pytest.raises(StorageError, match="unsupported URL scheme 'gs'"):
        storage.checkpoint_location("gs://bucket/runs", "unused")

