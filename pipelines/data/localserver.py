"""A loopback S3-compatible server (moto's standalone server) for tests, benchmarks and demos.

It runs as a child process on 127.0.0.1 and a free port, in memory: everything in it is gone when
it stops, which suits tests and benchmarks but not data anyone keeps.  Nothing here imports moto;
it only starts ``python -m moto.server``, so the pipelines layer gains no dependency.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}  # moto accepts any


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalS3Server:
    """``with LocalS3Server() as s3: ...``: ``s3.endpoint_url``, ``s3.env``, ``s3.make_bucket(name)``."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, python: str = sys.executable,
                 startup_timeout: float = 60.0):
        if not host.startswith("127."):
            raise ValueError("the local S3 server binds loopback addresses only (127.x)")
        self.host, self.port, self.python, self.startup_timeout = host, port, python, startup_timeout
        self._proc: subprocess.Popen | None = None
        self._log = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point pipelines.data.s3 (boto3 for shards, pyarrow for checkpoints) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            **TEST_CREDENTIALS,
            "AWS_DEFAULT_REGION": "us-east-1",
            # never read a developer's real ~/.aws files while talking to the test server
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def start(self) -> "LocalS3Server":
        last_error, requested = "", self.port
        for _ in range(3):  # a free port can be taken between probing and binding: retry
            port = requested or free_port(self.host)
            self._log = tempfile.TemporaryFile()
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
            env.update(self.env | {"AWS_ENDPOINT_URL": f"http://{self.host}:{port}"})
            self._proc = subprocess.Popen(
                [self.python, "-m", "moto.server", "-H", self.host, "-p", str(port)],
                stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,  # its own process group: stop() kills it and only it
            )
            self.port = port
            if self._wait_ready():
                return self
            last_error = self._log_tail()
            self.stop()
        raise RuntimeError(f"the local S3 server (moto) did not start: {last_error}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=2):
                    return True
            except urllib.error.HTTPError:
                return True  # it answered: it is up
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        return False

    def _log_tail(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read()[-2000:].decode("utf-8", "replace").strip()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
                            aws_access_key_id=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])

    def make_bucket(self, name: str) -> str:
        """Create ``name`` (if absent) and return ``s3://name``."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        return f"s3://{name}"

    def __enter__(self) -> "LocalS3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
