"""Write one split of a data set as webdataset tar shards plus a manifest, locally or on S3.

Layout: ``OUT/SPLIT/SPLIT-000000-<sha8>.tar``, ``OUT/SPLIT/SPLIT-000001-<sha8>.tar``, ... and
``OUT/SPLIT/manifest.json``. A shard's name carries the first 8 hex digits of its sha256, so a new
write never overwrites a shard of the set already there with different bytes. The order of
operations is what makes a rewrite safe:

1. check that OUT can be written (a clear error before any download or work);
2. load the source and write each shard whole (temporary name then rename locally; one PUT on S3)
   beside the existing set, which stays complete and readable all along;
3. write the manifest last, atomically (rename locally, one PUT on S3): the commit;
4. delete the shards the new manifest does not list (the previous set's), best effort.

An exception anywhere before step 3 leaves the previous manifest and its shards as they were, and
removes this attempt's own shards (best effort; unlisted shards are invisible to readers anyway).
The bytes of every shard are a function of the source and ``seed`` only (fixed tar metadata,
seeded sample order), so two writes with the same seed have the same names and sha256s.

Where the source has class labels (and ``labels`` is on, the default), each sample's label follows
its ``x`` as a member ``KEY.y.int64`` (manifest.py); without labels a set is written exactly as
before labels existed, byte for byte.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import tarfile
from datetime import datetime, timezone
from importlib import metadata
from typing import Callable

import numpy as np

from pipelines.data import storage
from pipelines.data.manifest import MANIFEST_NAME, Manifest, ShardInfo, write_manifest
from pipelines.data.source import DatasetSource
from pipelines.data.sources import get_source
from pipelines.data.schema import FieldSpec
from pipelines.data.tarlayout import sample_record_bytes
from pipelines.errors import PipelineError
from pipelines.seeds import numpy_rng

DEFAULT_SHARD_SIZE = 1000
ShardProgressFn = Callable[[int, int, str], None]  # (samples written, samples in total, current shard)
DownloadProgressFn = Callable[[int, "int | None"], None]


def shard_name(split: str, index: int, sha256: str) -> str:
    return f"{split}-{index:06d}-{sha256[:8]}.tar"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _tar_bytes(keys: list[str], members: list[str], payloads: list[list[bytes]]) -> bytes:
    """One shard: a plain ustar tar with fixed metadata, one regular member ``KEY.MEMBER`` per sample
    and member, the members of a sample together and in the order of ``members``.

    Written with ``tarfile`` in USTAR format (webdataset's TarWriter ignores its ``format`` argument
    and would fall back to PAX records for anything unusual), so the fixed record layout the
    reader relies on (tarlayout.py) always holds; webdataset reads these shards as any other.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, sample in zip(keys, payloads):
            for member, payload in zip(members, sample):
                info = tarfile.TarInfo(f"{key}.{member}")
                info.size, info.mtime, info.mode = len(payload), 0, 0o444
                info.uname = info.gname = "bfn"
                tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def write_shards(source: DatasetSource | str, split: str, out_url: str, *, shard_size: int = DEFAULT_SHARD_SIZE,
                 seed: int = 0, source_dir: str | None = None, limit: int | None = None, labels: bool = True,
                 on_progress: ShardProgressFn | None = None,
                 on_download: DownloadProgressFn | None = None) -> Manifest:
    """Write ``split`` of ``source`` under ``out_url``/``split``/ and return the manifest written.

    Samples are written in an order drawn from ``seed`` (so each shard mixes the whole split and
    a reader's shuffle buffer needs only to mix across shards); each sample's key is its index in
    the source split, zero-padded, so a read sample can always be traced back to its source.
    ``limit`` keeps only the first ``limit`` samples of that order (a random subset, for smoke runs).
    ``labels``: store the source's class labels where it has them (``labels=False`` or a source
    without labels, such as text8: an unlabelled set).
    """
    if isinstance(source, str):
        source = get_source(source)
    source.check_split(split)
    if shard_size < 1:
        raise PipelineError(f"--shard-size must be at least 1, not {shard_size}")
    if limit is not None and limit < 1:
        raise PipelineError(f"--limit must be at least 1, not {limit}")
    split_url = storage.join(out_url, split)
    manifest_url = storage.join(split_url, MANIFEST_NAME)

    storage.check_writable(split_url)
    kept = _listed_shards(manifest_url)  # the set already there: never touched by a failed attempt

    loaded = source.load(split, source_dir=source_dir, seed=seed, on_progress=on_download, labels=labels)
    data, field, y = loaded.data, loaded.field, loaded.labels
    order = numpy_rng("shard-write-order", seed).permutation(len(data))
    if limit is not None:
        order = order[:limit]
    total = len(order)
    if total == 0:
        raise PipelineError(f"{source.name}/{split} has no samples to write")
    width = max(6, len(str(len(data) - 1)))
    schema = {"x": field}
    if y is not None:
        schema["y"] = _counted(source.label_field, y[order])
    members = [spec.member(name) for name, spec in schema.items()]

    shards: list[ShardInfo] = []
    written: list[str] = []
    try:
        for index, start in enumerate(range(0, total, shard_size)):
            chunk = order[start:start + shard_size]
            samples = [[field.encode(data[i])] + ([schema["y"].encode(y[i])] if y is not None else []) for i in chunk]
            payload = _tar_bytes([f"{int(i):0{width}d}" for i in chunk], members, samples)
            sha = hashlib.sha256(payload).hexdigest()
            name = shard_name(split, index, sha)
            url = storage.join(split_url, name)
            storage.write_bytes(url, payload, durable=True)
            if name not in kept:
                written.append(url)
            shards.append(ShardInfo(name, len(chunk), sha, len(payload)))
            if on_progress is not None:
                on_progress(start + len(chunk), total, name)
        manifest = Manifest(
            dataset=source.name, split=split, shards=shards, schema=schema,
            default_read=source.default_read, variants=dict(source.variants),
            source={**loaded.info, "description": source.description, "samples_in_split": int(len(data))},
            seed=int(seed), shard_size=int(shard_size),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            writer={"package": "bfn-platform", "version": _version("bfn-platform"),
                    "webdataset": _version("webdataset")},
            layout={"tar": "ustar", "record_bytes": sample_record_bytes([f.nbytes for f in schema.values()]),
                    "key_chars": width, "members": members},
            url=manifest_url,
        )
        write_manifest(manifest, manifest_url)
    except BaseException:
        for url in written:  # this attempt's own shards, best effort: no manifest lists them
            try:
                storage.delete(url)
            except Exception:
                pass
        raise
    _delete_stale_shards(split_url, split, {s.name for s in shards})
    return manifest


def _counted(label_field: FieldSpec, y) -> FieldSpec:
    """The label field with the number of samples of each class in the set written (for `bfn data inspect`
    and for checking class balance without reading the shards)."""
    counts = np.bincount(y, minlength=label_field.num_classes).tolist()
    return dataclasses.replace(label_field, extra={**label_field.extra, "class_counts": counts})


def _listed_shards(manifest_url: str) -> set[str]:
    """Names of the shards an existing manifest lists (none when there is none or it is unreadable)."""
    from pipelines.data.manifest import load_manifest

    try:
        return {s.name for s in load_manifest(manifest_url).shards}
    except Exception:  # no set there yet, or a damaged manifest: nothing to keep
        return set()


def _delete_stale_shards(split_url: str, split: str, keep: set[str]) -> None:
    pattern = re.compile(rf"^{re.escape(split)}-\d{{6}}(-[0-9a-f]{{8}})?\.tar$")
    try:
        for name in storage.list_names(split_url):
            if pattern.match(name) and name not in keep:
                storage.delete(storage.join(split_url, name))
    except PipelineError:
        pass  # stale shards are invisible without a manifest entry; never fail a good write for them
