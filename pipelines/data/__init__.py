"""Data sets as webdataset shards plus a manifest, on a file system or S3, and their readers.

Modules: ``sources`` (the data sets and their canonical downloads), ``writer`` (shards + manifest),
``manifest`` (the format), ``reader`` (one reader for training and evaluation, equal batch counts
on every rank), ``transforms`` (stored values -> bfn_core's conventions), ``storage`` (paths,
file:// and s3:// URLs), ``localserver`` (a loopback S3-compatible server for tests and benchmarks).

Names are imported lazily: ``import pipelines.data.sources`` must not pay for torch and webdataset.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "shard_dataset": "reader", "make_loader": "reader", "ShardDataset": "reader", "ShardLoader": "reader",
    "ShardSkippedWarning": "reader", "collate_samples": "reader",
    "write_shards": "writer",
    "Manifest": "manifest", "ShardInfo": "manifest", "load_manifest": "manifest",
    "FieldSpec": "schema", "ReadSpec": "schema",
    "make_transform": "transforms", "bin_centres": "transforms", "encode_text": "transforms",
    "decode_text": "transforms", "TEXT8_ALPHABET": "transforms",
    "SOURCES": "sources", "get_source": "sources", "DatasetSource": "sources", "ArraySource": "sources",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipelines.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"pipelines.data.{module}"), name)
