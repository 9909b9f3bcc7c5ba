"""What a storage URL names: a local path, a ``file://`` URL or ``s3://bucket/prefix``.

A module of its own because both the storage operations (storage.py) and the S3 layer (s3.py)
parse URLs and print them safely, and s3.py must not import storage.py (which imports it).
Pure string handling: nothing here touches a disk or the network.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from pipelines.errors import StorageError


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
