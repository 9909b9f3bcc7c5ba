"""The manifest: the one file that makes a directory of tar shards a data set.

A reader trusts only what a manifest lists, and the writer puts the manifest last, atomically
(temporary name then rename on a file system; the last object, one PUT, on S3), so a reader never
sees a half-written shard set and an interrupted write leaves no manifest.

Format (``format: "bfn-shards"``, ``format_version`` 1, or 2 for a set with class labels), JSON::

    {
      "format": "bfn-shards", "format_version": 1,
      "dataset": "mnist", "split": "train",
      "num_samples": 60000,
      "shards": [{"name": "train-000000.tar", "num_samples": 1000, "sha256": "...", "bytes": 1536000}, ...],
      "schema": {"x": {"dtype": "uint8", "shape": [28, 28, 1], "data_kind": "discretised",
                       "num_classes": 256, "content": "image", "encoding": "raw"},
                 "y": {"dtype": "int64", "shape": [], "data_kind": "discrete", "num_classes": 10,
                       "content": "label", "encoding": "raw", "class_names": ["0", ...],
                       "class_counts": [5923, ...]}},
      "default_read": {"data_kind": "discrete", "num_classes": 2},
      "variants": {"binarised": {...}, "discretised": {...}},
      "source": {"name": "mnist", "version": "...", "origin": "https://...", "files": {"...": "sha256"}},
      "seed": 0, "shard_size": 1000, "created": "2025-01-01T00:00:00Z",
      "writer": {"package": "bfn-platform", "version": "0.1.0", "webdataset": "1.0.2"},
      "layout": {"tar": "ustar", "record_bytes": 2048, "key_chars": 6, "members": ["x.uint8", "y.int64"]}
    }

Shard names are relative to the manifest, so a shard set can be copied between disk and S3 as is.
Each sample in a shard is one tar member ``KEY.x.DTYPE`` holding the raw C-order bytes of the
array described by ``schema["x"]`` (KEY: the sample's index in the source split, zero-padded), and
in a labelled set (``schema`` has ``"y"``) a second member ``KEY.y.int64`` right after it holding
the class id (8 bytes, little-endian); ``class_counts`` says how many samples of each class the set
holds.  Such a set is written as format version 2, so an older reader says "upgrade" instead of
misreading it; a set without labels is still version 1, byte for byte as before.  ``layout``
(optional) promises that every sample is the run of plain ustar members ``members`` (default: just
``x``) taking ``record_bytes`` in all, with a ``key_chars``-digit key, which lets the reader seek and
parse blocks at once (tarlayout.py); shard sets without it are read member by member through webdataset.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from dataclasses import field as dc_field  # `field` is also Manifest's property
from typing import Any

from pipelines.data import storage
from pipelines.data.schema import FieldSpec, ReadSpec, is_label_field
from pipelines.errors import ManifestError

FORMAT = "bfn-shards"
FORMAT_VERSION = 2  # what this version reads; 2 added the class-label field "y"
UNLABELLED_FORMAT_VERSION = 1  # what a set without labels is written as, readable by older versions
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class ShardInfo:
    name: str
    num_samples: int
    sha256: str
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "num_samples": self.num_samples, "sha256": self.sha256, "bytes": self.bytes}


@dataclass
class Manifest:
    """A parsed manifest; ``url`` is where it was read from (not stored in the file)."""

    dataset: str
    split: str
    shards: list[ShardInfo]
    schema: dict[str, FieldSpec]
    default_read: ReadSpec
    source: dict[str, Any] = dc_field(default_factory=dict)
    variants: dict[str, ReadSpec] = dc_field(default_factory=dict)
    seed: int = 0
    shard_size: int = 0
    created: str = ""
    writer: dict[str, Any] = dc_field(default_factory=dict)
    layout: dict[str, Any] | None = None
    url: str = ""

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    @property
    def field(self) -> FieldSpec:
        """The sample field ``x`` (every set written here has exactly this one)."""
        return self.schema["x"]

    @property
    def label_field(self) -> FieldSpec | None:
        """The class-label field ``y`` (``num_classes``, ``class_names``), or None for an unlabelled set."""
        return self.schema.get("y")

    @property
    def has_labels(self) -> bool:
        return "y" in self.schema

    @property
    def record_fields(self) -> list[tuple[str, FieldSpec]]:
        """The stored fields in the order of their tar members within a sample: x, then y if labelled."""
        return [(name, self.schema[name]) for name in ("x", "y") if name in self.schema]

    def require_labels(self) -> FieldSpec:
        """The label field, or a one-line ManifestError naming this set and how to get labels."""
        if self.label_field is None:
            raise ManifestError(f"{self.url or self.dataset} ({self.dataset}/{self.split}) has no class labels: "
                                f"rewrite it with `bfn data shard {self.dataset} --split {self.split}` (labels are "
                                "written where the data set has them; text8 has none), or train unconditionally")
        return self.label_field

    @property
    def bits_unit(self) -> str:
        """What a likelihood in bits is per: "char" for text (bits/char), else "dim" (bits/dim).

        Decided by the stored content, not the data set's name, so any text set reports bits/char.
        """
        return "char" if self.field.content == "text" else "dim"

    def shard_url(self, shard: ShardInfo | int) -> str:
        info = self.shards[shard] if isinstance(shard, int) else shard
        return storage.join(storage.parent(self.url), info.name)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION if self.has_labels else UNLABELLED_FORMAT_VERSION,
            "dataset": self.dataset,
            "split": self.split,
            "num_samples": self.num_samples,
            "shards": [s.to_json() for s in self.shards],
            "schema": {k: v.to_json() for k, v in self.schema.items()},
            "default_read": self.default_read.to_json(),
            "variants": {k: v.to_json() for k, v in self.variants.items()},
            "source": self.source,
            "seed": self.seed,
            "shard_size": self.shard_size,
            "created": self.created,
            "writer": self.writer,
            **({"layout": self.layout} if self.layout else {}),
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"

    @classmethod
    def from_json(cls, d: dict[str, Any], url: str = "") -> "Manifest":
        if d.get("format") != FORMAT:
            raise ManifestError(f"{url} is not a bfn shard manifest (format {d.get('format')!r}); "
                                "write shards with `bfn data shard`")
        if int(d.get("format_version", 0)) > FORMAT_VERSION:
            raise ManifestError(f"{url} has format version {d.get('format_version')}, newer than this bfn "
                                f"understands ({FORMAT_VERSION}): upgrade bfn-platform")
        try:
            m = cls(
                dataset=d["dataset"], split=d["split"],
                shards=[ShardInfo(s["name"], int(s["num_samples"]), s["sha256"], int(s["bytes"])) for s in d["shards"]],
                schema={k: FieldSpec.from_json(v) for k, v in d["schema"].items()},
                default_read=ReadSpec.from_json(d["default_read"]),
                source=d.get("source", {}), variants={k: ReadSpec.from_json(v) for k, v in d.get("variants", {}).items()},
                seed=int(d.get("seed", 0)), shard_size=int(d.get("shard_size", 0)), created=d.get("created", ""),
                writer=d.get("writer", {}), layout=d.get("layout"), url=url,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ManifestError(f"{url} is malformed ({type(err).__name__}: {err}); rewrite it with `bfn data shard`") from None
        if "x" not in m.schema:
            raise ManifestError(f"{url} has no field 'x' in its schema; rewrite it with `bfn data shard`")
        if m.label_field is not None and not is_label_field(m.label_field):
            raise ManifestError(f"{url} has a field 'y' that is not a scalar integer class label; "
                                "rewrite it with `bfn data shard`")
        if d.get("num_samples") is not None and int(d["num_samples"]) != m.num_samples:
            raise ManifestError(f"{url} says num_samples={d['num_samples']} but its shards add up to {m.num_samples}; "
                                "rewrite it with `bfn data shard`")
        return m


def manifest_url(url: str) -> str:
    """Accept a manifest URL or the directory holding one."""
    return url if url.rstrip("/").endswith(".json") else storage.join(url, MANIFEST_NAME)


def load_manifest(url: str) -> Manifest:
    """Read and check a manifest; ``url`` may also be the directory that holds ``manifest.json``."""
    url = manifest_url(url)
    try:
        text = storage.read_bytes(url)
    except FileNotFoundError:
        raise ManifestError(f"no manifest at {url}: write the shards with `bfn data shard DATASET --out DIR` "
                            "(the manifest is DIR/SPLIT/manifest.json), or fix the URL") from None
    try:
        data = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(f"{url} is not valid JSON ({err}); rewrite it with `bfn data shard`") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{url} is not a bfn shard manifest; write shards with `bfn data shard`")
    return Manifest.from_json(data, url=url)


def write_manifest(manifest: Manifest, url: str) -> None:
    """Atomic and durable: a temporary name then rename locally, a single PUT on S3."""
    storage.write_bytes(url, manifest.dumps().encode("utf-8"), durable=True)
