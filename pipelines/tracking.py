"""MLflow tracking: where the store is, whether it answers, experiments and runs.

With no MLFLOW_TRACKING_URI the embedded SQLite store ./.bfn/mlflow.db is used, with artifacts under
./.bfn/mlartifacts, so every command works on one machine without a server.
"""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
import urllib.error
import urllib.request
from pathlib import Path

from pipelines.errors import PipelineError
from pipelines.names import ENV_BFN_HOME, ENV_MLFLOW_TRACKING_URI



def bfn_home() -> Path:
    """The local state folder (./.bfn unless BFN_HOME says otherwise)."""
    return Path(os.environ.get(ENV_BFN_HOME, ".bfn")).resolve()


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


def setup_mlflow() -> str:
    """Point the MLflow client at the configured store (checked) and return the URI."""
    import mlflow

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
