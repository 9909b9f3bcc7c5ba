"""Training on a real two-node Ray cluster, tracked by a real MLflow server: the run's record,
recovery from a worker failure, evaluation and sampling through the CLI, and bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny import tiny_digits_config

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "digits_discretised.yaml"


def _config(shards: Path, tmp: Path, **overrides):
    return tiny_digits_config(shards, tmp, **overrides)


def _cli(*args, env_extra=None, cwd=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "bfn_platform.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def trained_run(ray_two_nodes, mlflow_url, digits_shards, tmp_path_factory):
    """One short 2-worker run, shared by the tests that inspect its record."""
    import mlflow

    from pipelines.training import train

    tmp = tmp_path_factory.mktemp("run")
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_url
    os.environ["BFN_HOME"] = str(tmp / ".bfn")
    mlflow.set_tracking_uri(mlflow_url)
    outcome = train(_config(digits_shards, tmp))
    return outcome


def test_two_worker_run_is_fully_tracked(trained_run, mlflow_url):
    import mlflow
    import numpy as np

    from pipelines.model_store import load_model

    client = mlflow.MlflowClient(mlflow_url)
    run = client.get_run(trained_run.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.network"] == "unet" and params["model.width"] == "16" and params["scaling.num_workers"] == "2"
    assert run.data.tags["bfn.data.train.sha256"] and run.data.tags["bfn.kind"] == "discretised"
    # what the MLflow UI shows as Created by, Source, the run name and Datasets used
    tags = run.data.tags
    assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
    assert tags["mlflow.runName"] == f"integration-{run.info.run_id[:8]}"
    if tags.get("mlflow.source.git.commit"):
        assert "@" not in tags.get("mlflow.source.git.repoURL", "")
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "val", "test"}
    for split, dataset in inputs.items():
        assert dataset.name == f"digits-{split}" and run.data.tags[f"bfn.data.{split}.sha256"].startswith(dataset.digest)
        assert json.loads(dataset.source)["uri"].endswith(f"{split}/manifest.json")
    for key in ("loss", "grad_norm", "lr", "samples_per_second", "val_bits_inf"):
        assert key in run.data.metrics, key
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert steps == [5, 10, 15, 20, 25, 30]
    # sample grids as images keyed by step (the UI's image slider), one per validation
    pictures = [a.path for a in client.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")]
    assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in pictures) == [15, 30], pictures
    loaded = load_model(trained_run.run_id)
    assert loaded.data_shape == (8, 8, 1)
    pyfunc = mlflow.pyfunc.load_model(trained_run.model_uri)
    samples = np.asarray(pyfunc.predict({"n": [3], "steps": [4], "seed": [0]}))
    assert samples.shape == (3, 8, 8, 1) and np.abs(samples).max() <= 1.0
    fast = np.asarray(pyfunc.predict({"n": [2], "steps": [3], "seed": [0], "sampler": ["ode2"], "final": ["mode"]}))
    assert fast.shape == (2, 8, 8, 1) and np.abs(fast).max() <= 1.0


def _train_worker_pids() -> set[int]:
    """Processes of Ray Train workers on this machine: Ray titles them ray::RayTrainWorker (Linux /proc)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"RayTrainWorker" in (entry / "cmdline").read_bytes():
                pids.add(int(entry.name))
        except OSError:  # gone meanwhile
            pass
    return pids


def test_a_killed_worker_is_replaced_and_resumes_from_the_last_checkpoint(ray_two_nodes, tracked, digits_shards,
                                                                          tmp_path):
    """SIGKILL of a Ray Train worker's process mid-run (no hook in the training code): Ray Train replaces
    the worker group, training continues from the last stored checkpoint, and MLflow keeps one history."""
    import signal
    import threading
    import time
    import uuid

    import mlflow

    from pipelines.training import train

    experiment = f"killed-worker-{uuid.uuid4().hex[:8]}"
    cfg = _config(digits_shards, tmp_path, **{"training.steps": 200, "training.val_every": 200,
                                               "tracking.experiment": experiment})
    outcome, failure = {}, []

    def run():
        try:
            outcome["value"] = train(cfg)
        except BaseException as err:  # noqa: BLE001  (reported by the assertion below)
            failure.append(err)

    thread = threading.Thread(target=run)
    earlier = _train_worker_pids()  # idle ones left by earlier tests are not this run's
    thread.start()
    client = mlflow.MlflowClient()
    deadline, killed = time.time() + 300, None
    while time.time() < deadline and killed is None and thread.is_alive():
        runs = client.search_runs([e.experiment_id for e in client.search_experiments(filter_string=f"name = '{experiment}'")])
        # metrics reach MLflow with the checkpoint that covers them: step 10's loss means checkpoint 10 is stored
        if runs and any(m.step >= 10 for m in client.get_metric_history(runs[0].info.run_id, "loss")):
            pids = sorted(_train_worker_pids() - earlier)
            if pids:
                for pid in pids:  # the whole worker group: a restart from the checkpoint is certain
                    os.kill(pid, signal.SIGKILL)
                killed = pids
        time.sleep(0.2)
    thread.join(timeout=600)
    assert killed is not None, "no Ray Train worker process was found to kill"
    assert not failure, failure
    run_id = outcome["value"].run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    resumed = [m.value for m in client.get_metric_history(run_id, "resumed_from_step")]
    assert len(resumed) == 1 and resumed[0] >= 10 and resumed[0] % 10 == 0, (resumed, killed)  # a checkpoint, not 0
    steps = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert steps == sorted(set(steps)) == list(range(5, 205, 5))  # one history: no step logged twice, none missing


def test_eval_and_sample_through_the_cli(trained_run, mlflow_url, tmp_path):
    import mlflow

    env = {"MLFLOW_TRACKING_URI": mlflow_url}
    res = _cli("eval", trained_run.run_id, "--steps", "10,inf", "--json", env_extra=env)
    assert res.returncode == 0, res.stderr
    table = json.loads(res.stdout.strip().splitlines()[-1])
    assert [r["label"] for r in table["rows"]] == ["n10", "inf"] and table["num_examples"] == 297
    client = mlflow.MlflowClient(mlflow_url)
    run = client.get_run(trained_run.run_id)
    assert {"test_bits_n10", "test_bits_inf", "test_bits_se_examples_inf"} <= set(run.data.metrics)
    assert {a.path for a in client.list_artifacts(trained_run.run_id, "eval")} == {
        "eval/likelihood.json", "eval/likelihood.parquet", "eval/likelihood.png", "eval/likelihood_table.json"}
    # the table as the UI reads it (an MLflow table), and the metrics on the run's LoggedModel
    logged = json.loads(client.get_run(trained_run.run_id).data.tags["mlflow.loggedArtifacts"])
    assert {"path": "eval/likelihood_table.json", "type": "table"} in logged
    model = client.get_logged_model(run.data.tags["bfn.model_id"])
    assert {"test_bits_inf", "test_bits_n10"} <= {m.key for m in model.metrics or []}
    out = tmp_path / "samples"
    res = _cli("sample", trained_run.run_id, "--n", "4", "--steps", "5", "--out", str(out), env_extra=env)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "samples.npy").exists() and (tmp_path / "samples.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_on_ray_workers_counts_every_example_once(trained_run, tracked):
    """Three Ray tasks (over both nodes) each evaluate a share of the 297 test digits: every example counts
    once, progress adds up to the total, and the table agrees with a single process's."""
    from pipelines.evaluation import evaluate

    started, done = [], []
    parallel = evaluate(trained_run.run_id, steps=[10, None], repeats=2, workers=3, device="cpu", log=False,
                        on_start=started.append, on_progress=done.append)
    single = evaluate(trained_run.run_id, steps=[10, None], repeats=2, device="cpu", log=False)
    assert started == [297] and sum(done) == 297
    assert parallel.table.num_examples == single.table.num_examples == 297 and parallel.table.n_repeats == 2
    for a, b in zip(parallel.table.rows, single.table.rows):
        assert abs(a.nats - b.nats) < 5 * (a.nats_se_examples + b.nats_se_examples), (a, b)
        assert a.nats_se_mc is not None and 0 < a.nats_se_mc < a.nats_se_examples


def _one_line_error(res, *needles):
    assert res.returncode == 1, (res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and "Traceback" not in res.stderr, res.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def test_bad_config_missing_manifest_unreachable_server(mlflow_url, digits_shards, tmp_path):
    import mlflow

    sys.path.insert(0, str(REPO / "tests"))
    from services import free_port

    env = {"MLFLOW_TRACKING_URI": mlflow_url, "BFN_HOME": str(tmp_path / ".bfn")}
    base = ["train", str(CONFIG), "--set", f"data.train={digits_shards / 'train' / 'manifest.json'}",
            "--set", f"data.val={digits_shards / 'val' / 'manifest.json'}",
            "--set", f"data.test={digits_shards / 'test' / 'manifest.json'}", "--set", "tracking.experiment=bad-input"]
    _one_line_error(_cli(*base, "--set", "flow.sigma_1=2", env_extra=env), "flow.sigma_1")
    _one_line_error(_cli(*base, "--set", "data.train=/nowhere/manifest.json", env_extra=env), "/nowhere/manifest.json")
    dead = f"http://127.0.0.1:{free_port()}"
    _one_line_error(_cli(*base, env_extra=dict(env, MLFLOW_TRACKING_URI=dead)), dead, "unreachable")
    # nothing was started or recorded for any of them
    assert mlflow.MlflowClient(mlflow_url).get_experiment_by_name("bad-input") is None
    assert not (tmp_path / ".bfn" / "ray_results").exists()


def test_corrupted_checkpoint_is_named(trained_run, tmp_path):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained_run.checkpoint_path, ckpt)
    data = (ckpt / "ema.pt").read_bytes()
    (ckpt / "ema.pt").write_bytes(data[: len(data) // 2])
    res = _cli("sample", str(ckpt), "--n", "2", "--steps", "2", "--out", str(tmp_path / "s"))
    _one_line_error(res, "checkpoint file", "ema.pt", "corrupt")
    assert not (tmp_path / "s.npy").exists()


def test_sigterm_marks_the_run_killed(ray_two_nodes, mlflow_url, digits_shards, tmp_path):
    """A scheduler's SIGTERM ends `bfn train` like Ctrl-C: the run is KILLED (not left RUNNING) and says why."""
    import signal
    import time

    import mlflow

    sets = {"data.train": digits_shards / "train" / "manifest.json", "data.val": digits_shards / "val" / "manifest.json",
            "data.test": digits_shards / "test" / "manifest.json", "training.steps": 100000, "training.log_every": 5, "training.val_every": 100000,
            "training.checkpoint_every": 100000, "scaling.num_workers": 1, "storage.path": tmp_path / "ray_results",
            "model.width": 16, "tracking.experiment": "sigterm-it"}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    env = dict(os.environ, RAY_ADDRESS=ray_two_nodes.address, MLFLOW_TRACKING_URI=mlflow_url, BFN_HOME=str(tmp_path / ".bfn"))
    proc = subprocess.Popen([sys.executable, "-m", "bfn_platform.cli", "train", str(CONFIG), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = mlflow.MlflowClient(mlflow_url)
    run, deadline = None, time.time() + 240
    try:
        while run is None and time.time() < deadline and proc.poll() is None:
            exp = client.get_experiment_by_name("sigterm-it")
            runs = client.search_runs([exp.experiment_id]) if exp else []
            run = runs[0] if runs and runs[0].info.status == "RUNNING" else None
            time.sleep(1)
        assert run is not None, proc.communicate(timeout=5)
        time.sleep(20)  # Ray Train starts its worker and trains: the signal comes mid-run
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    final = client.get_run(run.info.run_id)
    assert proc.returncode != 0 and final.info.status == "KILLED", (final.info.status, err[-2000:])
    assert "SIGTERM" in final.data.tags.get("bfn.error", ""), final.data.tags
