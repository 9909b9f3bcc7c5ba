"""Run lineage and MLflow conventions without a server: context tags, dataset inputs, system metrics,
registration linking the LoggedModel (a SQLite store in a temporary folder)."""
import json
import time
from types import SimpleNamespace

import mlflow
import pytest

from pipelines.lineage import _without_credentials, context_tags, dataset_inputs
from pipelines.tracking import system_metrics


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    yield mlflow.MlflowClient()
    mlflow.set_tracking_uri(None)


def test_context_tags_name_the_user_source_and_code(monkeypatch):
    monkeypatch.setenv("BFN_USER", "ada")
    tags = context_tags("bfn train configs/digits_discretised.yaml")
    assert tags["mlflow.user"] == "ada" and tags["mlflow.source.name"].startswith("bfn train")
    assert tags["mlflow.source.type"] == "LOCAL"
    monkeypatch.setenv("RAY_JOB_ID", "02000000")
    assert context_tags()["mlflow.source.type"] == "JOB"
    assert _without_credentials("https://user:ghp_secret@github.com/o/r.git") == "https://github.com/o/r.git"
    assert _without_credentials("git@github.com:o/r.git") == "git@github.com:o/r.git"


def test_dataset_inputs_are_found_the_way_the_ui_reads_them(client, tmp_path):
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    manifests = {s: SimpleNamespace(dataset="digits") for s in ("train", "test")}
    digests = {"train": "a" * 64, "test": "b" * 64}
    urls = {"train": str(tmp_path / "train" / "manifest.json"), "test": "s3://bucket/digits/test/manifest.json"}
    client.log_inputs(run_id, datasets=dataset_inputs(manifests, digests, urls))
    found = {i.tags[0].value: i.dataset for i in client.get_run(run_id).inputs.dataset_inputs}
    assert found["train"].name == "digits-train" and found["train"].digest == "a" * 36
    assert json.loads(found["test"].source)["uri"] == urls["test"] and found["test"].source_type == "s3"


def test_system_metrics_are_logged_while_the_block_runs(client):
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    with system_metrics(run_id, "on", on_gpu=False, interval_s=0.2):
        time.sleep(1.0)
    names = set(client.get_run(run_id).data.metrics)
    assert any(n.startswith("system/cpu_utilization") for n in names), names
    other = client.create_run(client.create_experiment("f")).info.run_id
    with system_metrics(other, "auto", on_gpu=False, interval_s=0.2):  # auto: only GPU runs
        time.sleep(0.5)
    assert not client.get_run(other).data.metrics


def test_a_registered_version_and_its_logged_model_name_each_other(client):
    from pipelines.model_store import register_version

    exp = client.create_experiment("e")
    run_id = client.create_run(exp).info.run_id
    model_id = client.create_logged_model(exp, source_run_id=run_id).model_id
    v1 = register_version("m", run_id, model_id, {"bfn.run_id": run_id, "bfn.eval.test_sha256": ""})
    v2 = register_version("m", run_id, model_id)
    assert (str(v1.version), str(v2.version)) == ("1", "2") and v1.run_id == run_id
    assert client.get_model_version("m", "1").source == f"models:/{model_id}"
    assert dict(client.get_model_version("m", "1").tags) == {"bfn.run_id": run_id}  # no empty tags
    listed = json.loads(client.get_logged_model(model_id).tags["mlflow.modelVersions"])
    assert listed == [{"name": "m", "version": "1"}, {"name": "m", "version": "2"}]
