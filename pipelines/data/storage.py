"""Where shards and checkpoints live: local paths, ``file://`` URLs and ``s3://bucket/prefix``, behind
one small API.

Why a module of its own: the writer, the reader, the manifest and the CLI all need the same few
operations (read, atomic write, delete, list) with the same error messages whatever the URL, and
Ray Train needs the checkpoint store as a (path, filesystem) pair built from the same S3
configuration as the shards (:func:`checkpoint_location`).  The S3 half of each operation and
that configuration live in s3.py; the URL helpers (``parse``, ``join``, ``parent``, ``redact``,
``Location``) in urls.py, and are part of this API too, so callers need one import.

:func:`register_webdataset_opener` (called by the reader) adds an ``s3`` opener to webdataset's
``gopen_schemes``, so ``webdataset.WebDataset("s3://bucket/train-{000000..000009}.tar")`` streams
through boto3 too, with no ``aws`` command needed.  It is not done at import because importing
webdataset imports torch (seconds), which the writer and the CLI's help do not need.
"""
from __future__ import annotations

import importlib
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from pipelines.data import s3
from pipelines.data.urls import Location, is_s3, join, parent, parse, redact
from pipelines.errors import StorageError

if TYPE_CHECKING:
    import pyarrow.fs

__all__ = ["Location", "parse", "is_s3", "join", "parent", "redact", "read_bytes", "open_read", "open_range",
           "write_bytes", "delete", "exists", "list_names", "check_writable", "checkpoint_location",
           "gopen_s3", "register_webdataset_opener"]


def read_bytes(url: str) -> bytes:
    """The whole object or file.  Missing: ``FileNotFoundError``; anything else: ``StorageError``."""
    loc = parse(url)
    if loc.scheme == "s3":
        return s3.read_object(url, loc)
    try:
        with open(loc.path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise FileNotFoundError(f"{url} is a directory") from None
    except OSError as err:
        raise StorageError(f"cannot read {url}: {err.strerror or err}") from None


def open_read(url: str, buffer_size: int = s3.READ_BUFFER) -> BinaryIO:
    """A streaming binary reader.  Missing: ``FileNotFoundError``; anything else: ``StorageError``."""
    loc = parse(url)
    if loc.scheme == "s3":
        return s3.open_object(url, loc, buffer_size)
    try:
        return open(loc.path, "rb", buffering=buffer_size)
    except (FileNotFoundError, IsADirectoryError):
        raise FileNotFoundError(f"{url} does not exist") from None
    except OSError as err:
        raise StorageError(f"cannot read {url}: {err.strerror or err}") from None


def open_range(url: str, start: int, length: int, buffer_size: int = s3.READ_BUFFER) -> BinaryIO:
    """A reader of bytes ``start`` .. ``start + length`` (fewer when the object is shorter).

    Local files seek; S3 sends one ranged GET, so a reader that needs the middle of a shard does
    not download its beginning.  A range starting past the end reads as empty.
    """
    loc = parse(url)
    if loc.scheme == "s3":
        return s3.open_object(url, loc, buffer_size, byte_range=(start, length))
    f = open_read(url, buffer_size)
    f.seek(start)
    return f


def write_bytes(url: str, data: bytes, *, durable: bool = False) -> None:
    """Write ``data`` so that readers see either nothing, the old content, or all of it.

    Local: a temporary name in the same directory, then ``os.replace`` (atomic on POSIX); with
    ``durable`` the file and its directory are fsynced first.  S3: one PUT, which S3 makes visible
    only once complete.
    """
    loc = parse(url)
    if loc.scheme == "s3":
        s3.put_object(url, loc, data)
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
    if loc.scheme == "s3":
        s3.delete_object(url, loc)
        return
    try:
        os.unlink(loc.path)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise StorageError(f"cannot delete {url}: {err.strerror or err}") from None


def exists(url: str) -> bool:
    loc = parse(url)
    return s3.object_exists(url, loc) if loc.scheme == "s3" else os.path.isfile(loc.path)


def list_names(url: str) -> list[str]:
    """Names of the files or objects directly under the "directory" ``url`` (sorted)."""
    loc = parse(url)
    if loc.scheme == "s3":
        return s3.list_object_names(url, loc)
    try:
        return sorted(n for n in os.listdir(loc.path) if os.path.isfile(os.path.join(loc.path, n)))
    except FileNotFoundError:
        return []
    except OSError as err:
        raise StorageError(f"cannot list {url}: {err.strerror or err}") from None


def check_writable(url: str) -> None:
    """Fail early, with what to do, when ``url`` (a "directory") cannot be written.

    Local: create the directory and a probe file.  S3: the bucket must exist and be reachable
    (the first PUT then checks write permission).
    """
    loc = parse(url)
    if loc.scheme == "s3":
        s3.check_bucket(url, loc)
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


# ---------------------------------------------------------------------------------- checkpoints

def checkpoint_location(url: str | None, default: str) -> "tuple[str, pyarrow.fs.FileSystem | None]":
    """(storage_path, storage_filesystem) for Ray Train's ``RunConfig``: where checkpoints go.

    ``url`` (``default`` when empty) is ``s3://bucket/prefix``, ``file://...`` or a local path.
    S3 gives ``"bucket/prefix"`` (Ray refuses ``s3://`` next to a filesystem) and the pyarrow
    filesystem of the same S3 settings the shards use (s3.py); a local path gives its absolute
    form and None (Ray's own local filesystem).
    """
    loc = parse(url or default)
    if loc.scheme == "s3":
        return "/".join(p for p in (loc.bucket, loc.key) if p), s3.arrow_filesystem()
    return str(Path(loc.path).resolve()), None


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
