"""Ray Jobs API plumbing for `bfn submit` and `bfn jobs`: the address, the client, the runtime_env.

The Jobs API is the Ray dashboard's HTTP address (http://HEAD:8265), not the GCS address that
`ray.init` takes. It comes from --address, else RAY_ADDRESS when that is an http(s) URL, else
BFN_RAY_DASHBOARD (written by `bfn stack up` into its env file), else the local stack's state.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path


from pipelines import names as N
from bfn_platform.errors import BfnError

# What a job's working_dir leaves out: local state, environments, VCS data, data sets, build
# output. Ray uploads the rest to the cluster's object store, so it must stay small.
WORKING_DIR_EXCLUDES = [
    # gitignore syntax: a leading / anchors at the project root (pipelines/data/ is code, /data is not)
    "/.venv", "/venv", "/.bfn", "/.git", "/data", "/samples", "/mlruns", "/mlartifacts", "/ray_results",
    "*.egg-info", "__pycache__", ".pytest_cache", "*.pt", "*.ckpt", "*.safetensors", "*.npy", "*.tar", "*.tar.gz",
    "*.zip",
]
LARGE_FILE_BYTES = 5 * 1024 * 1024  # anything bigger is left out too (Ray's working_dir limit is ~500 MiB)
# Forwarded to the job (when set in the submitting shell): the MLflow and S3 settings and local state,
# as for a training's workers (pipelines.ray_runtime.worker_env): credentials only as a file's path.
# Never RAY_ADDRESS or RAY_AUTH_*: inside a job Ray sets its own address, and the cluster its auth.
DASHBOARD_ENV = "BFN_RAY_DASHBOARD"


def project_root() -> Path:
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").exists() or not (root / "pipelines").is_dir():
        raise BfnError(f"bfn submit needs the project's source tree to ship to the cluster; {root} is not a "
                       "bfn-platform checkout: run bfn from an editable install (`pip install -e .`)")
    return root


def large_files(root: Path, limit: int = LARGE_FILE_BYTES) -> list[str]:
    """Relative paths of files over `limit` outside the excluded folders (also excluded)."""
    skip = {p.lstrip("/") for p in WORKING_DIR_EXCLUDES if not p.startswith("*")}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip and not d.endswith(".egg-info")]
        for f in filenames:
            path = Path(dirpath) / f
            try:
                if path.stat().st_size > limit:
                    out.append("/" + str(path.relative_to(root)))
            except OSError:
                pass
    return out


def job_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    from pipelines.ray_runtime import worker_env

    return worker_env(environ=environ)


def redact(text: str, environ: dict[str, str] | None = None) -> str:
    """`text` with the values of credentials in this environment replaced by ***: Ray echoes a job's
    runtime_env (env_vars included) in some of its error messages."""
    env = os.environ if environ is None else environ
    for name in N.NEVER_FORWARDED_ENV_VARS + ("RAY_AUTH_TOKEN",):
        value = env.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def runtime_env(root: Path | None = None, environ: dict[str, str] | None = None) -> dict:
    root = root or project_root()
    return {"working_dir": str(root), "excludes": WORKING_DIR_EXCLUDES + large_files(root),
            "env_vars": job_env(environ)}


def _stack_dashboard() -> tuple[str, str] | None:
    """(dashboard URL, Ray token) of the local stack under BFN_HOME, if one is recorded."""
    from bfn_platform.stack_state import Stack
    from pipelines.tracking import bfn_home

    stack = Stack.load(bfn_home())
    if "ray-head" not in stack.services:
        return None
    token = stack.token_file.read_text().strip() if stack.token_file.exists() else ""
    return stack.dashboard_url, token


def resolve_address(address: str | None) -> str:
    ray_address = os.environ.get(N.ENV_RAY_ADDRESS, "")
    candidates = [address, ray_address if ray_address.startswith(("http://", "https://")) else None,
                  os.environ.get(DASHBOARD_ENV)]
    for c in candidates:
        if c:
            return c if "://" in c else f"http://{c}"
    local = _stack_dashboard()
    if local:
        return local[0]
    raise BfnError("no Ray Jobs API address: pass --address http://HEAD:8265, set RAY_ADDRESS=http://HEAD:8265, or "
                   "start the local stack (`bfn stack up`, then `source .bfn/stack.env`)")


def _auth_headers(address: str) -> dict[str, str]:
    """The token header for a token-auth cluster: from RAY_AUTH_TOKEN_PATH, or the local stack's token."""
    path = os.environ.get(N.ENV_RAY_AUTH_TOKEN_PATH)
    token = ""
    if path and Path(path).exists():
        token = Path(path).read_text().strip()
    elif os.environ.get("RAY_AUTH_TOKEN"):
        token = os.environ["RAY_AUTH_TOKEN"].strip()
    else:
        local = _stack_dashboard()
        if local and local[0].rstrip("/") == address.rstrip("/"):
            token = local[1]
    return {"Authorization": f"Bearer {token}"} if token else {}


def client(address: str | None):
    """A connected JobSubmissionClient, or a one-line error naming the address."""
    url = resolve_address(address)
    _probe(url)
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(url, headers=_auth_headers(url))
    except Exception as err:  # ConnectionError, or RuntimeError for HTTP failures (401 without a token)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BfnError(f"Ray Jobs API at {url} is unreachable ({first[:200]}): check the address "
                       "(`bfn stack status`), the dashboard port (8265) and, with token auth, RAY_AUTH_TOKEN_PATH") from None


def _probe(url: str, timeout: float = 10.0) -> None:
    """Ask the Jobs API for its version first: the SDK alone can hang on an address where nothing answers."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url.rstrip("/") + "/api/version", headers=_auth_headers(url))
    try:
        with urllib.request.urlopen(req, timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answers; the SDK reports auth and version problems in its own words
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise BfnError(f"Ray Jobs API at {url} is unreachable ({reason}): check the address (`bfn stack status`), "
                       "the dashboard port (8265) and that the cluster is up") from None


def submission_id(name: str | None) -> str | None:
    if not name:
        return None
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:60]
    return f"{safe}-{uuid.uuid4().hex[:8]}"


def job_info(client_, job_id: str):
    try:
        return client_.get_job_info(job_id)
    except Exception as err:
        if "404" in str(err) or "does not exist" in str(err).lower() or "not found" in str(err).lower():
            raise BfnError(f"unknown job {job_id} (list jobs with `bfn jobs list`)") from None
        raise


def info_dict(info) -> dict:
    return {"job_id": info.submission_id or info.job_id, "status": str(getattr(info.status, "value", info.status)),
            "entrypoint": redact(info.entrypoint or ""), "message": redact(info.message or ""), "start_time": info.start_time,
            "end_time": info.end_time, "metadata": dict(info.metadata or {})}
