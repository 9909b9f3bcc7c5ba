"""The local stack of real services on loopback: S3 (moto), MLflow server, Ray head + worker node.

Every process is started in its own session (setsid) and recorded, with its ports, in
$BFN_HOME/stack/state.json; `down` signals exactly those sessions (never `ray stop`, which would
kill every Ray process on the machine, other users' included). A Ray node's daemons (GCS, raylet,
dashboard, workers) stay in the session of the `ray start --block` that spawned them.

Persistence: MLflow keeps its store (SQLite) and its artifacts on local disk under
$BFN_HOME/stack/, so runs and models survive anything. moto's S3 server keeps objects in memory,
so `down` saves every bucket's objects to $BFN_HOME/stack/s3/ before stopping it and `up` loads
them back: shards and checkpoints survive `down` / `up` (not a crash or kill -9 of the server).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bfn_platform import settings as S
from pipelines import names as N
from bfn_platform.errors import BfnError
from bfn_platform.processes import alive, free_port, http_status, port_in_use, stop_group
from bfn_platform.stack_state import BUCKET, NODE_OBJECT_STORE_BYTES, REGION, SERVICE_PORT, SERVICES, Stack

# ---------------------------------------------------------------------------------------------
# the services


def _clean_env() -> dict[str, str]:
    """The services' environment: none of the caller's connection settings or cloud credentials."""
    drop = set(N.CONNECTING_ENV_VARS) | {N.ENV_AWS_PROFILE, N.ENV_AWS_SESSION_TOKEN, N.ENV_AWS_ENDPOINT_URL_S3}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    # Job entrypoints (`bfn train ...`) run under the raylet's PATH: put this environment's bin first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _command(stack: Stack, name: str) -> tuple[list[str], dict[str, str]]:
    py = sys.executable
    env = _clean_env()
    host = S.LOCAL_SERVICE_HOST
    if name == "s3":
        env.update(stack.s3_credentials(), AWS_DEFAULT_REGION=REGION)
        return [py, "-m", "moto.server", "-H", host, "-p", str(stack.ports["s3"])], env
    if name == "mlflow":
        env[S.ENV_MLFLOW_SERVER_ENABLE_JOB_EXECUTION] = "false"  # one process, not 7 job workers
        return [py, "-m", "mlflow", "server", "--host", host, "--port", str(stack.ports["mlflow"]),
                "--backend-store-uri", f"sqlite:///{stack.dir / 'mlflow.db'}",
                "--artifacts-destination", (stack.dir / "mlartifacts").as_uri(), "--serve-artifacts",
                "--workers", "1"], env
    ray = str(Path(py).with_name("ray"))
    env.update({N.ENV_RAY_AUTH_MODE: "token", N.ENV_RAY_AUTH_TOKEN_PATH: str(stack.token_file)})
    cpus = str(max(1, os.cpu_count() or 1))
    common = ["--block", "--num-cpus", cpus, "--object-store-memory", str(NODE_OBJECT_STORE_BYTES),
              "--dashboard-agent-listen-port", str(free_port()),
              # One temp dir per node: two nodes on one machine sharing one would share runtime_resources,
              # and the worker node's cleanup of a job's working_dir would pull it from under the driver.
              "--temp-dir", str(ray_temp_dir(stack, name))]
    if name == "ray-head":
        return [ray, "start", "--head", "--node-ip-address", S.LOCAL_HEAD_IP, "--port", str(stack.ports["ray"]),
                "--dashboard-host", host, "--dashboard-port", str(stack.ports["dashboard"]),
                "--ray-client-server-port", str(stack.ports["client"]), "--include-dashboard", "true", *common], env
    return [ray, "start", "--address", stack.gcs_address, "--node-ip-address", S.LOCAL_WORKER_IP, *common], env


def ray_temp_dir(stack: Stack, node: str) -> Path:
    return Path("/tmp") / f"bfn-ray-{stack.ports['ray']}-{node}"


def ray_nodes(stack: Stack) -> list[dict] | None:
    """Alive nodes from the dashboard's state API ([{'ip':..., 'state':...}]), None if it does not answer."""
    try:
        req = urllib.request.Request(stack.dashboard_url + "/api/v0/nodes?limit=100", headers=stack.auth_headers())
        with urllib.request.urlopen(req, timeout=5) as resp:
            data = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    rows = data.get("data", {}).get("result", {})
    rows = rows.get("result", []) if isinstance(rows, dict) else rows
    return [{"ip": r.get("node_ip"), "state": r.get("state"), "head": r.get("is_head_node")} for r in rows
            if r.get("state") == "ALIVE"]


def healthy(stack: Stack, name: str) -> tuple[bool, str]:
    """(ok, detail) for one service, by asking it, not just by its PID."""
    if name == "s3":
        code = http_status(stack.s3_url + "/moto-api/")
        return code is not None, stack.s3_url if code else f"{stack.s3_url} does not answer"
    if name == "mlflow":
        code = http_status(stack.mlflow_url + "/health")
        return code == 200, stack.mlflow_url if code == 200 else f"{stack.mlflow_url}/health: {code or 'no answer'}"
    nodes = ray_nodes(stack)
    if nodes is None:
        return False, f"dashboard {stack.dashboard_url} does not answer"
    bad = [n["ip"] for n in nodes if not str(n["ip"]).startswith("127.")]
    if bad:
        return False, f"nodes on non-loopback addresses {bad}"
    ip = S.LOCAL_HEAD_IP if name == "ray-head" else S.LOCAL_WORKER_IP
    if any(n["ip"] == ip for n in nodes):
        detail = f"node {ip}" + (f", GCS {stack.gcs_address}, dashboard {stack.dashboard_url}" if name == "ray-head" else "")
        return True, detail
    return False, f"no alive node on {ip}"


def _wait_healthy(stack: Stack, name: str, pid: int, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    detail = ""
    while time.monotonic() < deadline:
        ok, detail = healthy(stack, name)
        if ok:
            return
        if not alive(pid):
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise BfnError(f"{name} exited while starting (log {log}): {tail.strip().splitlines()[-1] if tail.strip() else ''}")
        time.sleep(0.5)
    raise BfnError(f"{name} did not become healthy within {timeout:.0f} s ({detail}); see {log}")


def _start(stack: Stack, name: str) -> None:
    cmd, env = _command(stack, name)
    log = stack.dir / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=stack.dir, start_new_session=True)
    port_key = SERVICE_PORT[name]
    stack.services[name] = {"pid": proc.pid, "port": stack.ports[port_key] if port_key else None, "log": str(log),
                            "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    stack.save()  # recorded before waiting: a failed start can still be stopped by `down`
    _wait_healthy(stack, name, proc.pid, 180 if name.startswith("ray") else 120, log)


def _service_ports(stack: Stack, name: str) -> list[tuple[str, int]]:
    if name == "ray-head":
        return [(k, stack.ports[k]) for k in ("ray", "dashboard", "client")]
    key = SERVICE_PORT[name]
    return [(key, stack.ports[key])] if key else []


def up(home: Path, ports: dict[str, int] | None = None, log=print) -> Stack:
    """Start whatever of the stack is not running (idempotent) and write the env file."""
    stack = Stack.load(home)
    running = stack.running()
    if ports:
        changed = {k: v for k, v in ports.items() if stack.ports.get(k) != v}
        if changed and running:
            raise BfnError(f"the stack in {stack.home} is running with ports {stack.ports}: `bfn stack down` before "
                           f"changing {', '.join(changed)}")
        stack.ports.update(ports)
    stack.dir.mkdir(parents=True, exist_ok=True)
    stack.ray_token()
    started: list[str] = []
    try:
        for name in SERVICES:
            rec = stack.services.get(name, {})
            if name in running:
                ok, detail = healthy(stack, name)
                if not ok:
                    _wait_healthy(stack, name, rec["pid"], 60, Path(rec.get("log", "")))
                log(f"{name}: already running (pid {rec['pid']})")
                continue
            host = S.LOCAL_HEAD_IP if name == "ray-head" else S.LOCAL_SERVICE_HOST
            for key, port in _service_ports(stack, name):
                for h in {host, S.LOCAL_SERVICE_HOST}:
                    if port_in_use(h, port):
                        raise BfnError(f"port {port} ({name} {key}) on {h} is in use by another process: free it or "
                                       f"choose another with `bfn stack up --ports {key}=N`")
            log(f"{name}: starting")
            _start(stack, name)
            started.append(name)
            if name == "s3":
                from bfn_platform.stack_buckets import restore_buckets

                restored = restore_buckets(stack)
                log(f"s3: bucket {BUCKET} ready" + (f", {restored} objects restored from {stack.snapshot_dir}" if restored else ""))
    except BaseException:
        for name in reversed(started):  # leave nothing half-started behind
            stop_group(stack.services[name]["pid"])
            stack.services.pop(name, None)
        stack.save()
        raise
    stack.save()
    stack.write_env_file()
    return stack


def down(home: Path, log=print) -> Stack:
    """Save the S3 buckets to disk, then stop exactly the processes `up` started (reverse order)."""
    stack = Stack.load(home)
    if not stack.services:
        log(f"no stack recorded in {stack.dir}: nothing to stop")
        return stack
    if "s3" in stack.running():
        from bfn_platform.stack_buckets import save_buckets

        n = save_buckets(stack)
        log(f"s3: saved {n} objects to {stack.snapshot_dir}")
    for name in reversed(SERVICES):
        rec = stack.services.get(name)
        if rec is None:
            continue
        if alive(rec.get("pid")):
            log(f"{name}: stopping (pid {rec['pid']})")
            stop_group(rec["pid"], grace=10 if name.startswith("ray") else 15)
        stack.services.pop(name)
        stack.save()
    for name in SERVICES:
        if name.startswith("ray"):
            shutil.rmtree(ray_temp_dir(stack, name), ignore_errors=True)  # Ray's session folders of this stack only
    return stack


def status(home: Path) -> list[dict]:
    stack = Stack.load(home)
    rows = []
    for name in SERVICES:
        rec = stack.services.get(name)
        if rec is None:
            rows.append({"service": name, "state": "stopped", "pid": None, "detail": "not started"})
            continue
        if not alive(rec.get("pid")):
            rows.append({"service": name, "state": "dead", "pid": rec.get("pid"),
                         "detail": f"recorded but not running: `bfn stack up` restarts it (log {rec.get('log')})"})
            continue
        ok, detail = healthy(stack, name)
        rows.append({"service": name, "state": "healthy" if ok else "unhealthy", "pid": rec["pid"], "detail": detail})
    return rows


