"""User-facing errors of the pipelines layer.

Every one derives from ``bfn_core.BfnError``, the project's one root of user-facing errors, which
the command line (its one boundary) shows as one line ``error: ...`` with no traceback; so every
message names the problem and what to do about it.

Errors raised inside a DataLoader worker process reach the main process re-created from one string
(torch's ExceptionWrapper calls ``type(msg)`` with the worker's whole traceback as ``msg``); the
constructors below take that form too and keep only the original one-line message, so a
``ShardError`` stays a ``ShardError`` with a clean message whatever the number of workers.

``DeterministicError`` marks the failures that recur, the same way, on every retry (a corrupt shard
or checkpoint, a bad manifest): training stops at once on them instead of spending Ray Train's
``max_failures`` (see pipelines.training), and their message says what to fix rather than to resume.
Everything else met while training (a killed worker or node, an unreachable endpoint: StorageError)
is retried.
"""
from __future__ import annotations

from bfn_core.errors import BfnError


def _original_message(text: str, class_name: str) -> str:
    """The last ``...ClassName: message`` line of a worker traceback, else the text unchanged."""
    if "Traceback" not in text:
        return text
    for line in reversed(text.strip().splitlines()):
        head, sep, message = line.partition(f"{class_name}: ")
        if sep and (not head or head.endswith(".")):
            return message.strip()
    return text


class PipelineError(BfnError):
    """A failure of the pipelines the user can fix: the message says what went wrong and what to do."""

    def __init__(self, *args: object):
        if len(args) == 1 and isinstance(args[0], str):
            args = (_original_message(args[0], type(self).__name__),)
        super().__init__(*args)


class DeterministicError(PipelineError):
    """A failure that a retry meets again, the same way: the stored data or checkpoint must change first."""


class StorageError(PipelineError):
    """A URL could not be read or written (unreachable endpoint, missing bucket, permissions): may pass, so
    training retries it."""


class ManifestError(DeterministicError):
    """A shard manifest is missing, unreadable or not in a format this version understands."""


class UnsupportedReadError(DeterministicError, ValueError):
    """A requested (data kind, K) that the stored data cannot be read as (also a ValueError)."""


class CheckpointError(DeterministicError):
    """A stored checkpoint is incomplete, corrupt or of another model; the message names the stored object
    (its storage URI, not the temporary folder Ray Train downloads it to)."""


class DownloadError(PipelineError):
    """A dataset's canonical files could not be fetched or failed their checksum."""


class ShardError(DeterministicError):
    """A shard listed in a manifest is missing or corrupt.

    The message names both the shard and the manifest that lists it, so the user knows which set to
    rewrite (``bfn data shard``) or that ``on_corrupt="skip"`` is available.  Raised with the three
    fields, which stay readable as attributes.  Re-created from its message alone (as a DataLoader
    worker's error is in the main process) it keeps only the message: the fields are then None.
    """

    def __init__(self, shard_url: str, manifest_url: str | None = None, reason: str | None = None):
        if manifest_url is None and reason is None:  # one message, e.g. re-raised from a DataLoader worker
            super().__init__(shard_url)
            self.shard_url = self.manifest_url = self.reason = None
            return
        self.shard_url, self.manifest_url, self.reason = shard_url, manifest_url, reason
        super().__init__(
            f"shard {shard_url} (listed in {manifest_url}) is unreadable: {reason}; "
            "rewrite the set with `bfn data shard`, or read with on_corrupt='skip' to skip it"
        )

    def __reduce__(self):
        if self.shard_url is None:
            return (type(self), (str(self),))
        return (type(self), (self.shard_url, self.manifest_url, self.reason))


def deterministic_cause(err: BaseException | None) -> DeterministicError | None:
    """The DeterministicError behind `err`, however Ray wrapped it, else None.

    Follows what Ray Train and Ray put around a worker's exception: a ControllerError's
    ``controller_failure``, a WorkerGroupError's ``worker_failures`` (by rank), a RayTaskError's
    ``cause`` and explicit ``raise ... from`` causes; never ``__context__`` (an error raised while
    handling another is not caused by it).
    """
    seen: set[int] = set()
    todo = [err]
    while todo:
        e = todo.pop(0)
        if not isinstance(e, BaseException) or id(e) in seen:  # None, or a `cause` that is not an exception
            continue
        seen.add(id(e))
        if isinstance(e, DeterministicError):
            return e
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict):
            todo += [failures[rank] for rank in sorted(failures)]
        todo += [getattr(e, "controller_failure", None), getattr(e, "cause", None), e.__cause__]
    return None


def one_line(text: object, limit: int = 300, *, last: bool = False) -> str:
    """The first (or `last`) non-empty line of `text`, at most `limit` characters. A longer one ends
    after its last whole sentence that fits, else at a space with an ellipsis: never inside a word
    (torch's errors run to several sentences, the first of which says what happened)."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    line = (lines[-1] if last else lines[0]) if lines else ""
    if len(line) <= limit:
        return line
    sentence = line[:limit].rfind(". ")
    if sentence >= limit // 4:
        return line[: sentence + 1]
    cut = line[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit // 2:  # a word boundary not too far back; a URL with no spaces is cut where it must be
        cut = cut[:space]
    return cut.rstrip(" ,;:(") + "…"
