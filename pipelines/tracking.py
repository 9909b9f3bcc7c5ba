"""MLflow tracking: where the store is, whether it answers, experiments and runs, and the metrics of a
training run on their way from rank 0 to MLflow (MetricBuffer).

With no MLFLOW_TRACKING_URI the embedded SQLite store ./.bfn/mlflow.db is used, with artifacts under
./.bfn/mlartifacts, so every command works on one machine without a server.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
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


def mlflow_http_settings() -> dict[str, str]:
    """This process's MLflow HTTP retry settings (the defaults where unset), for Ray workers: they travel
    in the worker's config, so they hold on a cluster whose workers' environment was set elsewhere."""
    return {key: os.environ.get(key, value) for key, value in MLFLOW_HTTP_DEFAULTS.items()}


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


# ------------------------------------------------------------------------ metrics of a training run

METRICS_FILE = "metrics.json"  # in a checkpoint: rank 0's metrics not yet sent to MLflow when it was taken


class MetricBuffer:
    """Metrics of rank 0, sent to MLflow once Ray Train has registered the checkpoint that covers
    their step, so that a run that fails and resumes records each step exactly once.

    A report is registered when Ray Train's controller takes it from the worker's result queue, which
    holds one report: when `ray.train.report` returns for checkpoint k + 1, checkpoint k is registered,
    and the metrics up to k go out. Those not yet sent also travel inside each checkpoint
    (METRICS_FILE): a run resumed from checkpoint k sends whichever of them MLflow does not have yet
    (the worker may have died before or after sending them), and none of the steps after k.

    While MLflow does not answer, nothing is lost and nothing stops: every send that fails keeps its
    metrics (and a resumed checkpoint's rows, `carried`) for the next one, and each checkpoint holds
    all of them; a warning says so once.
    """

    def __init__(self, run_id: str | None):
        self.run_id, self.pending, self.last_checkpoint, self.unsent_warned = run_id, [], None, False
        self.carried: list[dict] = []  # rows of the checkpoint resumed from, not yet known to be in MLflow

    def add(self, step: int, **values: float) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now, step) for k, v in values.items() if v is not None and math.isfinite(v)]

    def save(self, folder: str | Path) -> None:
        """Write the metrics not yet sent into a checkpoint folder."""
        rows = self.carried + [{"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}
                               for m in self.pending]
        (Path(folder) / METRICS_FILE).write_text(json.dumps(rows))

    def resume(self, folder: str | Path, location: str | None = None) -> None:
        """After a restart from a checkpoint: send its metrics that MLflow does not have yet (kept, to
        be sent later, while MLflow does not answer)."""
        from pipelines.checkpoints import read_json  # here: torch is not for every user of this module

        if self.run_id is not None:
            self.carried = read_json(folder, METRICS_FILE, location, required=False) or []
            self._send_carried()

    def checkpoint_reported(self, step: int) -> None:
        """The report of a checkpoint at `step` returned: send what the previous checkpoint covers."""
        if self.last_checkpoint is not None:
            self._send(lambda m: m.step <= self.last_checkpoint)
        self.last_checkpoint = step

    def flush(self) -> None:
        """Training is over: send everything."""
        self._send(lambda m: True)

    def _send(self, covered) -> None:
        """Send the covered metrics; while the tracking server is unreachable they stay pending (and so
        travel in the next checkpoint and go out with the next send): no hole in the history, and
        training goes on (MLflow's retries are bounded by tracking.MLFLOW_HTTP_DEFAULTS)."""
        if self.run_id is None or not self._send_carried():
            return
        batch = [m for m in self.pending if covered(m)]
        if not batch:
            return
        from mlflow import MlflowClient

        try:
            _log(MlflowClient(), self.run_id, batch)
        except Exception as err:  # the server is down or refusing: keep them for the next send
            self._unsent(len(batch), err)
            return
        sent = {id(m) for m in batch}
        self.pending = [m for m in self.pending if id(m) not in sent]

    def _send_carried(self) -> bool:
        """Send the resumed checkpoint's rows MLflow lacks, first (the history stays in step order); False
        while MLflow does not answer."""
        if not self.carried:
            return True
        try:
            log_missing_metrics(self.run_id, self.carried)
        except Exception as err:
            self._unsent(len(self.carried), err)
            return False
        self.carried = []
        return True

    def _unsent(self, count: int, err: Exception) -> None:
        if not self.unsent_warned:
            warnings.warn(f"MLflow did not take {count} metrics of run {self.run_id} ({type(err).__name__}); "
                          "they are kept and sent with the next checkpoint", stacklevel=3)
            self.unsent_warned = True


def log_missing_metrics(run_id: str, rows: list[dict]) -> None:
    """Send to MLflow those of the saved metric rows ({key, value, timestamp, step}) it lacks."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient()
    newest: dict[tuple, dict] = {}  # a step saved twice came from a run and its restart: the restart is newer
    for r in rows:
        if (r["key"], r["step"]) not in newest or r["timestamp"] > newest[r["key"], r["step"]]["timestamp"]:
            newest[r["key"], r["step"]] = r
    saved = [Metric(r["key"], r["value"], r["timestamp"], r["step"]) for r in newest.values()]
    logged = {key: {m.step for m in client.get_metric_history(run_id, key)} for key in {m.key for m in saved}}
    _log(client, run_id, [m for m in saved if m.step not in logged[m.key]])


def _log(client, run_id: str, metrics: list) -> None:
    for i in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[i: i + 500])
