"""The command line for scripts: --json is exactly one JSON document on stdout, run ids are accepted
whole, as a unique prefix or as a run name, and --version answers (a SQLite store in a temp BFN_HOME)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from pipelines.errors import PipelineError
from pipelines.tracking import resolve_run_id

REPO = Path(__file__).resolve().parents[2]


def bfn(*args, home: Path):
    env = dict(os.environ, BFN_HOME=str(home))
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "bfn_platform.cli", *args], capture_output=True, text=True, env=env,
                          cwd=home.parent, timeout=120)


@pytest.fixture
def store(tmp_path, monkeypatch):
    home = tmp_path / ".bfn"
    home.mkdir()
    monkeypatch.setenv("BFN_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    exp = client.create_experiment("scripting", artifact_location=(home / "art").as_uri())
    runs = [client.create_run(exp, run_name=f"digits-{i}") for i in range(3)]
    yield home, client, [r.info.run_id for r in runs]
    mlflow.set_tracking_uri(None)


def test_run_ids_whole_by_prefix_or_by_name(store):
    _, client, ids = store
    for run_id in ids:
        assert resolve_run_id(run_id) == run_id
        short = next(n for n in range(4, 33) if sum(i.startswith(run_id[:n]) for i in ids) == 1)
        assert resolve_run_id(run_id[:short]) == run_id
    assert resolve_run_id("digits-1") == ids[1]
    with pytest.raises(PipelineError, match="unknown run ffff"):
        resolve_run_id("ffff" if not any(i.startswith("ffff") for i in ids) else "nope-nope")
    client.create_run(client.get_experiment_by_name("scripting").experiment_id, run_name="digits-1")
    with pytest.raises(PipelineError, match="ambiguous"):
        resolve_run_id("digits-1")


def test_json_output_is_one_document_and_prefixes_work_in_commands(store):
    home, _, ids = store
    for args in (["runs", "list", "--json"], ["models", "list", "--json"], ["runs", "show", ids[0][:12], "--json"],
                 ["check", str(REPO / "configs" / "digits_discretised.yaml"), "--json"]):
        res = bfn(*args, home=home)
        assert res.returncode in (0, 1), res.stderr
        if res.returncode == 0:
            json.loads(res.stdout)  # the whole of stdout, nothing before or after
        else:
            assert res.stdout == "" and res.stderr.strip().splitlines()[-1].startswith("error: ")
    shown = json.loads(bfn("runs", "show", ids[0][:12], "--json", home=home).stdout)
    assert shown["run_id"] == ids[0]
    listed = bfn("runs", "list", home=home).stdout
    assert all(i in listed for i in ids)  # whole ids, not cut to the width of a terminal


def test_version_and_missing_arguments():
    res = subprocess.run([sys.executable, "-m", "bfn_platform.cli", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("bfn ")
    res = subprocess.run([sys.executable, "-m", "bfn_platform.cli", "runs", "show"], capture_output=True, text=True)
    assert res.returncode == 2 and "RUN" in res.stderr
