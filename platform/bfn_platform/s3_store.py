"""The S3 store's on-disk half: a write-through mirror of moto's in-memory S3 backend.

bfn_platform.s3_server calls `sync_*` after every successful mutation, before answering, and
`load` on start. Layout of the data folder: <bucket>/bucket.json ({"name": ...}; the folder is
"_" + sha256(name) for a name unfit as a folder) and <bucket>/objects/<sha256(key)>.obj: one JSON
line (key, size, sha256, etag, metadata with content-type and x-amz-meta-*, last_modified), a
newline, then the object's bytes. Each file is written to a temporary name, fsync'd, renamed and its
folder fsync'd, so a file is either the whole object or absent after a crash.
Not kept: versions, tags, ACLs, bucket settings, unfinished multipart uploads.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import sys
import threading
import uuid
from pathlib import Path

REGION = "us-east-1"
_SAFE_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{0,62}")


def stored_object_count(root: Path) -> int:
    """How many objects the data folder `root` holds (what a restarted server will serve)."""
    return sum(1 for _ in Path(root).glob("*/objects/*.obj"))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, *chunks: bytes) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex}")
    with open(tmp, "wb") as f:
        f.writelines(chunks)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class Store:
    """The on-disk mirror of moto's S3 backend; callers hold `lock` around mutation + sync."""

    def __init__(self, root: Path, backend):
        self.root, self.backend, self.lock = root, backend, threading.RLock()
        self.index: dict[str, dict[str, tuple]] = {}  # bucket -> key -> (etag, last_modified) on disk

    def _dir(self, bucket: str) -> Path:
        return self.root / (bucket if _SAFE_NAME.fullmatch(bucket) else "_" + _sha(bucket))

    def _live(self, bucket: str, key: str):
        from moto.s3.models import FakeKey

        found = self.backend.buckets.get(bucket)
        obj = found.keys.get(key) if found is not None else None
        return obj if isinstance(obj, FakeKey) else None  # not a delete marker

    def sync_bucket(self, bucket: str) -> None:
        exists, folder = bucket in self.backend.buckets, self._dir(bucket)
        if exists and bucket not in self.index:
            (folder / "objects").mkdir(parents=True, exist_ok=True)
            _atomic_write(folder / "bucket.json", json.dumps({"name": bucket}).encode())
            _fsync_dir(self.root)
            self.index[bucket] = {}
        elif not exists and bucket in self.index:
            (folder / "bucket.json").unlink(missing_ok=True)  # the commit point; objects/ is empty
            _fsync_dir(folder)
            shutil.rmtree(folder)
            _fsync_dir(self.root)
            del self.index[bucket]

    def sync_key(self, bucket: str, key: str) -> None:
        self.sync_bucket(bucket)
        if bucket not in self.index:
            return
        obj, path = self._live(bucket, key), self._dir(bucket) / "objects" / f"{_sha(key)}.obj"
        if obj is None:
            if self.index[bucket].pop(key, None) is not None:
                path.unlink(missing_ok=True)
                _fsync_dir(path.parent)
            return
        data = obj.value
        head = {"key": key, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "etag": obj.etag.strip('"'),
                "metadata": dict(obj.metadata), "last_modified": obj.last_modified.isoformat()}
        _atomic_write(path, json.dumps(head).encode() + b"\n", data)
        self.index[bucket][key] = (head["etag"], head["last_modified"])

    def sync_all(self, bucket: str) -> None:
        """Bring a whole bucket up to date, for a mutation whose keys we cannot tell."""
        self.sync_bucket(bucket)
        if bucket not in self.index:
            return
        for key in set(self.index[bucket]) | set(self.backend.buckets[bucket].keys):
            obj = self._live(bucket, key)
            if obj is None or self.index[bucket].get(key) != (obj.etag.strip('"'), obj.last_modified.isoformat()):
                self.sync_key(bucket, key)

    def _restore(self, bucket: str, key: str, data: bytes, head: dict | None = None) -> None:
        obj = self.backend.put_object(bucket, key, data, etag=(head or {}).get("etag"), disable_notification=True)
        if head:
            obj.set_metadata(dict(head["metadata"]))
            obj.last_modified = dt.datetime.fromisoformat(head["last_modified"])
            self.index[bucket][key] = (head["etag"], head["last_modified"])

    def load(self) -> int:
        """Load every persisted bucket and object into moto; undo an import that died half-way."""
        self.root.mkdir(parents=True, exist_ok=True)
        folders = sorted(p for p in self.root.iterdir() if (p / "bucket.json").is_file())
        if (self.root / ".importing").exists():  # everything here came from that import: redo it
            for folder in folders:
                shutil.rmtree(folder)
            (self.root / ".importing").unlink()
            _fsync_dir(self.root)
            folders = []
        for folder in folders:
            bucket = json.loads((folder / "bucket.json").read_text())["name"]
            self.backend.create_bucket(bucket, REGION)
            self.index[bucket] = {}
            for tmp in (folder / "objects").glob(".tmp-*"):
                tmp.unlink()
            for path in sorted((folder / "objects").glob("*.obj")):
                with open(path, "rb") as f:
                    head, data = json.loads(f.readline()), f.read()
                if len(data) != head["size"] or hashlib.sha256(data).hexdigest() != head["sha256"]:
                    print(f"s3_server: warning: {path} is damaged; {bucket}/{head['key']} not loaded", file=sys.stderr)
                else:
                    self._restore(bucket, head["key"], data, head)
        return sum(map(len, self.index.values()))

    def import_snapshot(self, old: Path) -> int:
        """Import `bfn stack down`'s old snapshot (<old>/<bucket>/index.json + blobs/) into an empty store."""
        _atomic_write(self.root / ".importing", b"")
        count = 0
        for index in sorted(old.glob("*/index.json")):
            bucket = index.parent.name
            if bucket not in self.backend.buckets:
                self.backend.create_bucket(bucket, REGION)
            self.sync_bucket(bucket)
            for key, blob in json.loads(index.read_text()).items():
                self._restore(bucket, key, (index.parent / "blobs" / blob).read_bytes())
                self.sync_key(bucket, key)
                count += 1
        (self.root / ".importing").unlink()
        _fsync_dir(self.root)
        return count
