"""Data sets as webdataset shards plus a manifest, on a file system or S3, and their readers.

Modules: ``sources`` (the data sets and their canonical downloads), ``writer`` (shards + manifest),
``manifest`` (the format), ``reader`` (one reader for training and evaluation, equal batch counts
on every rank; ``epoch_plan`` shares an epoch out, ``shard_blocks`` reads the bytes),
``transforms`` (stored values -> bfn_core's conventions; ``text`` for symbol ids), ``storage``
(paths, file:// and s3:// URLs, checkpoint locations; ``urls`` parses them, ``s3`` holds the one S3
configuration), ``localserver`` (a loopback S3-compatible server for tests and benchmarks).

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
    "make_transform": "transforms", "encode_text": "text", "decode_text": "text", "TEXT8_ALPHABET": "text",
    "SOURCES": "sources", "get_source": "sources", "DatasetSource": "sources", "ArraySource": "sources",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipelines.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"pipelines.data.{module}"), name)
