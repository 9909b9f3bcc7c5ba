"""`bfn sweep` on a real two-node Ray cluster with a real MLflow server: a sweep whose driver is
killed after some trials finished, then resumed; ASHA, MLflow parent/child runs, the Optuna study
(early-stopped trials PRUNED, intermediate values keyed by training step), the results and the best
config; a multi-objective sweep and its Pareto front; and the checks that refuse a bad sweep (one
that mixes metrics among them) before any trial starts."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "configs" / "sweeps" / "digits_sigma.yaml"
PARETO = REPO / "configs" / "sweeps" / "digits_pareto.yaml"
TRIALS = 6


def _sets(shards: Path, optuna_db: Path, **extra) -> list[str]:
    sets = {
        "set.data.train": shards / "train" / "manifest.json", "set.data.val": shards / "val" / "manifest.json",
        "set.data.test": shards / "test" / "manifest.json", "set.training.steps": 40, "set.training.val_every": 10,
        "set.training.val_batches": 1, "set.training.num_samples": 4, "set.training.sample_steps": 5,
        "set.model.width": 16, "set.training.val_steps": "[null, 25]", "asha.grace_period": 10, "asha.reduction_factor": 4, "budget.trials": TRIALS,
        "budget.concurrent": 2, "search.storage": f"sqlite:///{optuna_db}", "experiment": "sweep-it",
    }
    sets.update(extra)
    return [arg for k, v in sets.items() for arg in ("--set", f"{k}={v}")]


def _env(cluster, mlflow_url, home: Path) -> dict:
    return dict(os.environ, RAY_ADDRESS=cluster.address, MLFLOW_TRACKING_URI=mlflow_url, BFN_HOME=str(home))


def _children(client, parent_id: str):
    exp = client.get_experiment_by_name("sweep-it")
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")


def _terminated_in_tune_state(folder: Path) -> set[str]:
    states = sorted(folder.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    if not states:
        return set()
    try:
        trials = [json.loads(t[0]) for t in json.loads(states[-1].read_text())["trial_data"]]
    except (json.JSONDecodeError, KeyError, IndexError):  # caught mid-write
        return set()
    return {t["trial_id"] for t in trials if t.get("status") == "TERMINATED"}


@pytest.fixture(scope="module")
def resumed_sweep(ray_two_nodes, mlflow_url, digits_shards, tmp_path_factory):
    """Start a sweep, kill its driver once two trials have finished, resume it to the end."""
    import mlflow

    tmp = tmp_path_factory.mktemp("sweep")
    env = _env(ray_two_nodes, mlflow_url, tmp / ".bfn")
    args = [sys.executable, "-m", "bfn_platform.cli", "sweep", str(SPEC), *_sets(digits_shards, tmp / "optuna.db")]
    log = (tmp / "first.log").open("w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    client = mlflow.MlflowClient(mlflow_url)
    deadline, finished_before, parent = time.time() + 600, {}, None
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(2)
            exp = client.get_experiment_by_name("sweep-it")
            if exp is None:
                continue
            parents = client.search_runs([exp.experiment_id], filter_string="tags.`bfn.sweep.parent` = 'true'")
            if not parents:
                continue
            parent = parents[0]
            done = [r for r in _children(client, parent.info.run_id) if r.info.status in ("FINISHED", "KILLED")]
            # finished = ended in MLflow and saved as ended in Tune's experiment state (written every 2 s)
            terminated = _terminated_in_tune_state(tmp / ".bfn" / "ray_results" / parent.data.tags["bfn.sweep"])
            finished = {r.data.tags["bfn.sweep.trial_id"]: r.info.end_time for r in done
                        if r.data.tags["bfn.sweep.trial_id"] in terminated}
            if len(finished) >= 2:
                finished_before = finished
                break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver dies hard, as when its machine goes away
        proc.wait(30)
        log.close()
    assert finished_before, f"two trials never finished:\n{(tmp / 'first.log').read_text()[-3000:]}"
    assert proc.returncode == -signal.SIGKILL, "the sweep ended before the test could kill it; make trials longer"
    name = parent.data.tags["bfn.sweep"]
    res = subprocess.run([*args, "--resume", name, "--json"], capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    outcome = json.loads(res.stdout.strip().splitlines()[-1])
    return {"outcome": outcome, "finished_before": finished_before, "home": tmp / ".bfn", "optuna_db": tmp / "optuna.db",
            "client": client, "parent": parent.info.run_id}


def test_resume_does_not_rerun_finished_trials(resumed_sweep):
    client, parent = resumed_sweep["client"], resumed_sweep["parent"]
    assert resumed_sweep["outcome"]["parent_run_id"] == parent
    children = _children(client, parent)
    trial_ids = [r.data.tags["bfn.sweep.trial_id"] for r in children]
    assert len(trial_ids) == len(set(trial_ids)) == TRIALS  # one run per trial, every trial ran
    end_times = {r.data.tags["bfn.sweep.trial_id"]: r.info.end_time for r in children}
    for trial_id, ended in resumed_sweep["finished_before"].items():
        assert end_times[trial_id] == ended, f"trial {trial_id} ran again after the resume"
    import pandas as pd

    table = pd.read_csv(resumed_sweep["home"] / "sweeps" / resumed_sweep["outcome"]["name"] / "results.csv")
    assert sorted(table["trial_id"]) == sorted(trial_ids)


def test_asha_parent_child_runs_and_results(resumed_sweep):
    client, parent_id = resumed_sweep["client"], resumed_sweep["parent"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["objective.metric"] == "val_bits_n25" and parent.data.params["budget.trials"] == str(TRIALS)
    children = _children(client, parent_id)
    statuses = {r.data.tags["bfn.sweep.status"] for r in children}
    assert "stopped_early" in statuses, statuses  # ASHA stopped at least one trial
    for r in children:
        assert "sampled.flow.sigma_1" in r.data.params and float(r.data.params["flow.sigma_1"]) == float(r.data.params["sampled.flow.sigma_1"])
        expected = {"completed": "FINISHED", "stopped_early": "KILLED", "failed": "FAILED"}[r.data.tags["bfn.sweep.status"]]
        assert r.info.status == expected
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_bits_inf")]
        if r.data.tags["bfn.sweep.status"] == "stopped_early":
            assert max(steps) < 40
    artifacts = {a.path for a in client.list_artifacts(parent_id, "results")}
    assert {"results/results.csv", "results/results.parquet", "results/best_config.yaml",
            "results/objective_vs_flow_sigma_1.png", "results/objective_vs_steps.png", "results/objective_curves.png"} <= artifacts
    best = resumed_sweep["outcome"]
    assert best["model_uri"] and parent.data.tags["bfn.sweep.best_run_id"] == best["best_run_id"]
    best_run = client.get_run(best["best_run_id"])
    assert best_run.data.tags["bfn.sweep.status"] == "completed"
    from pipelines.model_store import load_model

    os.environ["MLFLOW_TRACKING_URI"] = client.tracking_uri
    assert load_model(best["best_run_id"]).data_shape == (8, 8, 1)


def test_optuna_study_holds_the_trials(resumed_sweep):
    import optuna

    study = optuna.load_study(study_name=resumed_sweep["outcome"]["name"], storage=f"sqlite:///{resumed_sweep['optuna_db']}")
    assert len(study.trials) >= TRIALS
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(complete) >= 2 and all(t.value > 0 for t in complete)
    assert pruned, [t.state for t in study.trials]  # ASHA's early stops are PRUNED, not COMPLETE
    for t in complete + pruned:  # intermediate values keyed by training step (validation every 10 steps)
        steps = sorted(t.intermediate_values)
        assert steps and all(s % 10 == 0 and 0 < s <= 40 for s in steps), steps
        assert (steps[-1] == 40) == (t in complete), (t.state, steps)


def test_best_config_trains(resumed_sweep, tracked, tmp_path):
    import ray

    from pipelines.config import load_config
    from pipelines.training import train

    cfg = load_config(resumed_sweep["outcome"]["best_config"], {"training.steps": 10, "storage.path": str(tmp_path)})
    assert cfg.training.steps == 10 and cfg.data.kind == "discretised"
    outcome = train(cfg)
    assert outcome.metrics["step"] == 10
    # every trial's workers are gone: the whole cluster is free again
    deadline = time.time() + 60
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"] and time.time() < deadline:
        time.sleep(1)
    assert ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"]


def test_bad_sweeps_fail_before_any_trial(ray_two_nodes, mlflow_url, digits_shards, tmp_path):
    env = _env(ray_two_nodes, mlflow_url, tmp_path / ".bfn")
    base = [sys.executable, "-m", "bfn_platform.cli", "sweep", str(SPEC), *_sets(digits_shards, tmp_path / "o.db")]
    cases = [
        (["--set", "space.flow.sigma_1={loguniform: [0.001, 2.0]}"], "flow.sigma_1"),
        (["--set", "objective.metric=val_bits_foo"], "never reported"),
        (["--set", "space.eval_steps={choice: [null, 25]}"], "different step counts"),
        (["--set", "budget.concurrent=3", "--set", "set.scaling.num_workers=2"], "budget.concurrent"),
    ]
    for extra, needle in cases:
        res = subprocess.run([*base, *extra], capture_output=True, text=True, env=env, timeout=300)
        assert res.returncode == 1, res.stdout + res.stderr
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and needle in last and "Traceback" not in res.stderr, last
    assert not (tmp_path / ".bfn" / "ray_results").exists()  # no trial started


def test_multi_objective_sweep_reports_its_pareto_front(ray_two_nodes, mlflow_url, digits_shards, tmp_path):
    import mlflow
    import optuna
    import pandas as pd

    env = _env(ray_two_nodes, mlflow_url, tmp_path / ".bfn")
    sets = _sets(digits_shards, tmp_path / "pareto.db", **{"set.training.steps": 20, "set.training.val_steps": "[null]",
                                                          "budget.trials": 4})
    sets = [a for pair in zip(sets[::2], sets[1::2]) if not pair[1].startswith("asha.") for a in pair]  # no ASHA here
    res = subprocess.run([sys.executable, "-m", "bfn_platform.cli", "sweep", str(PARETO), *sets, "--json"],
                         capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    outcome = json.loads(res.stdout.strip().splitlines()[-1])
    client = mlflow.MlflowClient(mlflow_url)
    parent = client.get_run(outcome["parent_run_id"])
    assert parent.data.params["objective.metric"] == "val_bits_n10,val_bits_inf" and parent.data.params["search.sampler"] == "nsga2"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "results")}
    assert {"results/pareto_front.png", "results/pareto_front.csv", "results/results.csv"} <= artifacts
    table = pd.read_csv(tmp_path / ".bfn" / "sweeps" / outcome["name"] / "results.csv")
    assert len(table) == 4 and set(table["status"]) == {"completed"} and table["val_bits_inf"].notna().all()
    front = parent.data.tags["bfn.sweep.pareto_run_ids"].split(",")
    assert front and set(front) <= set(table["run_id"])
    study = optuna.load_study(study_name=outcome["name"], storage=f"sqlite:///{tmp_path / 'pareto.db'}")
    assert len(study.directions) == 2 and len(study.best_trials) == len(front)
    assert all(t.state == optuna.trial.TrialState.COMPLETE and len(t.values) == 2 for t in study.trials)
