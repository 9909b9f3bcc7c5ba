"""Where shards live: local paths, ``file://`` URLs and ``s3://bucket/prefix``, behind one small API.

Why a module of its own: the writer, the reader, the manifest and the CLI all need the same four
operations (read, atomic write, delete, list) and the same error messages, and S3 must go through
boto3 configured only from the standard AWS environment variables (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_PROFILE``...), so that
a laptop, a CI job with a loopback S3 server and a cluster differ only in their environment.

Nothing here ever logs or returns a credential: error messages show the endpoint with any
``user:password@`` part removed, and never the keys.

:func:`register_webdataset_opener` (called by the reader) adds an ``s3`` opener to webdataset's
``gopen_schemes``, so ``webdataset.WebDataset("s3://bucket/train-{000000..000009}.tar")`` streams
through boto3 too, with no ``aws`` command needed.  It is not done at import because importing
webdataset imports torch (seconds), which the writer and the CLI's help do not need.
"""
from __future__ import annotations

import importlib
import io
import os
import threading
import uuid
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

from pipelines.errors import StorageError

S3_READ_BUFFER = 1 << 20  # bytes per read from an S3 body: big enough to amortise HTTP chunking


@dataclass(frozen=True)
class Location:
    """A parsed URL: ``scheme`` is "file" (``path`` is a local path) or "s3" (``bucket`` + ``key``)."""

    scheme: str
    path: str = ""
    bucket: str = ""
    key: str = ""


def parse(url: str) -> Location:
    """Split a path, ``file://`` or ``s3://`` URL; anything else is a clear error."""
    if not url:
        raise StorageError("empty URL: pass a path, file:///abs/path or s3://bucket/prefix")
    if url.startswith("s3://"):
        rest = url[len("s3://"):]
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise StorageError(f"{url}: no bucket name; write s3://BUCKET/prefix")
        return Location("s3", bucket=bucket, key=key.strip("/"))
    if url.startswith("file://"):
        path = url[len("file://"):]
        if path.startswith("localhost/"):
            path = path[len("localhost"):]
        return Location("file", path=path or ".")
    scheme = urlsplit(url).scheme
    if scheme and len(scheme) > 1:  # one letter: a Windows drive, i.e. a path
        raise StorageError(f"{redact(url)}: unsupported URL scheme {scheme!r}; use a path, file:// or s3://")
    return Location("file", path=url)


def is_s3(url: str) -> bool:
    return url.startswith("s3://")


def join(url: str, *names: str) -> str:
    """``url`` + "/" + names, for both local paths and S3 URLs."""
    if is_s3(url) or url.startswith("file://"):
        return "/".join([url.rstrip("/"), *(n.strip("/") for n in names)])
    return os.path.join(url, *names)


def parent(url: str) -> str:
    """The "directory" holding ``url`` (the prefix up to the last slash)."""
    if is_s3(url) or url.startswith("file://"):
        head, _, _ = url.rstrip("/").rpartition("/")
        return head
    return os.path.dirname(url) or "."


def basename(url: str) -> str:
    return url.rstrip("/").rpartition("/")[2]


def redact(url: str | None) -> str:
    """``url`` without any ``user:password@`` part or query string: safe to print or log."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def local_path(url: str) -> str:
    loc = parse(url)
    if loc.scheme != "file":
        raise StorageError(f"{url} is not a local path")
    return loc.path


# --------------------------------------------------------------------------------------- S3 client

_clients: dict[tuple, Any] = {}
_clients_lock = threading.Lock()


def s3_endpoint() -> str | None:
    """The endpoint boto3 will use: ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, else AWS itself."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_client():
    """A boto3 S3 client configured from the standard AWS environment variables.

    One client per process and configuration: clients are thread-safe but must not cross a fork,
    and DataLoader workers are forked, hence the pid in the cache key.  Retries are few and the
    connect timeout short (``AWS_MAX_ATTEMPTS`` and ``BFN_S3_CONNECT_TIMEOUT`` override them) so
    an unreachable endpoint is reported in seconds instead of minutes.
    """
    endpoint = s3_endpoint()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    key = (os.getpid(), endpoint, region, os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_PROFILE"))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                connect_timeout=float(os.environ.get("BFN_S3_CONNECT_TIMEOUT", "5")),
                read_timeout=60,
                retries={"mode": "standard", "max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS", "3"))},
                s3={"addressing_style": "path"} if endpoint else {},
                max_pool_connections=32,
            )
            session = boto3.session.Session(region_name=region)
            client = session.client("s3", endpoint_url=endpoint, config=config)
            _clients[key] = client
    return client


def _s3_error(err: Exception, url: str, action: str) -> Exception:
    """Map a botocore failure to a one-line error that says what to do (or FileNotFoundError)."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    endpoint = redact(s3_endpoint()) or "the AWS default endpoint"
    if isinstance(err, (EndpointConnectionError, ConnectTimeoutError)):
        return StorageError(
            f"could not reach the S3 endpoint {endpoint} while {action} {url}: start the server or set "
            "AWS_ENDPOINT_URL to a reachable endpoint"
        )
    if isinstance(err, ReadTimeoutError):
        return StorageError(f"the S3 endpoint {endpoint} timed out while {action} {url}: retry, or check the server")
    if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
        return StorageError(
            f"no S3 credentials for {action} {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
        )
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        loc = parse(url)
        if code in ("NoSuchKey", "404", "NotFound"):
            return FileNotFoundError(f"{url} does not exist")
        if code == "NoSuchBucket":
            return StorageError(f"bucket {loc.bucket!r} does not exist ({action} {url}): create it or choose another URL")
        if code in ("AccessDenied", "403", "AllAccessDisabled"):
            return StorageError(f"access denied while {action} {url}: check the credentials and the bucket's policy")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
            return StorageError(f"S3 rejected the credentials ({code}) while {action} {url}: check AWS_ACCESS_KEY_ID "
                                "and AWS_SECRET_ACCESS_KEY")
        message = err.response.get("Error", {}).get("Message", "")
        return StorageError(f"S3 error {code} while {action} {url}: {message}")
    return StorageError(f"S3 failure while {action} {url}: {type(err).__name__}: {err}")


def _botocore_errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


# ---------------------------------------------------------------------------------- the operations

def read_bytes(url: str) -> bytes:
    """The whole object or file.  Missing: ``FileNotFoundError``; anything else: ``StorageError``."""
    loc = parse(url)
    if loc.scheme == "file":
        try:
            with open(loc.path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise
        except IsADirectoryError:
            raise FileNotFoundError(f"{url} is a directory") from None
        except OSError as err:
            raise StorageError(f"cannot read {url}: {err.strerror or err}") from None
    try:
        return s3_client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
    except _botocore_errors() as err:
        raise _s3_error(err, url, "reading") from None


class _S3Body(io.RawIOBase):
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


def open_read(url: str, buffer_size: int = S3_READ_BUFFER) -> BinaryIO:
    """A streaming binary reader.  Missing: ``FileNotFoundError``; anything else: ``StorageError``."""
    loc = parse(url)
    if loc.scheme == "file":
        try:
            return open(loc.path, "rb", buffering=buffer_size)
        except (FileNotFoundError, IsADirectoryError):
            raise FileNotFoundError(f"{url} does not exist") from None
        except OSError as err:
            raise StorageError(f"cannot read {url}: {err.strerror or err}") from None
    try:
        body = s3_client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"]
    except _botocore_errors() as err:
        raise _s3_error(err, url, "reading") from None
    return io.BufferedReader(_S3Body(body), buffer_size=buffer_size)


def open_range(url: str, start: int, length: int, buffer_size: int = S3_READ_BUFFER) -> BinaryIO:
    """A reader of bytes ``start`` .. ``start + length`` (fewer when the object is shorter).

    Local files seek; S3 sends one ranged GET, so a reader that needs the middle of a shard does
    not download its beginning.  A range starting past the end reads as empty.
    """
    loc = parse(url)
    if loc.scheme == "file":
        f = open_read(url, buffer_size)
        f.seek(start)
        return f
    try:
        body = s3_client().get_object(Bucket=loc.bucket, Key=loc.key, Range=f"bytes={start}-{start + length - 1}")["Body"]
    except _botocore_errors() as err:
        from botocore.exceptions import ClientError

        if isinstance(err, ClientError) and err.response.get("Error", {}).get("Code") == "InvalidRange":
            return io.BytesIO(b"")
        raise _s3_error(err, url, "reading") from None
    return io.BufferedReader(_S3Body(body), buffer_size=buffer_size)


def write_bytes(url: str, data: bytes, *, durable: bool = False) -> None:
    """Write ``data`` so that readers see either nothing, the old content, or all of it.

    Local: a temporary name in the same directory, then ``os.replace`` (atomic on POSIX); with
    ``durable`` the file and its directory are fsynced first.  S3: one PUT, which S3 makes visible
    only once complete.
    """
    loc = parse(url)
    if loc.scheme == "s3":
        try:
            s3_client().put_object(Bucket=loc.bucket, Key=loc.key, Body=data)
        except _botocore_errors() as err:
            raise _s3_error(err, url, "writing") from None
        return
    directory = os.path.dirname(loc.path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(loc.path)}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
        except BaseException:
            _unlink_quietly(tmp)
            raise
        os.replace(tmp, loc.path)
        if durable:
            _fsync_dir(directory)
    except OSError as err:
        _unlink_quietly(tmp)
        raise StorageError(
            f"cannot write {url}: {err.strerror or err}; choose a writable --out or fix its permissions"
        ) from None


def delete(url: str) -> None:
    """Remove the object or file; a missing one is not an error."""
    loc = parse(url)
    if loc.scheme == "file":
        try:
            os.unlink(loc.path)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise StorageError(f"cannot delete {url}: {err.strerror or err}") from None
        return
    try:
        s3_client().delete_object(Bucket=loc.bucket, Key=loc.key)
    except _botocore_errors() as err:
        mapped = _s3_error(err, url, "deleting")
        if not isinstance(mapped, FileNotFoundError):
            raise mapped from None


def exists(url: str) -> bool:
    loc = parse(url)
    if loc.scheme == "file":
        return os.path.isfile(loc.path)
    try:
        s3_client().head_object(Bucket=loc.bucket, Key=loc.key)
        return True
    except _botocore_errors() as err:
        mapped = _s3_error(err, url, "checking")
        if isinstance(mapped, FileNotFoundError):
            return False
        raise mapped from None


def list_names(url: str) -> list[str]:
    """Names of the files or objects directly under the "directory" ``url`` (sorted)."""
    loc = parse(url)
    if loc.scheme == "file":
        try:
            return sorted(n for n in os.listdir(loc.path) if os.path.isfile(os.path.join(loc.path, n)))
        except FileNotFoundError:
            return []
        except OSError as err:
            raise StorageError(f"cannot list {url}: {err.strerror or err}") from None
    prefix = f"{loc.key}/" if loc.key else ""
    names: list[str] = []
    try:
        pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix, Delimiter="/")
        for page in pages:
            names.extend(obj["Key"][len(prefix):] for obj in page.get("Contents", []))
    except _botocore_errors() as err:
        raise _s3_error(err, url, "listing") from None
    return sorted(names)


def check_writable(url: str) -> None:
    """Fail early, with what to do, when ``url`` (a "directory") cannot be written.

    Local: create the directory and a probe file.  S3: the bucket must exist and be reachable
    (the first PUT then checks write permission).
    """
    loc = parse(url)
    if loc.scheme == "s3":
        try:
            s3_client().head_bucket(Bucket=loc.bucket)
        except _botocore_errors() as err:
            mapped = _s3_error(err, url, "opening")
            if isinstance(mapped, FileNotFoundError):  # head_bucket says 404 for a missing bucket
                mapped = StorageError(f"bucket {loc.bucket!r} does not exist (writing {url}): create it or "
                                      "choose another --out")
            raise mapped from None
        return
    probe = os.path.join(loc.path, f".bfn-write-probe-{uuid.uuid4().hex[:12]}")
    try:
        os.makedirs(loc.path, exist_ok=True)
        with open(probe, "wb"):
            pass
        os.unlink(probe)
    except OSError as err:
        raise StorageError(
            f"cannot write to {url}: {err.strerror or err}; choose a writable --out or fix its permissions"
        ) from None


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------------- webdataset integration

def gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any) -> BinaryIO:
    """webdataset opener for ``s3://`` URLs (read only), streaming through boto3."""
    if mode[0] != "r":
        raise ValueError(f"{url}: the s3 opener reads only; write shards with pipelines.data.writer")
    return open_read(url)


def register_webdataset_opener() -> None:
    """Make webdataset open ``s3://`` URLs with :func:`gopen_s3` (idempotent)."""
    # `webdataset.gopen` is also the name of a function re-exported by the package: go through
    # importlib to get the module and its dispatch table.
    gopen_module = importlib.import_module("webdataset.gopen")
    gopen_module.gopen_schemes["s3"] = gopen_s3

