"""Credentials reach Ray workers and jobs as a file path, never as values.

A Ray runtime_env's env_vars are written in clear text to every node's runtime_env_agent.log and
returned by the Jobs API to anyone holding the cluster token, so no credential may travel in one.
What travels instead:

- on a cluster, nothing: its nodes have their own identity (an IAM role or service account, or the
  Secret bfn-credentials as the pods' environment, see infra/);
- on a cluster that shares this machine's disk (the local stack, a test cluster), the path of an
  AWS shared-credentials file with mode 0600. `bfn stack up` writes one for its S3 server and puts
  its path into the env file and the nodes' environment; a driver whose environment holds the keys
  themselves writes them to such a file here (under $BFN_HOME/credentials/) and forwards its path.

MLflow's password is never forwarded: MLflow reads it only from the environment or
~/.mlflow/credentials, so workers on a cluster with an authenticating MLflow server need it from
their own identity.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Mapping

from pipelines.names import (
    ENV_AWS_ACCESS_KEY_ID,
    ENV_AWS_SECRET_ACCESS_KEY,
    ENV_AWS_SESSION_TOKEN,
    ENV_AWS_SHARED_CREDENTIALS_FILE,
    ENV_BFN_HOME,
)
from pipelines.tracking import bfn_home

# the profile the SDKs read from a shared-credentials file when AWS_PROFILE is unset
DEFAULT_PROFILE = "default"


def credentials_ini(access_key: str, secret_key: str, session_token: str | None = None) -> str:
    """An AWS shared-credentials file's text with one [default] profile."""
    lines = [f"[{DEFAULT_PROFILE}]", f"aws_access_key_id = {access_key}", f"aws_secret_access_key = {secret_key}"]
    if session_token:
        lines.append(f"aws_session_token = {session_token}")
    return "\n".join(lines) + "\n"


def write_private(path: Path, text: str) -> Path:
    """Write `text` to `path` with mode 0600 from the first byte (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def credentials_file(environ: Mapping[str, str] | None = None, home: Path | None = None) -> str | None:
    """The shared-credentials file workers should read: the keys of `environ` written to a 0600 file
    (named by their digest, so the same keys give the same file), else the AWS_SHARED_CREDENTIALS_FILE
    `environ` already names, else None."""
    env = os.environ if environ is None else environ
    key, secret = env.get(ENV_AWS_ACCESS_KEY_ID), env.get(ENV_AWS_SECRET_ACCESS_KEY)
    if not (key and secret):
        return env.get(ENV_AWS_SHARED_CREDENTIALS_FILE) or None
    text = credentials_ini(key, secret, env.get(ENV_AWS_SESSION_TOKEN))
    root = home or (Path(env[ENV_BFN_HOME]).resolve() if env.get(ENV_BFN_HOME) else bfn_home())
    path = root / "credentials" / f"aws-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    if not path.exists() or path.read_text() != text:
        write_private(path, text)
    return str(path)
