"""The README's platform path end to end, through the `bfn` CLI in subprocesses, on real services:
`bfn stack up` (Ray head + worker on 127.0.0.1 with token auth, MLflow server, S3 server), digits
shards to the stack's S3, two training runs submitted as Ray jobs, evaluation, registration, a
refused and an accepted promotion, sampling from models:/NAME@champion, run listing, `down` / `up`
keeping the shards and the run's artifacts, and `down` leaving no process or port behind.

Security and reliability on the way: every listening socket of the stack (its jobs' included) is on
loopback; the S3 secret appears in no log, job record, MLflow store or process command line; the S3
server refuses wrong keys; a kill -9 of the S3 server loses no acknowledged object."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from services import free_port  # noqa: E402

TRAIN = ["training.checkpoint_every=1000", "training.val_every=1000", "training.log_every=5", "training.val_batches=1",
         "training.num_samples=4", "training.sample_steps=5", "model.width=16", "scaling.num_workers=2",
         "tracking.experiment=e2e"]


def cli(*args, env, timeout=600):
    return subprocess.run([sys.executable, "-m", "bfn_platform.cli", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=timeout)


def ok(res):
    assert res.returncode == 0, f"exit {res.returncode}\nstdout: {res.stdout[-3000:]}\nstderr: {res.stderr[-3000:]}"
    return res


def one_line_error(res, *needles):
    assert res.returncode == 1, (res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in res.stderr, res.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            env[name] = shlex.split(value)[0] if value else ""
    return env


def pids_alive(pids) -> list[int]:
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def session_pids(sids) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) in sids and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def listening_sockets(sids) -> list[tuple[str, int, str]]:
    """(address, port, process) of every listening TCP socket and bound UDP socket of the sessions."""
    import psutil

    pids = set(session_pids(sids))
    out = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.pid in pids and (conn.status == psutil.CONN_LISTEN or (conn.type == 2 and not conn.raddr)):
            try:
                name = " ".join(psutil.Process(conn.pid).cmdline())[:80]
            except psutil.Error:
                name = "?"
            out.append((conn.laddr.ip, conn.laddr.port, name))
    return out


def is_loopback(address: str) -> bool:
    import ipaddress

    ip = ipaddress.ip_address(address)
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def files_containing(secret: str, roots, skip=()) -> list[str]:
    """Every file under `roots` whose bytes contain `secret` (plain, or as a process's environment shows it)."""
    needle, hits = secret.encode(), []
    for root in roots:
        for path in Path(root).rglob("*"):
            if path.is_file() and not path.is_symlink() and path not in skip:
                try:
                    if needle in path.read_bytes():
                        hits.append(str(path))
                except OSError:
                    pass
    return hits


def command_lines_containing(secret: str) -> list[int]:
    hits = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if secret.encode() in (entry / "cmdline").read_bytes():
                    hits.append(int(entry.name))
            except OSError:
                pass
    return hits


def port_free(port: int) -> bool:
    from bfn_platform.processes import port_in_use

    return not any(port_in_use(host, port) for host in ("127.0.0.1", "127.0.0.2"))


def test_platform_end_to_end(tmp_path):
    home = tmp_path / "home"
    ports = {"ray": free_port(), "dashboard": free_port(), "client": free_port(), "mlflow": free_port(), "s3": free_port()}
    port_arg = ",".join(f"{k}={v}" for k, v in ports.items())
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "RAY_", "BFN_"))}
    base.update(BFN_HOME=str(home), PYTHONWARNINGS="ignore", AWS_CONFIG_FILE=os.devnull,
                AWS_SHARED_CREDENTIALS_FILE=os.devnull, BFN_USER="e2e-tester")
    sids: set[int] = set()
    try:
        up = json.loads(ok(cli("stack", "up", "--ports", port_arg, "--json", env=base)).stdout)
        assert [s["state"] for s in up["services"]] == ["healthy"] * 4, up
        sids |= {s["pid"] for s in up["services"]}
        again = json.loads(ok(cli("stack", "up", "--ports", port_arg, "--json", env=base)).stdout)  # idempotent
        assert {s["pid"] for s in again["services"]} == sids
        env = dict(base, **read_env_file(home / "stack.env"))
        assert env["RAY_AUTH_MODE"] == "token" and env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{ports['mlflow']}"
        creds_json = home / "stack" / "s3_credentials.json"
        secret = json.loads(creds_json.read_text())["AWS_SECRET_ACCESS_KEY"]
        assert "AWS_SECRET_ACCESS_KEY" not in env and secret not in (home / "stack.env").read_text()
        assert oct(Path(env["AWS_SHARED_CREDENTIALS_FILE"]).stat().st_mode & 0o777) == "0o600"

        # every Ray node on loopback (asked through Ray itself, with the stack's token)
        probe = ("import ray; ray.init(); print([n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']])")
        nodes = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
        addrs = eval(nodes.stdout.strip().splitlines()[-1])
        assert sorted(addrs) == ["127.0.0.1", "127.0.0.1"], nodes.stderr[-2000:]

        # the S3 server checks credentials
        import boto3
        from botocore.exceptions import ClientError

        for key_id, key in ((json.loads(creds_json.read_text())["AWS_ACCESS_KEY_ID"], "wrong-secret"), ("nobody", secret)):
            intruder = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                                    aws_access_key_id=key_id, aws_secret_access_key=key)
            with pytest.raises(ClientError) as refused_access:
                intruder.list_objects_v2(Bucket="bfn")
            assert refused_access.value.response["Error"]["Code"] in ("SignatureDoesNotMatch", "InvalidAccessKeyId")

        data = "s3://bfn/data/digits"
        for split in ("train", "val", "test"):
            ok(cli("data", "shard", "digits", "--split", split, "--out", data, "--shard-size", "200", env=env))
        manifests = [f"data.{s}={data}/{s}/manifest.json" for s in ("train", "val", "test")]

        runs = []
        for steps in (4, 80):  # a barely trained and a better trained model
            sets = [a for kv in manifests + TRAIN + [f"training.steps={steps}"] for a in ("--set", kv)]
            res = ok(cli("submit", "--name", f"e2e-{steps}", "--", "bfn", "train", "configs/digits_discretised.yaml",
                         *sets, "--json", env=env))
            job_id = res.stdout.strip().splitlines()[0]
            status = json.loads(ok(cli("jobs", "status", job_id, "--json", env=env)).stdout)
            assert status["status"] == "SUCCEEDED", status
            logs = ok(cli("jobs", "logs", job_id, env=env)).stdout
            runs.append(json.loads([ln for ln in logs.splitlines() if ln.startswith("{\"run_id\"")][-1])["run_id"])
            assert secret not in res.stdout + res.stderr + logs  # credentials are passed, never printed
        jobs = json.loads(ok(cli("jobs", "list", "--json", env=env)).stdout)
        assert {j["status"] for j in jobs} == {"SUCCEEDED"} and len(jobs) == 2

        # no credential in a job record, a log of the stack or its jobs, MLflow's store or a command line
        from ray.job_submission import JobSubmissionClient

        token = (home / "stack" / "ray_auth_token").read_text().strip()
        api = JobSubmissionClient(env["BFN_RAY_DASHBOARD"], headers={"Authorization": f"Bearer {token}"})
        records = json.dumps([j.model_dump() for j in api.list_jobs()], default=str)
        assert "AWS_SHARED_CREDENTIALS_FILE" in records and secret not in records
        credential_files = {creds_json, home / "stack" / "aws_credentials", *(home / "credentials").glob("*")}
        ray_dirs = list(Path("/tmp").glob(f"bfn-ray-{ports['ray']}-*"))
        assert ray_dirs and files_containing(secret, [home, *ray_dirs], skip=credential_files) == []
        assert command_lines_containing(secret) == []
        sockets = listening_sockets(sids)
        assert len(sockets) >= 10 and [s for s in sockets if not is_loopback(s[0])] == [], sockets

        for run_id in runs:
            ok(cli("eval", run_id, "--steps", "inf", "--repeats", "2", env=env))
        versions = [json.loads(ok(cli("models", "register", r, "--name", "digits-e2e", "--json", env=env)).stdout)["version"]
                    for r in runs]
        weak, strong = versions
        ok(cli("models", "promote", "digits-e2e", strong, env=env))
        refused = cli("models", "promote", "digits-e2e", weak, env=env)
        one_line_error(refused, "refused", f"candidate v{weak}", f"champion v{strong}")
        shown = json.loads(ok(cli("models", "show", "digits-e2e", "--json", env=env)).stdout)
        assert shown["aliases"] == {"champion": strong}
        assert shown["history"][-1]["by"] == "e2e-tester" and len(shown["history"]) == 1

        # what a person finds in the MLflow UI (headless Chromium): the champion alias on the model's
        # page, and the likelihood table rendered as a table on the run's artifact page
        from browser import browser, page_text

        ui = env["MLFLOW_TRACKING_URI"]
        strong_run = shown["versions"][int(strong) - 1]["run_id"]
        import mlflow

        experiment = mlflow.MlflowClient(ui).get_run(strong_run).info.experiment_id
        with browser() as page:
            model_page = page_text(page, f"{ui}/#/models/digits-e2e", "@ champion", f"Version {strong}")
            assert "@ champion" in model_page and f"Version {strong}" in model_page, model_page[:2000]
            table_page = page_text(page, f"{ui}/#/experiments/{experiment}/runs/{strong_run}/artifacts/eval/likelihood_table.json",
                                   "bits_per_dim", "bits_se_examples")
            assert "bits_per_dim" in table_page and "inf" in table_page, table_page[:2000]

        out = tmp_path / "samples"
        ok(cli("sample", "models:/digits-e2e@champion", "--n", "4", "--steps", "5", "--out", str(out), env=env))
        assert (tmp_path / "samples.png").read_bytes()[:4] == b"\x89PNG"
        ok(cli("sample", "models:/digits-e2e@champion", "--n", "4", "--sampler", "ode2", "--steps", "4", "--out",
               str(tmp_path / "fast"), env=env))
        assert np.load(tmp_path / "fast.npy").shape == (4, 8, 8, 1)
        quality = json.loads(ok(cli("eval", runs[1], "--quality", "--sampler", "bfn,ode2", "--steps", "3,6",
                                    "--n", "32", "--json", env=env)).stdout)
        assert [(p["sampler"], p["steps"], p["nfe"]) for p in quality["points"]] == [
            ("bfn", 3, 4), ("bfn", 6, 7), ("ode2", 3, 4), ("ode2", 6, 7)]
        assert all(p["headline"] == "fd_digits" and p["metrics"]["fd_digits"] > 0 for p in quality["points"])
        listed = json.loads(ok(cli("runs", "list", "--experiment", "e2e", "--json", env=env)).stdout)
        assert {r["run_id"] for r in listed} == set(runs)
        assert all("test_bits_inf" in r["metrics"] for r in listed)

        # kill -9 of the S3 server loses no acknowledged object; status says where they are
        s3_env_keys = json.loads(creds_json.read_text())
        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id=s3_env_keys["AWS_ACCESS_KEY_ID"], aws_secret_access_key=secret)

        def objects():
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket="bfn")
            return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}

        stored = objects()
        assert len(stored) > 20
        s3_pid = up["services"][0]["pid"]
        os.killpg(s3_pid, 9)
        dead = cli("stack", "status", "--json", env=base)
        assert dead.returncode == 1
        s3_row = json.loads(dead.stdout)[0]
        assert s3_row["state"] == "dead" and f"{len(stored)} objects" in s3_row["detail"], s3_row
        restarted = json.loads(ok(cli("stack", "up", "--ports", port_arg, "--json", env=base)).stdout)
        sids |= {s["pid"] for s in restarted["services"]}
        assert objects() == stored

        # down / up: the shards (S3) and the run's artifacts (MLflow) survive
        before = json.loads(ok(cli("runs", "show", runs[1], "--json", env=env)).stdout)["artifacts"]
        ok(cli("stack", "down", env=base))
        assert not session_pids(sids)
        sids.clear()
        up = json.loads(ok(cli("stack", "up", "--ports", port_arg, "--json", env=base)).stdout)
        sids |= {s["pid"] for s in up["services"]}
        ok(cli("data", "inspect", f"{data}/test", "--verify", "--picture", str(tmp_path / "inspect.png"), env=env))
        after = json.loads(ok(cli("runs", "show", runs[1], "--json", env=env)).stdout)
        assert after["artifacts"] == before and "eval/likelihood.json" in after["artifacts"]
        assert {"eval/quality.json", "eval/quality.png", "eval/quality_table.json"} <= set(after["artifacts"])
        assert after["likelihood"]["rows"][0]["label"] == "inf"
        ok(cli("sample", "models:/digits-e2e@champion", "--n", "2", "--steps", "3", "--out", str(tmp_path / "s2"), env=env))

        # bad input: one line, exit 1
        dead = f"http://127.0.0.1:{free_port()}"
        one_line_error(cli("submit", "--address", dead, "--", "bfn", "quickstart", env=env), dead, "unreachable")
        one_line_error(cli("jobs", "status", "no-such-job", env=env), "unknown job")
        one_line_error(cli("runs", "show", "0" * 32, env=env), "unknown run")
        one_line_error(cli("models", "promote", "digits-e2e", "99", env=env), "unknown version 99")
    finally:
        down = cli("stack", "down", env=base)
        assert down.returncode == 0, down.stderr
    assert not session_pids(sids), "processes of the stack are still running"
    for name, port in ports.items():
        assert port_free(port), f"{name} port {port} still bound after `bfn stack down`"
    status = json.loads(ok(cli("stack", "status", "--json", env=base)).stdout)
    assert {s["state"] for s in status} == {"stopped"}
