"""Faults while training on a real two-node Ray cluster, tracked by a real MLflow server.

A tampered shard or a corrupt checkpoint fails the same way on every try: the run ends at once (one
attempt, where Ray Train would otherwise retry max_failures times), FAILED, with one line that names
the shard or the stored checkpoint and no resume hint. The tracking server going away neither stops
training nor loses a metric: the run finishes training, says how to finish it once the server is
back, and `bfn train --resume` leaves one history with no hole.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

from services import free_port, start_mlflow, stop_process_group
from tiny import tiny_digits_config

pytestmark = pytest.mark.integration



def _config(shards: Path, tmp: Path, **overrides):
    """The tiny digits run, one worker, two retries allowed (so a retry would show), its own experiment."""
    sets = {"training.steps": 200, "training.val_every": 10**6, "training.val_batches": 1, "scaling.num_workers": 1,
            "scaling.max_failures": 2, "tracking.experiment": f"faults-{uuid.uuid4().hex[:8]}"}
    return tiny_digits_config(shards, tmp, **{**sets, **overrides})


def _controller_records(cluster, needle: str) -> list[dict]:
    """The records of the Ray Train controller (its structured log, one JSON record a line) whose log
    mentions `needle`: that run's controller."""
    found = []
    for session in {node.get_session_dir_path() for node in cluster.list_all_nodes()}:
        for log in Path(session, "logs", "train").glob("ray-train-sys-controller-*.log"):
            text = log.read_text(errors="replace")
            if needle in text:
                found += [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return found


def _attempts(cluster, needle: str) -> tuple[int, list[str]]:
    """(worker groups started, failure decisions) of the run whose controller log mentions `needle`."""
    records = _controller_records(cluster, needle)
    starts = [r for r in records if r["message"].startswith("Started training worker group")]
    decisions = [r["message"].splitlines()[0] for r in records if r["message"].startswith("[FailurePolicy]")]
    return len(starts), decisions


def _only_run(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, runs
    return runs[0]


def test_a_tampered_shard_ends_training_at_once(ray_two_nodes, tracked, digits_shards, tmp_path):
    import mlflow

    from pipelines.errors import PipelineError
    from pipelines.training import train

    shards = tmp_path / "digits"
    shutil.copytree(digits_shards, shards)
    victim = sorted((shards / "train").glob("*.tar"))[1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2: len(data) // 2 + 16] = bytes(b ^ 0xFF for b in data[len(data) // 2: len(data) // 2 + 16])
    victim.write_bytes(bytes(data))  # the same size, other bytes: only its sha256 tells
    cfg = _config(shards, tmp_path, **{"scaling.num_workers": 2})  # the other rank is stopped too

    with pytest.raises(PipelineError) as raised:
        train(cfg)
    message = str(raised.value)
    assert "\n" not in message and f"shard {victim} (listed in {shards / 'train' / 'manifest.json'})" in message
    assert "sha256" in message and "--resume" not in message, message
    run = _only_run(mlflow.MlflowClient(), cfg.tracking.experiment)
    assert message.startswith(f"training run {run.info.run_id} failed: shard ")
    assert run.info.status == "FAILED" and str(victim) in run.data.tags["bfn.error"]
    # Ray Train started one worker group and decided once, not to retry (max_failures is 2)
    assert _attempts(ray_two_nodes, str(victim)) == (1, ["[FailurePolicy] RAISE"])


def test_a_corrupt_checkpoint_ends_a_resume_at_once(ray_two_nodes, tracked, digits_shards, tmp_path):
    import mlflow

    from pipelines.errors import PipelineError
    from pipelines.training import train

    cfg = _config(digits_shards, tmp_path, **{"training.steps": 10, "training.checkpoint_every": 5})
    done = train(cfg)
    client = mlflow.MlflowClient()
    client.set_terminated(done.run_id, status="FAILED")  # as if it had died after its last checkpoint
    stored = Path(done.checkpoint_path)  # the latest checkpoint: the one a resume starts from
    data = (stored / "model.pt").read_bytes()
    (stored / "model.pt").write_bytes(data[: len(data) // 2])

    with pytest.raises(PipelineError) as raised:
        train(None, resume_run=done.run_id)
    message = str(raised.value)
    assert message.startswith(f"training run {done.run_id} failed: checkpoint file {stored}/model.pt is corrupt (")
    assert "\n" not in message and "--resume" not in message, message
    run = client.get_run(done.run_id)
    assert run.info.status == "FAILED" and f"{stored}/model.pt" in run.data.tags["bfn.error"]
    assert _attempts(ray_two_nodes, f"{stored}/model.pt") == (1, ["[FailurePolicy] RAISE"])


def test_a_corrupt_checkpoint_in_s3_is_named_by_its_s3_uri(s3_env, tmp_path):
    """Ray Train hands a worker an S3 checkpoint as a local download; the error names the S3 object."""
    import pyarrow.fs
    import torch
    from ray.train import Checkpoint

    from pipelines.checkpoints import load_weights, opened, save_checkpoint
    from pipelines.data.storage import checkpoint_location
    from pipelines.errors import CheckpointError

    bucket = s3_env.make_bucket(f"bfn-{uuid.uuid4().hex[:12]}")
    path, fs = checkpoint_location(f"{bucket}/checkpoints", "unused")
    local = tmp_path / "checkpoint_000003"
    net = torch.nn.Linear(3, 2)
    save_checkpoint(local, model=net, ema=net, optimizer=torch.optim.AdamW(net.parameters()), step=3, config={})
    (local / "ema.pt").write_bytes((local / "ema.pt").read_bytes()[:100])
    pyarrow.fs.copy_files(str(local), f"{path}/bfn-run/checkpoint_000003", source_filesystem=pyarrow.fs.LocalFileSystem(),
                          destination_filesystem=fs)

    with opened(Checkpoint(f"{path}/bfn-run/checkpoint_000003", filesystem=fs)) as (folder, location):
        assert location == f"{bucket}/checkpoints/bfn-run/checkpoint_000003" and folder != location
        with pytest.raises(CheckpointError) as raised:
            load_weights(folder, "ema", location)
    message = str(raised.value)
    assert f"checkpoint file {bucket}/checkpoints/bfn-run/checkpoint_000003/ema.pt is corrupt" in message
    assert folder not in message and "\n" not in message


# -------------------------------------------------------------------- the tracking server goes away

def test_the_tracking_server_killed_mid_run_loses_no_metric(ray_two_nodes, digits_shards, tmp_path, monkeypatch):
    """The policy (pipelines.worker, pipelines.training): training goes on while MLflow is away, its
    metrics kept and carried in every checkpoint; with the server still away at the end, the run cannot
    be recorded as ended, and the error names it and `bfn train --resume RUN`, which, once the server is
    back, sends every metric MLflow lacks and logs the models."""
    import mlflow

    from pipelines.errors import PipelineError
    from pipelines.training import train

    root, port = tmp_path / "mlflow", free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_mlflow(root, port)
    for key, value in {"MLFLOW_TRACKING_URI": url, "BFN_HOME": str(tmp_path / ".bfn"), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                       "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}.items():
        monkeypatch.setenv(key, value)
    mlflow.set_tracking_uri(url)
    steps, every = 200, 5
    cfg = _config(digits_shards, tmp_path, **{"training.steps": steps, "training.log_every": every,
                                               "training.checkpoint_every": 20})
    ended: dict = {}

    def run():
        try:
            ended["outcome"] = train(cfg)
        except BaseException as err:  # noqa: BLE001  (checked below)
            ended["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    client = mlflow.MlflowClient(url)
    try:
        run_id, deadline = None, time.time() + 240
        while time.time() < deadline and thread.is_alive():  # metrics of checkpoint 20 are in: mid-run
            exp = client.get_experiment_by_name(cfg.tracking.experiment)
            runs = client.search_runs([exp.experiment_id]) if exp else []
            if runs and any(m.step >= 20 for m in client.get_metric_history(runs[0].info.run_id, "loss")):
                run_id = runs[0].info.run_id
                break
            time.sleep(0.2)
        assert run_id is not None and thread.is_alive(), ended
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)
        killed = time.time()
        thread.join(timeout=240)
        assert not thread.is_alive() and time.time() - killed < 120, time.time() - killed
        error = ended.get("error")
        assert isinstance(error, PipelineError), ended
        message = str(error)
        assert "\n" not in message and run_id in message and f"`bfn train --resume {run_id}`" in message, message

        server = start_mlflow(root, port)  # the same port and store
        logged = [m.step for m in client.get_metric_history(run_id, "loss")]
        assert logged == list(range(every, logged[-1] + every, every)) and logged[-1] < steps, logged  # no hole so far
        assert client.get_run(run_id).info.status == "RUNNING"  # its end could not be recorded

        outcome = train(None, resume_run=run_id)
        assert outcome.run_id == run_id and client.get_run(run_id).info.status == "FINISHED"
        logged = [m.step for m in client.get_metric_history(run_id, "loss")]
        assert logged == list(range(every, steps + every, every)), logged  # every step once: no hole, no repeat
        assert [m.value for m in client.get_metric_history(run_id, "resumed_from_step")] == [steps]
    finally:
        stop_process_group(server)
