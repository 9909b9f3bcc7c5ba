"""User-facing errors of the pipelines layer.

The command line shows a ``PipelineError`` as one line (no traceback), so every message names the
problem and what to do about it.  Pipelines may not import ``bfn_platform`` (layering), hence this
separate root class; the CLI treats it like ``bfn_platform.errors.BfnError``.

Errors raised inside a DataLoader worker process reach the main process re-created from one string
(torch's ExceptionWrapper calls ``type(msg)`` with the worker's whole traceback as ``msg``); the
constructors below take that form too and keep only the original one-line message, so a
``ShardError`` stays a ``ShardError`` with a clean message whatever the number of workers.
"""
from __future__ import annotations

import re


def _original_message(text: str, class_name: str) -> str:
    """The last ``...ClassName: message`` line of a worker traceback, else the text unchanged."""
    if "Traceback" not in text:
        return text
    for line in reversed(text.strip().splitlines()):
        head, sep, message = line.partition(f"{class_name}: ")
        if sep and (not head or head.endswith(".")):
            return message.strip()
    return text


class PipelineError(Exception):
    """A failure the user can fix: the message says what went wrong and what to do."""

    def __init__(self, *args: object):
        if len(args) == 1 and isinstance(args[0], str):
            args = (_original_message(args[0], type(self).__name__),)
        super().__init__(*args)


class StorageError(PipelineError):
    """A URL could not be read or written (unreachable endpoint, missing bucket, permissions)."""


class ManifestError(PipelineError):
    """A shard manifest is missing, unreadable or not in a format this version understands."""


class UnsupportedReadError(PipelineError, ValueError):
    """A requested (data kind, K) that the stored data cannot be read as (also a ValueError)."""


class DownloadError(PipelineError):
    """A dataset's canonical files could not be fetched or failed their checksum."""


_SHARD_MESSAGE = re.compile(r"^shard (?P<shard>\S+) \(listed in (?P<manifest>\S+)\) is unreadable: (?P<reason>.*?); "
                            r"rewrite the set")


class ShardError(PipelineError):
    """A shard listed in a manifest is missing or corrupt.

    The message names both the shard and the manifest that lists it, so the user knows which set to
    rewrite (``bfn data shard``) or that ``on_corrupt="skip"`` is available.  Built either from the
    three fields or (when re-raised from a DataLoader worker) from the message alone.
    """

    def __init__(self, shard_url: str, manifest_url: str | None = None, reason: str | None = None):
        if manifest_url is None and reason is None:  # one message: parse the fields back out of it
            super().__init__(shard_url)
            match = _SHARD_MESSAGE.match(str(self))
            self.shard_url = match["shard"] if match else ""
            self.manifest_url = match["manifest"] if match else ""
            self.reason = match["reason"] if match else str(self)
            return
        self.shard_url, self.manifest_url, self.reason = shard_url, manifest_url or "", reason or ""
        super().__init__(
            f"shard {shard_url} (listed in {manifest_url}) is unreadable: {reason}; "
            "rewrite the set with `bfn data shard`, or read with on_corrupt='skip' to skip it"
        )

    def __reduce__(self):
        return (type(self), (self.shard_url, self.manifest_url, self.reason))
