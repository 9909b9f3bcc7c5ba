"""`prepare(cfg)`: everything a run needs settled before Ray starts, done once for train, sweep and eval.

- URLs: ${VAR} and ${VAR:-default} expanded, local paths made absolute (Ray workers do not run in
  the driver's working directory).
- Data: each manifest reachable and readable as the config's data kind, with the training data's
  shape (and `data.shape` where set); a validation split held out of a training split disjoint
  from what training reads; the content digest of every shard set.
- Storage: where Ray Train keeps the checkpoints, and the filesystem that reaches it.

`data_report` runs the same data checks without failing on the first problem, for `bfn check`.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.config import ExperimentConfig
from pipelines.errors import PipelineError
from pipelines.names import ENV_BFN_DATA, ENV_BFN_HOME, ENV_BFN_STORAGE

SPLITS = ("train", "val", "test")
_ENV_REF = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def expand_env(url: str) -> str:
    """${VAR} and ${VAR:-default} in a config URL (e.g. ${BFN_DATA_URL}/cifar10/train/manifest.json),
    from the environment, as a shell would expand them; BFN_HOME and BFN_DATA_URL, when unset, have
    the platform's defaults (./.bfn and $BFN_HOME/data), so one home holds every default path."""
    from pipelines.tracking import bfn_home, data_root

    homes = {ENV_BFN_HOME: lambda: str(bfn_home()), ENV_BFN_DATA: data_root}

    def value(match: re.Match) -> str:
        name, default = match["name"], match["default"]
        got = os.environ.get(name) or (homes[name]() if name in homes and default is None else None)
        if got:
            return got
        if default is not None:
            return default
        raise PipelineError(f"{url}: environment variable {name} is not set (export it, e.g. `source .bfn/stack.env`, "
                            "or write the URL out)")

    return _ENV_REF.sub(value, url)


def absolute_urls(cfg: ExperimentConfig) -> ExperimentConfig:
    """Variables expanded and local paths made absolute."""
    def fix(url):
        if not url:
            return url
        url = expand_env(url)
        return url if "://" in url else str(Path(url).resolve())

    data = cfg.data.model_copy(update={k: fix(getattr(cfg.data, k)) for k in SPLITS})
    storage = cfg.storage.model_copy(update={"path": fix(cfg.storage.path)})
    return cfg.model_copy(update={"data": data, "storage": storage})


def content_digest(manifest) -> str:
    """A content digest of a shard set: sha256 over its shards' sha256 (not its creation time or URL)."""
    text = "\n".join([manifest.dataset, manifest.split] + [f"{s.name}:{s.sha256}" for s in manifest.shards])
    return hashlib.sha256(text.encode()).hexdigest()


def data_shape_of(manifest, kind: str, num_classes: int | None) -> tuple[int, ...]:
    """Check that a manifest's data can be read as (kind, K) and return the shape of one example as read."""
    from pipelines.data.transforms import make_transform

    try:
        transform = make_transform(manifest.field, kind, num_classes, default=manifest.default_read)
    except ValueError as err:
        raise PipelineError(f"data {manifest.url} cannot be read as {kind} data with K={num_classes}: {err}") from None
    return transform.out_shape(manifest.field.shape)


@dataclass
class DataCheck:
    split: str
    url: str
    ok: bool
    examples: int | None = None
    problem: str | None = None


@dataclass
class DataReport:
    checks: list[DataCheck] = field(default_factory=list)
    shape: tuple[int, ...] | None = None
    manifests: dict[str, Any] = field(default_factory=dict)  # split -> Manifest, where usable

    def raise_first_problem(self) -> None:
        for c in self.checks:
            if not c.ok:
                raise PipelineError(c.problem)


def data_report(cfg: ExperimentConfig, splits=SPLITS) -> DataReport:
    """Each configured manifest of `splits`: reachable, readable as the config's data kind with the
    training data's shape (and data.shape where set), and a validation split held out of a training
    split disjoint from what training reads."""
    from pipelines.data.manifest import load_manifest
    from pipelines.data.source import check_holdouts

    report = DataReport()
    for split in splits:
        url = getattr(cfg.data, split)
        if not url:
            continue
        try:
            manifest = load_manifest(expand_env(url))
            got = data_shape_of(manifest, cfg.data.kind, cfg.data.num_classes)
            expected = report.shape or (tuple(cfg.data.shape) if cfg.data.shape is not None else None)
            if expected is not None and got != expected:
                whose = "data.train's" if report.shape is not None else "the config's data.shape"
                raise PipelineError(f"data.{split} {manifest.url} holds examples of shape {list(got)}, "
                                    f"{whose} is {list(expected)}")
            if cfg.conditioning is not None:
                check_labels(manifest, cfg.conditioning.num_classes)
            if split == "val" and "train" in report.manifests:
                train = report.manifests["train"]
                check_holdouts(train.source, manifest.source, train.url, manifest.url)
            report.shape = report.shape or got
            report.manifests[split] = manifest
            report.checks.append(DataCheck(split, manifest.url, True, manifest.num_samples))
        except PipelineError as err:
            report.checks.append(DataCheck(split, url, False, problem=str(err)))
    return report


def check_labels(manifest, num_classes: int) -> None:
    """A conditional config's shards carry labels 0..num_classes-1 (the manifest's `y` field)."""
    field = manifest.require_labels()
    if field.num_classes != num_classes:
        raise PipelineError(f"{manifest.url} has labels of {field.num_classes} classes, the config's "
                            f"conditioning.num_classes is {num_classes}: set conditioning.num_classes: {field.num_classes}")


def storage_location(path: str | None):
    """(storage_path, filesystem or None) for Ray Train: the config's storage.path, else $BFN_STORAGE_PATH
    (the stack's and the cluster's checkpoint store), else ./.bfn/ray_results; S3 through the same
    settings as the shards (pipelines/data/s3.py)."""
    from pipelines.data.storage import checkpoint_location
    from pipelines.tracking import bfn_home

    return checkpoint_location(path, os.environ.get(ENV_BFN_STORAGE) or str(bfn_home() / "ray_results"))


@dataclass(frozen=True)
class Prepared:
    """A config with resolved URLs and what was learnt checking it."""

    cfg: ExperimentConfig
    data_shape: tuple[int, ...]
    manifests: dict[str, Any]  # split -> its Manifest
    digests: dict[str, str]  # split -> content digest of its shard set
    storage_path: str | None = None  # where Ray Train keeps checkpoints (None: not needed, as for eval)
    storage_filesystem: Any = None

    @property
    def manifest_urls(self) -> dict[str, str]:
        return {split: getattr(self.cfg.data, split) for split in self.digests}


def prepare(cfg: ExperimentConfig, *, splits=SPLITS, storage: bool = True) -> Prepared:
    """Resolve URLs, check the data of `splits`, digest it, and (with `storage`) locate the checkpoints."""
    cfg = absolute_urls(cfg)
    report = data_report(cfg, splits)
    report.raise_first_problem()
    digests = {split: content_digest(m) for split, m in report.manifests.items()}
    path, fs = storage_location(cfg.storage.path) if storage else (None, None)
    return Prepared(cfg, report.shape, report.manifests, digests, path, fs)
