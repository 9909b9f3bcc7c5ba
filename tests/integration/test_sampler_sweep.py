"""`bfn sweep` of a sampler spec on a real two-node Ray cluster and MLflow server: every sampler x step
count a trial with its own nested run, the Pareto fronts and table on the parent run, and the
recommended sampler set on the registered model version and shown by `bfn models show`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "configs" / "sweeps" / "digits_samplers.yaml"


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "bfn_platform.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.fixture(scope="module")
def registered(ray_two_nodes, mlflow_url, digits_shards, tmp_path_factory):
    """A short digits training run, registered as version 1 of `sampler-sweep-digits`."""
    import mlflow

    from pipelines.config import load_config
    from pipelines.model_store import register_version
    from pipelines.names import TAG_MODEL_ID
    from pipelines.training import train

    tmp = tmp_path_factory.mktemp("sampler-sweep")
    os.environ.update(MLFLOW_TRACKING_URI=mlflow_url, BFN_HOME=str(tmp / ".bfn"))
    mlflow.set_tracking_uri(mlflow_url)
    sets = {"data.train": digits_shards / "train" / "manifest.json", "data.val": digits_shards / "val" / "manifest.json",
            "data.test": digits_shards / "test" / "manifest.json", "training.steps": 20, "training.val_every": 20,
            "training.checkpoint_every": 20, "training.val_batches": 1, "training.num_samples": 4,
            "training.sample_steps": 4, "scaling.num_workers": 1, "storage.path": tmp / "ray_results",
            "model.width": 16, "tracking.experiment": "sampler-sweep-it"}
    outcome = train(load_config(REPO / "configs" / "digits_discretised.yaml",
                                {k: str(v) if isinstance(v, Path) else v for k, v in sets.items()}))
    client = mlflow.MlflowClient()
    model_id = client.get_run(outcome.run_id).data.tags[TAG_MODEL_ID]
    register_version("sampler-sweep-digits", outcome.run_id, model_id)
    # the LoggedModel lists its version, as the UI's logged-model page reads it
    listed = json.loads(client.get_logged_model(model_id).tags["mlflow.modelVersions"])
    assert [(e["name"], str(e["version"])) for e in listed] == [("sampler-sweep-digits", "1")]
    env = dict(os.environ, RAY_ADDRESS=ray_two_nodes.address, MLFLOW_TRACKING_URI=mlflow_url, BFN_HOME=str(tmp / ".bfn"))
    return {"client": client, "run_id": outcome.run_id, "env": env}


def test_sampler_sweep_fronts_table_and_recommendation(registered):
    client, env = registered["client"], registered["env"]
    res = _cli("sweep", str(SPEC), "--set", "model=models:/sampler-sweep-digits/1", "--set", "samplers=[bfn, ode2]",
               "--set", "steps=[2, 6]", "--set", "n_samples=16", "--set", "batch_size=16", "--set", "tolerance=1.0",
               "--json", env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    points = out["points"]
    assert sorted((p["sampler"], p["steps"]) for p in points) == [("bfn", 2), ("bfn", 6), ("ode2", 2), ("ode2", 6)]
    assert all(p["status"] == "completed" and p["nfe"] >= 1 and p["quality"] == p["fd_digits"] for p in points), points
    # every point is a nested run of the parent, with its quality and counted NFE
    parent = client.get_run(out["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["bfn.sweep.kind"] == "sampler"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 4 and all(c.info.status == "FINISHED" and "nfe" in c.data.metrics for c in children)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "results")}
    assert {"results/pareto_nfe.png", "results/pareto_time.png", "results/quality_vs_nfe.png", "results/results.csv",
            "results/sampler_sweep.json"} <= artifacts
    front = set(parent.data.tags["bfn.sweep.pareto_run_ids"].split(","))
    assert front and front <= {c.info.run_id for c in children}
    # with tolerance 1.0 (within 100% of the best) the fewest-NFE point is recommended, and set on v1
    rec = out["recommended"]
    assert rec["nfe"] == min(p["nfe"] for p in points) and out["registered"] == ["sampler-sweep-digits", "1"]
    tags = client.get_model_version("sampler-sweep-digits", "1").tags
    assert tags["bfn.recommended.sampler"] == rec["sampler"] and tags["bfn.recommended.steps"] == str(rec["steps"])
    shown = _cli("models", "show", "sampler-sweep-digits", env=env)
    assert shown.returncode == 0 and f"recommended sampler: {rec['sampler']}" in shown.stdout, shown.stdout + shown.stderr


def test_bad_sampler_sweeps_fail_before_ray(registered):
    env = registered["env"]
    for extra, needle in [(["--set", "samplers=[euler]"], "sampler must be one of"),
                          (["--set", "model=models:/no-such-model@champion"], "unknown model")]:
        res = _cli("sweep", str(SPEC), *extra, env=env)
        last = res.stderr.strip().splitlines()[-1]
        assert res.returncode == 1 and last.startswith("error: ") and needle in last, res.stderr[-2000:]
