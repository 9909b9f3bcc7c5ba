"""Canonical files of the real data sets: find them, or download them once, with checksums.

Lookup order for each file: ``--source-dir`` when given (for machines without internet: the user
places the canonical files there), else the cache (``$BFN_DATA_CACHE`` or ``~/.cache/bfn``, one
folder per data set), else a download into the cache.  Downloads go to a temporary name and are
renamed only after their sha256 (or, where no sha256 is pinned, their size) matched, so the cache
never holds a partial file.

With ``BFN_OFFLINE=1`` nothing is downloaded and a missing file fails at once with the same
"place the files in DIR or pass --source-dir" error.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipelines.errors import DownloadError

ProgressFn = Callable[[int, int | None], None]
DOWNLOAD_TIMEOUT_S = 30.0
_CHUNK = 1 << 20


class ChecksumWarning(UserWarning):
    """A file placed by the user differs from the canonical one (it is used anyway, and recorded)."""


@dataclass(frozen=True)
class RemoteFile:
    """A canonical file: its name, where it is published, and its sha256 and size when known."""

    name: str
    url: str
    sha256: str | None
    size: int | None = None
    alternatives: tuple[str, ...] = ()  # other names accepted in --source-dir (e.g. an unpacked form)


@dataclass(frozen=True)
class LocalFile:
    """Where a canonical file was found, and what is known of it (recorded in the manifest)."""

    path: Path
    sha256: str
    verified: bool  # matched the pinned sha256 (or size, where no sha256 is pinned)
    origin: str  # "source-dir", "cache" or "download"

    @property
    def name(self) -> str:
        return self.path.name


def cache_root() -> Path:
    return Path(os.environ.get("BFN_DATA_CACHE") or Path.home() / ".cache" / "bfn").expanduser()


def cache_dir(dataset: str) -> Path:
    return cache_root() / dataset


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _matches(remote: RemoteFile, path: Path, digest: str) -> bool:
    if remote.sha256 is not None:
        return digest == remote.sha256
    return remote.size is None or path.stat().st_size == remote.size


def locate(dataset: str, files: list[RemoteFile], source_dir: str | os.PathLike | None = None,
           on_progress: ProgressFn | None = None) -> dict[str, LocalFile]:
    """Find or fetch every file of ``dataset``; returns canonical name -> LocalFile."""
    found: dict[str, LocalFile] = {}
    if source_dir is not None:
        src = Path(source_dir).expanduser()
        for remote in files:
            found[remote.name] = _from_source_dir(dataset, remote, src)
        return found
    cache = cache_dir(dataset)
    for remote in files:
        path = cache / remote.name
        if path.is_file():
            digest = sha256_file(path)
            if _matches(remote, path, digest):
                found[remote.name] = LocalFile(path, digest, True, "cache")
                continue
            path.unlink()  # a stale or damaged cached copy: fetch it again
        found[remote.name] = download(dataset, remote, cache, on_progress=on_progress)
    return found


def _from_source_dir(dataset: str, remote: RemoteFile, src: Path) -> LocalFile:
    for name in (remote.name, *remote.alternatives):
        path = src / name
        if path.is_file():
            digest = sha256_file(path)
            if name != remote.name:  # an accepted unpacked form: nothing canonical to compare with
                return LocalFile(path, digest, False, "source-dir")
            ok = _matches(remote, path, digest)
            if not ok:
                warnings.warn(f"{path} does not match the canonical {remote.name} from {remote.url} "
                              f"(sha256 {digest[:12]}...); using it anyway and recording it in the manifest",
                              ChecksumWarning, stacklevel=3)
            return LocalFile(path, digest, ok, "source-dir")
    names = " or ".join([remote.name, *remote.alternatives])
    raise DownloadError(f"{names} not found in {src} (--source-dir): place the {dataset} files there "
                        f"(from {remote.url}), or omit --source-dir to download them")


def download(dataset: str, remote: RemoteFile, dest_dir: Path, on_progress: ProgressFn | None = None,
             timeout: float = DOWNLOAD_TIMEOUT_S) -> LocalFile:
    """Fetch ``remote`` into ``dest_dir`` through a temporary file; checksum, then rename."""

    def fail(reason: str) -> DownloadError:
        return DownloadError(f"could not download {dataset} from {remote.url}: place the files in {dest_dir} "
                             f"or pass --source-dir ({reason})")

    if os.environ.get("BFN_OFFLINE", "").strip() not in ("", "0"):
        raise fail("BFN_OFFLINE is set")
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise fail(f"cannot create the cache folder: {err.strerror or err}; set BFN_DATA_CACHE") from None
    final = dest_dir / remote.name
    tmp = dest_dir / f".{remote.name}.{uuid.uuid4().hex[:12]}.part"
    h = hashlib.sha256()
    try:
        request = urllib.request.Request(remote.url, headers={"User-Agent": "bfn-platform"})
        with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as out:
            total = response.length if response.length is not None else remote.size
            done = 0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                h.update(chunk)
                done += len(chunk)
                if on_progress is not None:
                    on_progress(done, total)
    except (urllib.error.URLError, OSError, ValueError) as err:
        tmp.unlink(missing_ok=True)
        reason = getattr(err, "reason", None) or getattr(err, "strerror", None) or err
        raise fail(str(reason)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    digest = h.hexdigest()
    if not _matches(remote, tmp, digest):
        tmp.unlink(missing_ok=True)
        expected = f"sha256 {remote.sha256}" if remote.sha256 else f"{remote.size} bytes"
        raise fail(f"the download does not match the canonical file ({expected}, got sha256 {digest}); "
                   "retry, or fetch it another way")
    shutil.move(str(tmp), str(final))
    return LocalFile(final, digest, True, "download")
