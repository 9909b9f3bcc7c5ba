"""`bfn runs`, `bfn models` and `bfn ui` through the CLI against a real MLflow server: browsing,
registration, the promotion guard, forced promotion, rollback, two promotions racing from two
processes, and one-line errors for bad input (unknown run / model / version, no tracking server,
unreachable Ray Jobs API)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from services import free_port, stop_process_group, wait_http  # noqa: E402

SHA = "c" * 64


def cli(*args, env, timeout=300):
    return subprocess.run([sys.executable, "-m", "bfn_platform.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def ok(res):
    assert res.returncode == 0, f"exit {res.returncode}\nstdout: {res.stdout[-2000:]}\nstderr: {res.stderr[-2000:]}"
    return res


def one_line_error(res, *needles):
    assert res.returncode == 1, (res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr, res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def evaluated_run(client, experiment_id: str, bits: float, se: float = 0.01, sha: str = SHA) -> str:
    """A finished run as `bfn train` + `bfn eval` leave it: a logged model, test_bits_* and the test digest."""
    run_id = client.create_run(experiment_id).info.run_id
    for step in (5, 10, 15):
        client.log_metric(run_id, "loss", bits * 10 / step, step=step)
        client.log_metric(run_id, "val_bits_inf", bits + 1 / step, step=step)
    client.log_metric(run_id, "test_bits_inf", bits)
    client.log_metric(run_id, "test_bits_se_examples_inf", se)
    client.set_tag(run_id, "bfn.eval.test_sha256", sha)
    client.log_param(run_id, "training.steps", str(int(100 / bits)))
    with tempfile.TemporaryDirectory() as tmp:
        table = {"num_examples": 297, "dims": 64, "unit": "dim", "manifest_sha256": sha,
                 "rows": [{"steps": None, "label": "inf", "bits_per_dim": bits, "bits_se_examples": se, "nats": bits * 44.4,
                           "nats_se_examples": se * 44.4}]}
        (Path(tmp) / "likelihood.json").write_text(json.dumps(table))
        client.log_artifact(run_id, str(Path(tmp) / "likelihood.json"), "eval")
    model = client.create_logged_model(experiment_id, source_run_id=run_id)
    client.set_tag(run_id, "bfn.model_id", model.model_id)
    client.set_terminated(run_id)
    return run_id


@pytest.fixture(scope="module")
def registry(mlflow_url, tmp_path_factory):
    import mlflow

    client = mlflow.MlflowClient(mlflow_url)
    exp = client.create_experiment("registry-cli")
    runs = {bits: evaluated_run(client, exp, bits) for bits in (2.0, 1.5, 1.0, 1.49)}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_", "BFN_"))}
    env.update(MLFLOW_TRACKING_URI=mlflow_url, BFN_HOME=str(tmp_path_factory.mktemp("home")), PYTHONWARNINGS="ignore")
    return client, runs, env


def test_runs_list_show_compare(registry, tmp_path):
    _, runs, env = registry
    listed = json.loads(ok(cli("runs", "list", "--experiment", "registry-cli", "--filter", "metrics.test_bits_inf < 1.6",
                               "--sort", "metrics.test_bits_inf", "--json", env=env)).stdout)
    assert [r["run_id"] for r in listed] == [runs[1.0], runs[1.49], runs[1.5]]
    assert len(json.loads(ok(cli("runs", "list", "--max", "2", "--json", env=env)).stdout)) == 2
    shown = json.loads(ok(cli("runs", "show", runs[1.0], "--json", env=env)).stdout)
    assert shown["likelihood"]["rows"][0]["bits_per_dim"] == 1.0 and "eval/likelihood.json" in shown["artifacts"]
    assert shown["params"]["training.steps"] == "100"
    human = ok(cli("runs", "show", runs[1.0], env=env)).stdout
    assert "likelihood" in human and "44.4" in human  # the nats column of eval/likelihood.json
    png = tmp_path / "cmp.png"
    cmp = json.loads(ok(cli("runs", "compare", runs[2.0], runs[1.0], "--out", str(png), "--json", env=env)).stdout)
    assert png.read_bytes()[:4] == b"\x89PNG" and cmp["metrics"]["test_bits_inf"] == [2.0, 1.0]
    assert cmp["params"] == {"training.steps": ["50", "100"]}
    one_line_error(cli("runs", "list", "--filter", "metrics.x <", env=env), "bad --filter")
    one_line_error(cli("runs", "list", "--experiment", "nope", env=env), "unknown experiment nope")


def test_register_promote_guard_force_rollback(registry):
    client, runs, env = registry
    name = "guarded"
    v = {bits: json.loads(ok(cli("models", "register", runs[bits], "--name", name, "--json", env=env)).stdout)["version"]
         for bits in (2.0, 1.5, 1.49)}
    # each version names its run and LoggedModel, the LoggedModel lists its version, no empty tags
    for bits, version in v.items():
        mv = client.get_model_version(name, version)
        assert mv.run_id == runs[bits] and mv.source.startswith("models:/m-") and all(value for value in mv.tags.values()), mv
        model_id = mv.source.removeprefix("models:/")
        listed = json.loads(client.get_logged_model(model_id).tags["mlflow.modelVersions"])
        assert [(e["name"], str(e["version"])) for e in listed].count((name, version)) == 1
    ok(cli("models", "promote", name, v[2.0], env=env))  # no champion yet: evaluated is enough
    ok(cli("models", "promote", name, v[1.5], env=env))  # 1.5 + 0.014 < 2.0
    # 1.49 is better than 1.5, but not by more than the combined standard error: refused, both figures shown
    one_line_error(cli("models", "promote", name, v[1.49], env=env), "refused", "1.4900", "1.5000", "0.0141")
    one_line_error(cli("models", "promote", name, v[1.49], "--force", env=env), "--reason")
    ok(cli("models", "promote", name, v[1.49], "--force", "--reason", "same bits, smaller model", env=env))
    info = json.loads(ok(cli("models", "show", name, "--json", env=env)).stdout)
    assert info["aliases"] == {"champion": v[1.49], "previous-champion": v[1.5]}
    forced = next(x for x in info["versions"] if x["version"] == v[1.49])
    assert forced["tags"]["bfn.promotion_reason"] == "same bits, smaller model"
    assert forced["tags"]["bfn.promotion_forced"] == "true" and forced["tags"]["bfn.previous_champion"] == v[1.5]
    assert forced["test_sha256"] == SHA and forced["test_bits_inf"] == 1.49
    assert [(h["version"], h["previous"]) for h in info["history"]] == [(v[2.0], None), (v[1.5], v[2.0]), (v[1.49], v[1.5])]
    assert all(h["by"] and h["at"] for h in info["history"])

    rb = json.loads(ok(cli("models", "rollback", name, "--json", env=env)).stdout)
    assert (rb["from"], rb["to"]) == (v[1.49], v[1.5])
    info = json.loads(ok(cli("models", "show", name, "--json", env=env)).stdout)
    assert info["aliases"] == {"champion": v[1.5], "previous-champion": v[2.0]}  # a second rollback walks back further
    assert info["history"][-1]["action"] == "rollback"
    listed = json.loads(ok(cli("models", "list", "--json", env=env)).stdout)
    assert [m["name"] for m in listed if m["name"] == name] == [name]
    assert not [m for m in listed if m["name"].startswith("bfn-lock.")]  # no lock left behind, none listed

    # a candidate evaluated on another test set cannot be compared
    other = evaluated_run(client, client.get_experiment_by_name("registry-cli").experiment_id, 0.5, sha="d" * 64)
    v_other = json.loads(ok(cli("models", "register", other, "--name", name, "--json", env=env)).stdout)["version"]
    one_line_error(cli("models", "promote", name, v_other, env=env), "test set", "dddddddddddd", "cccccccccccc")

    # an alias moved outside bfn (as MLflow's own alias editor does) is recorded as unguarded, once
    client.set_registered_model_alias(name, "champion", v_other)
    shown = ok(cli("models", "show", name, env=env))
    assert "outside bfn" in shown.stdout and f"v{v_other}" in shown.stdout
    info = json.loads(ok(cli("models", "show", name, "--json", env=env)).stdout)
    assert info["history"][-1]["action"] == "unguarded" and info["history"][-1]["version"] == v_other
    assert [h["action"] for h in info["history"]].count("unguarded") == 1 and not info["unguarded"]


def test_two_promotions_at_once_leave_one_consistent_champion(registry):
    _, runs, env = registry
    name = "raced"
    v = {bits: json.loads(ok(cli("models", "register", runs[bits], "--name", name, "--json", env=env)).stdout)["version"]
         for bits in (2.0, 1.5, 1.0)}
    ok(cli("models", "promote", name, v[2.0], env=env))
    procs = [subprocess.Popen([sys.executable, "-m", "bfn_platform.cli", "models", "promote", name, v[b], "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for b in (1.5, 1.0)]
    results = [(p.wait(300), *p.communicate()) for p in procs]
    # Whatever the order, v(1.0) ends as champion: first -> v(1.5) is then refused; second -> both accepted.
    codes = [r[0] for r in results]
    assert codes[1] == 0, results
    assert codes[0] in (0, 1), results
    if codes[0] == 1:
        assert "refused" in results[0][2]
    info = json.loads(ok(cli("models", "show", name, "--json", env=env)).stdout)
    assert info["aliases"]["champion"] == v[1.0]
    history = info["history"]
    assert history[0]["version"] == v[2.0] and history[-1]["version"] == v[1.0]
    assert len(history) == 1 + codes.count(0)
    for before, after in zip(history, history[1:]):  # an unbroken chain: each records the one it replaced
        assert after["previous"] == before["version"]
    assert info["aliases"].get("previous-champion") == history[-1]["previous"]
    listed = json.loads(ok(cli("models", "list", "--json", env=env)).stdout)
    assert not [m for m in listed if m["name"].startswith("bfn-lock.")]


def test_bad_input_is_one_line(registry, tmp_path):
    _, runs, env = registry
    one_line_error(cli("runs", "show", "f" * 32, env=env), "unknown run")
    one_line_error(cli("models", "register", "f" * 32, "--name", "x", env=env), "unknown run")
    one_line_error(cli("models", "show", "no-such-model", env=env), "unknown model no-such-model")
    one_line_error(cli("models", "promote", "no-such-model", "1", env=env), "unknown model no-such-model")
    ok(cli("models", "register", runs[2.0], "--name", "bad-input", env=env))
    one_line_error(cli("models", "promote", "bad-input", "7", env=env), "unknown version 7")
    one_line_error(cli("models", "rollback", "bad-input", env=env), "no @previous-champion")
    dead = f"http://127.0.0.1:{free_port()}"
    one_line_error(cli("runs", "list", env=dict(env, MLFLOW_TRACKING_URI=dead)), dead, "unreachable")
    one_line_error(cli("models", "list", env=dict(env, MLFLOW_TRACKING_URI=dead)), dead, "unreachable")
    one_line_error(cli("jobs", "list", "--address", dead, env=env), dead, "unreachable")
    one_line_error(cli("submit", "--address", dead, "--", "bfn", "train", "x.yaml", env=env), dead, "unreachable")


def test_ui_serves_the_local_store(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "BFN_"))}
    env["BFN_HOME"] = str(tmp_path / ".bfn")
    port = free_port()
    log = tmp_path / "ui.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bfn_platform.cli", "ui", "--port", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 120, proc, log)
        assert f"http://127.0.0.1:{port}" in log.read_text()
        assert (tmp_path / ".bfn" / "mlflow.db").exists()
        one_line_error(cli("ui", "--port", str(port), env=env), f"port {port}")
    finally:
        stop_process_group(proc)
