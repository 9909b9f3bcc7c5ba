"""MLflow tracking: where the store is, whether it answers, experiments and runs.

With no MLFLOW_TRACKING_URI the embedded SQLite store ./.bfn/mlflow.db is used, with artifacts under
./.bfn/mlartifacts, so every command works on one machine without a server.
"""
from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
import warnings
from contextlib import contextmanager
from pathlib import Path

from pipelines.errors import PipelineError
from pipelines.names import (ENV_BFN_DATA, ENV_BFN_HOME, ENV_MLFLOW_HTTP_BACKOFF, ENV_MLFLOW_HTTP_RETRIES, ENV_MLFLOW_HTTP_TIMEOUT,
                             ENV_MLFLOW_TRACKING_URI)



def bfn_home() -> Path:
    """The local state folder (./.bfn unless BFN_HOME says otherwise)."""
    return Path(os.environ.get(ENV_BFN_HOME, ".bfn")).resolve()


def data_root() -> str:
    """Where shards live by default: $BFN_DATA_URL (the stack's and the cluster's), else $BFN_HOME/data."""
    return os.environ.get(ENV_BFN_DATA, "").rstrip("/") or str(bfn_home() / "data")


def tracking_uri() -> str:
    uri = os.environ.get(ENV_MLFLOW_TRACKING_URI)
    if uri:
        return uri
    home = bfn_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """Fail early, before any Ray work, when a tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            if resp.status == 200:
                return
            problem = f"HTTP {resp.status}"
    except urllib.error.HTTPError as err:
        problem = f"HTTP {err.code}"
    except (urllib.error.URLError, OSError) as err:
        problem = str(getattr(err, "reason", err))
    raise PipelineError(
        f"MLflow tracking server {uri} is unreachable ({problem}): start it (`bfn stack up`) "
        "or point MLFLOW_TRACKING_URI at a running server (unset it to use the local ./.bfn store)"
    )


# MLflow's own HTTP defaults retry for minutes (7 retries, backoff factor 2, 120 s timeout): a
# tracking server outage then stalls every worker. These bound one request to about half a minute;
# each can be set in the environment, and the values travel to Ray workers (names.WORKER_ENV_VARS).
MLFLOW_HTTP_DEFAULTS = {ENV_MLFLOW_HTTP_RETRIES: "3", ENV_MLFLOW_HTTP_BACKOFF: "1", ENV_MLFLOW_HTTP_TIMEOUT: "10"}


def setup_mlflow() -> str:
    """Point the MLflow client at the configured store (checked) and return the URI; bounded HTTP
    retries and timeouts unless the environment sets its own."""
    import mlflow

    for key, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    uri = tracking_uri()
    check_tracking_server(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def ensure_experiment(name: str) -> str:
    """The experiment's id, creating it (with artifacts under ./.bfn for the local store) if needed."""
    import mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if mlflow.get_tracking_uri().startswith("sqlite:"):
        location = (bfn_home() / "mlartifacts" / name).as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another process
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


@contextmanager
def system_metrics(run_id: str | None, setting: str, on_gpu: bool, interval_s: float = 10.0):
    """MLflow's system metrics monitor on the run while the block runs (setting auto: on for GPU runs).
    Without psutil it says so once and the run goes on: metrics are a convenience, not the job."""
    if run_id is None or setting == "off" or (setting == "auto" and not on_gpu):
        yield
        return
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError as err:
        warnings.warn(f"tracking.system_metrics is {setting} but {err.name} is missing: pip install psutil", stacklevel=2)
        yield
        return
    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, samples_before_logging=1)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_PREFIX = re.compile(r"^[0-9a-f]{4,31}$")


def resolve_run_id(ref: str) -> str:
    """A full run id from a full id, a unique prefix of one (4 characters or more: what a narrow table
    shows), or a run name (names are `<config>-<short id>`); a clear error when none or several match."""
    import mlflow

    ref = ref.strip()
    if _RUN_ID.match(ref):
        return ref
    client = mlflow.MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments(max_results=1000)]
    if not experiments:
        raise PipelineError(f"unknown run {ref}: the tracking store {mlflow.get_tracking_uri()} has no runs")
    if _PREFIX.match(ref):
        matches, token = [], None
        while True:  # MLflow's search has no prefix operator on run ids: page through the ids
            page = client.search_runs(experiments, max_results=5000, page_token=token)
            matches += [r.info.run_id for r in page if r.info.run_id.startswith(ref)]
            token = page.token
            if not token:
                break
    else:
        escaped = ref.replace("'", "\\'")
        matches = [r.info.run_id for r in client.search_runs(experiments, filter_string=f"attributes.run_name = '{escaped}'",
                                                              max_results=10)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise PipelineError(f"unknown run {ref}: no run id starts with it and no run has that name "
                            "(find runs with `bfn runs list`)")
    raise PipelineError(f"run {ref} is ambiguous: {len(matches)} runs match ({', '.join(m[:12] + '…' for m in matches[:5])}); "
                        "give more characters of the id")
