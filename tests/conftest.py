"""Shared fixtures: real services on loopback, started once per test session."""
from __future__ import annotations

import os
import uuid

import pytest

# Ray reads this once, when it is first imported, whichever test imports it: every cluster a test
# session starts (tests/services.ray_cluster, a local ray.init) must keep its nodes on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(scope="module")
def one_torch_thread():
    """For a module that trains tiny networks: ~2x faster on one thread (more only contend), and much
    faster on a busy machine; the thread count is restored after the module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------- S3-compatible server

@pytest.fixture(scope="session")
def s3_server():
    """moto's standalone S3 server as a child process on 127.0.0.1 and a free port, for the session.

    Yields a ``pipelines.data.localserver.LocalS3Server``: ``.endpoint_url``, ``.env`` (AWS_ENDPOINT_URL,
    AWS_ACCESS_KEY_ID=testing, AWS_SECRET_ACCESS_KEY=testing, AWS_DEFAULT_REGION=us-east-1) and
    ``.make_bucket(name) -> "s3://name"``.  Stopped (its process group killed) at session end; it keeps
    everything in memory, so nothing outlives the session.
    """
    from pipelines.data.localserver import LocalS3Server

    server = LocalS3Server().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point boto3 in this process (and in processes it forks) at the session's S3 server."""
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(key, raising=False)
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture(params=["local", "s3"])
def storage_root(request, tmp_path):
    """A fresh, empty folder URL for shard sets: once on local disk, once in a new S3 bucket."""
    if request.param == "local":
        return str(tmp_path / "shards")
    server = request.getfixturevalue("s3_env")
    return server.make_bucket(f"bfn-{uuid.uuid4().hex[:12]}") + "/shards"
