"""What ties an MLflow run to who made it, from which code and on which data, written the way the
MLflow UI reads it: the standard context tags (``mlflow.user``, ``mlflow.source.*``, git commit,
branch and repository) and the run's shard sets as MLflow datasets (``mlflow.data``: the manifest
URL as the source, the shard set's content digest as the dataset digest, the split as its context).
"""
from __future__ import annotations

import getpass
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

from pipelines.names import ENV_BFN_USER

REPO_ROOT = Path(__file__).resolve().parents[1]


def who() -> str:
    """The person acting: BFN_USER (set it in shared service accounts), else the login name."""
    user = os.environ.get(ENV_BFN_USER)
    if user:
        return user
    try:
        return getpass.getuser()
    except Exception:  # no login name (some containers)
        return "unknown"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def git_commit() -> str | None:
    """The repository's commit, with '-dirty' when the work tree has changes; None outside git."""
    sha = _git("rev-parse", "HEAD")
    if sha is None:
        return None
    return sha + ("-dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")


def _without_credentials(url: str) -> str:
    """https://user:token@host/repo -> https://host/repo: a remote URL may carry a token."""
    return re.sub(r"^(\w+://)[^/@]*@", r"\1", url)


def context_tags(entry_point: str | None = None) -> dict[str, str]:
    """MLflow's standard run context: user, source (the command that made the run), git commit,
    branch and repository; what the UI shows as 'Created by', 'Source' and the git fields."""
    tags = {"mlflow.user": who(),
            "mlflow.source.name": entry_point or " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))[:500],
            "mlflow.source.type": "JOB" if os.environ.get("RAY_JOB_ID") else "LOCAL"}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
        branch = _git("rev-parse", "--abbrev-ref", "HEAD")
        if branch and branch != "HEAD":
            tags["mlflow.source.git.branch"] = branch
        remote = _git("remote", "get-url", "origin")
        if remote:
            tags["mlflow.source.git.repoURL"] = _without_credentials(remote)
    return tags


def dataset_inputs(manifests: dict, digests: dict[str, str], urls: dict[str, str]) -> list:
    """One MLflow DatasetInput per split: name '<dataset>-<split>', source the manifest URL, digest the
    shard set's content digest, and the split as its context (train / val / test)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = []
    for split, manifest in manifests.items():
        with warnings.catch_warnings():  # local paths match two registered source types, both the same class
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(urls[split])
        dataset = MetaDataset(source=source, name=f"{manifest.dataset}-{split}", digest=digests[split][:36])
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, split)]))
    return inputs
