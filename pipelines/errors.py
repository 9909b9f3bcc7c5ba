"""User-facing errors of the pipelines layer.

The command line shows a ``PipelineError`` as one line (no traceback), so every message names the
problem and what to do about it.  Pipelines may not import ``bfn_platform`` (layering), hence this
separate root class; the CLI treats it like ``bfn_platform.errors.BfnError``.
"""
from __future__ import annotations


class PipelineError(Exception):
    """A failure the user can fix: the message says what went wrong and what to do."""


class StorageError(PipelineError):
    """A URL could not be read or written (unreachable endpoint, missing bucket, permissions)."""


class ManifestError(PipelineError):
    """A shard manifest is missing, unreadable or not in a format this version understands."""


class UnsupportedReadError(PipelineError, ValueError):
    """A requested (data kind, K) that the stored data cannot be read as (also a ValueError)."""


class DownloadError(PipelineError):
    """A dataset's canonical files could not be fetched or failed their checksum."""


class ShardError(PipelineError):
    """A shard listed in a manifest is missing or corrupt.

    The message names both the shard and the manifest that lists it, so the user knows which set to
    rewrite (``bfn data shard``) or that ``on_corrupt="skip"`` is available.
    """

    def __init__(self, shard_url: str, manifest_url: str, reason: str):
        self.shard_url = shard_url
        self.manifest_url = manifest_url
        self.reason = reason
        super().__init__(
            f"shard {shard_url} (listed in {manifest_url}) is unreadable: {reason}; "
            "rewrite the set with `bfn data shard`, or read with on_corrupt='skip' to skip it"
        )

    def __reduce__(self):  # keep the three fields when pickled out of a DataLoader worker
        return (type(self), (self.shard_url, self.manifest_url, self.reason))
