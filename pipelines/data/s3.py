"""One S3 configuration for everything the platform keeps in object storage.

Shards go through boto3 (storage.py, the readers, the writer); Ray Train's checkpoints go through a
pyarrow ``S3FileSystem`` (``RunConfig(storage_filesystem=...)``).  Both are built here from one
:class:`S3Settings`, read once from the environment, so they always reach the same endpoint and
region with the same timeouts, retries and addressing: a laptop, a CI job with a loopback S3
server and a cluster differ only in their environment variables (``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``, ``AWS_REGION`` or ``AWS_DEFAULT_REGION``, ``AWS_MAX_ATTEMPTS``,
``BFN_S3_CONNECT_TIMEOUT``; credentials stay with the SDKs' own lookup: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, instance roles).

The object operations below are the S3 half of storage.py's API, with botocore's failures mapped
to one-line errors that say what to do.  Nothing here ever logs or returns a credential: messages
show the endpoint with any ``user:password@`` part removed, and never the keys.
"""
from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Mapping

from pipelines.data.urls import Location, redact
from pipelines.errors import StorageError
from pipelines.names import (
    ENV_AWS_ACCESS_KEY_ID,
    ENV_AWS_DEFAULT_REGION,
    ENV_AWS_ENDPOINT_URL,
    ENV_AWS_ENDPOINT_URL_S3,
    ENV_AWS_MAX_ATTEMPTS,
    ENV_AWS_PROFILE,
    ENV_AWS_REGION,
    ENV_AWS_SHARED_CREDENTIALS_FILE,
    ENV_S3_CONNECT_TIMEOUT,
)

if TYPE_CHECKING:
    import pyarrow.fs

DEFAULT_REGION = "us-east-1"  # what both SDKs fall back to; set explicitly so neither probes EC2 metadata
READ_BUFFER = 1 << 20  # bytes per read from an S3 body: big enough to amortise HTTP chunking


@dataclass(frozen=True)
class S3Settings:
    """Where S3 is and how patiently to talk to it; one value feeds boto3 and pyarrow alike.

    Few attempts and a short connect timeout by default, so an unreachable endpoint is reported in
    seconds instead of minutes.  Path-style addressing whenever an endpoint is given: S3-compatible
    servers on loopback or a private network have no per-bucket host names.
    """

    endpoint: str | None = None  # scheme://host[:port]; None: AWS itself
    region: str = DEFAULT_REGION
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_attempts: int = 3  # per request, the first attempt included
    addressing_style: str = "auto"  # "path" | "virtual" | "auto" (the SDK's choice)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "S3Settings":
        env = os.environ if environ is None else environ
        endpoint = env.get(ENV_AWS_ENDPOINT_URL_S3) or env.get(ENV_AWS_ENDPOINT_URL) or None
        if endpoint and "://" not in endpoint:
            endpoint = f"https://{endpoint}"  # a bare host:port means TLS, as pyarrow reads it
        return cls(
            endpoint=endpoint,
            region=env.get(ENV_AWS_REGION) or env.get(ENV_AWS_DEFAULT_REGION) or DEFAULT_REGION,
            connect_timeout=_number(env, ENV_S3_CONNECT_TIMEOUT, 5.0, float),
            max_attempts=int(_number(env, ENV_AWS_MAX_ATTEMPTS, 3, int)),
            addressing_style="path" if endpoint else "auto",
        )

    def endpoint_parts(self) -> tuple[str, str] | None:
        """(scheme, host[:port]) of the endpoint, the form pyarrow wants; None for AWS itself."""
        if not self.endpoint:
            return None
        scheme, _, host = self.endpoint.partition("://")
        return scheme, host.rstrip("/")

    def boto3_config(self):
        """The botocore ``Config`` of every boto3 client built from these settings."""
        from botocore.config import Config

        return Config(
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            # total attempts, first one included: what AWS_MAX_ATTEMPTS and pyarrow's strategy count
            retries={"mode": "standard", "total_max_attempts": self.max_attempts},
            s3={"addressing_style": self.addressing_style} if self.addressing_style != "auto" else {},
            max_pool_connections=32,
        )

    def arrow_options(self) -> dict[str, Any]:
        """Keyword arguments of ``pyarrow.fs.S3FileSystem`` for these settings."""
        import pyarrow.fs

        options: dict[str, Any] = {
            "region": self.region,
            "connect_timeout": self.connect_timeout,
            "request_timeout": self.read_timeout,
            "retry_strategy": pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=self.max_attempts),
            "force_virtual_addressing": self.addressing_style == "virtual",
        }
        parts = self.endpoint_parts()
        if parts is not None:
            options["scheme"], options["endpoint_override"] = parts
        return options


def _number(env: Mapping[str, str], name: str, default: float, kind: type) -> float:
    text = env.get(name)
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise StorageError(f"{name}={text!r} is not a positive {kind.__name__}: fix or unset it")
    return value


# ---------------------------------------------------------------------------------------- clients

_clients: dict[tuple, Any] = {}
_clients_lock = threading.Lock()


def s3_client(settings: S3Settings | None = None):
    """A boto3 S3 client for ``settings`` (by default: from the environment), cached.

    One client per process and configuration: clients are thread-safe but must not cross a fork,
    and DataLoader workers are forked, hence the pid in the cache key.
    """
    settings = settings or S3Settings.from_env()
    key = (os.getpid(), settings, os.environ.get(ENV_AWS_ACCESS_KEY_ID), os.environ.get(ENV_AWS_PROFILE),
           os.environ.get(ENV_AWS_SHARED_CREDENTIALS_FILE))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            import boto3

            session = boto3.session.Session(region_name=settings.region)
            client = session.client("s3", endpoint_url=settings.endpoint, config=settings.boto3_config())
            _clients[key] = client
    return client


def arrow_filesystem(settings: S3Settings | None = None) -> "pyarrow.fs.S3FileSystem":
    """A pyarrow S3 filesystem for ``settings`` (by default: from the environment).

    pyarrow does not pickle the retry strategy: a copy sent to another process (Ray Train's
    workers) keeps the endpoint, region and timeouts and falls back to pyarrow's default of 3
    attempts, the same as this module's default.
    """
    import pyarrow.fs

    return pyarrow.fs.S3FileSystem(**(settings or S3Settings.from_env()).arrow_options())


# --------------------------------------------------------------------------------- error mapping

def s3_error(err: Exception, url: str, loc: Location, action: str) -> Exception:
    """Map a botocore failure to a one-line error that says what to do (or FileNotFoundError)."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    endpoint = redact(S3Settings.from_env().endpoint) or "the AWS default endpoint"
    if isinstance(err, (EndpointConnectionError, ConnectTimeoutError)):
        return StorageError(
            f"could not reach the S3 endpoint {endpoint} while {action} {url}: start the server or set "
            "AWS_ENDPOINT_URL to a reachable endpoint"
        )
    if isinstance(err, ReadTimeoutError):
        return StorageError(f"the S3 endpoint {endpoint} timed out while {action} {url}: retry, or check the server")
    if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
        return StorageError(
            f"no S3 credentials for {action} {url}: set AWS_SHARED_CREDENTIALS_FILE (the local stack's env file does), "
            "AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchKey", "404", "NotFound"):
            return FileNotFoundError(f"{url} does not exist")
        if code == "NoSuchBucket":
            return StorageError(f"bucket {loc.bucket!r} does not exist ({action} {url}): create it or choose another URL")
        if code in ("AccessDenied", "403", "AllAccessDisabled"):
            return StorageError(f"access denied while {action} {url}: check the credentials and the bucket's policy")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
            return StorageError(f"S3 rejected the credentials ({code}) while {action} {url}: check the keys "
                                "(AWS_SHARED_CREDENTIALS_FILE, AWS_PROFILE or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
        message = err.response.get("Error", {}).get("Message", "")
        return StorageError(f"S3 error {code} while {action} {url}: {message}")
    return StorageError(f"S3 failure while {action} {url}: {type(err).__name__}: {err}")


def botocore_errors() -> tuple[type[Exception], ...]:
    """What a boto3 call raises; imported late so that importing this module stays cheap."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


# ------------------------------------------------------------------------------------- operations

class S3Stream(io.RawIOBase):
    """A boto3 ``StreamingBody`` as a raw stream, so it can sit under ``io.BufferedReader``."""

    def __init__(self, body):
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._body.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                self._body.close()
            finally:
                super().close()


def read_object(url: str, loc: Location) -> bytes:
    try:
        return s3_client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
    except botocore_errors() as err:
        raise s3_error(err, url, loc, "reading") from None


def open_object(url: str, loc: Location, buffer_size: int = READ_BUFFER, *,
                byte_range: tuple[int, int] | None = None) -> BinaryIO:
    """A streaming reader of the object, or of ``byte_range`` = (start, length) only (one ranged GET).

    A range that starts past the end reads as empty.
    """
    extra = {}
    if byte_range is not None:
        start, length = byte_range
        extra["Range"] = f"bytes={start}-{start + length - 1}"
    try:
        body = s3_client().get_object(Bucket=loc.bucket, Key=loc.key, **extra)["Body"]
    except botocore_errors() as err:
        from botocore.exceptions import ClientError

        if extra and isinstance(err, ClientError) and err.response.get("Error", {}).get("Code") == "InvalidRange":
            return io.BytesIO(b"")
        raise s3_error(err, url, loc, "reading") from None
    return io.BufferedReader(S3Stream(body), buffer_size=buffer_size)


def put_object(url: str, loc: Location, data: bytes) -> None:
    try:
        s3_client().put_object(Bucket=loc.bucket, Key=loc.key, Body=data)
    except botocore_errors() as err:
        raise s3_error(err, url, loc, "writing") from None


def delete_object(url: str, loc: Location) -> None:
    """Remove the object; a missing one is not an error."""
    try:
        s3_client().delete_object(Bucket=loc.bucket, Key=loc.key)
    except botocore_errors() as err:
        mapped = s3_error(err, url, loc, "deleting")
        if not isinstance(mapped, FileNotFoundError):
            raise mapped from None


def object_exists(url: str, loc: Location) -> bool:
    try:
        s3_client().head_object(Bucket=loc.bucket, Key=loc.key)
        return True
    except botocore_errors() as err:
        mapped = s3_error(err, url, loc, "checking")
        if isinstance(mapped, FileNotFoundError):
            return False
        raise mapped from None


def list_object_names(url: str, loc: Location) -> list[str]:
    """Names of the objects directly under the prefix ``loc.key`` (sorted)."""
    prefix = f"{loc.key}/" if loc.key else ""
    names: list[str] = []
    try:
        pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix, Delimiter="/")
        for page in pages:
            names.extend(obj["Key"][len(prefix):] for obj in page.get("Contents", []))
    except botocore_errors() as err:
        raise s3_error(err, url, loc, "listing") from None
    return sorted(names)


def check_bucket(url: str, loc: Location) -> None:
    """The bucket exists and answers (the first PUT then checks write permission)."""
    try:
        s3_client().head_bucket(Bucket=loc.bucket)
    except botocore_errors() as err:
        mapped = s3_error(err, url, loc, "opening")
        if isinstance(mapped, FileNotFoundError):  # head_bucket says 404 for a missing bucket
            mapped = StorageError(f"bucket {loc.bucket!r} does not exist (writing {url}): create it or "
                                  "choose another --out")
        raise mapped from None
