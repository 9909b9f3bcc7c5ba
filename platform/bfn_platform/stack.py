"""The local stack of real services on loopback: S3, MLflow server, Ray head + worker node.

Every process is started in its own session (setsid) and recorded, with its ports, in
$BFN_HOME/stack/state.json; `down` signals exactly those sessions (never `ray stop`, which would
kill every Ray process on the machine, other users' included). A Ray node's daemons (GCS, raylet,
dashboard, workers) stay in the session of the process that started the node.

Every socket is on loopback: both Ray nodes run on 127.0.0.1 (bfn_platform.ray_node says why), the
other services bind 127.0.0.1. Credentials live in 0600 files under $BFN_HOME/stack/, never in an
environment value: the Ray nodes get the path of the S3 credentials file as their identity.

Persistence: MLflow keeps its store (SQLite) and its artifacts on local disk under
$BFN_HOME/stack/, and the S3 server (bfn_platform.s3_server) writes every acknowledged object
through to $BFN_HOME/stack/s3-store/ before answering, so runs, models, shards and checkpoints
survive `down` / `up` and a crash or kill -9 of any service.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bfn_platform import settings as S
from pipelines import names as N
from pipelines.ray_runtime import LOCAL_RAY_SWITCH
from bfn_platform.errors import BfnError
from bfn_platform.processes import alive, free_port, http_status, port_in_use, stop_group
from bfn_platform.stack_state import BUCKET, NODE_OBJECT_STORE_BYTES, SERVICE_PORT, SERVICES, Stack

# ---------------------------------------------------------------------------------------------
# the services


def _clean_env(stack: Stack) -> dict[str, str]:
    """The services' environment: none of the caller's connection settings or cloud credentials; the
    stack's credentials file as the Ray nodes' identity; Ray keeping 127.0.0.1 as the nodes' address."""
    drop = set(N.CONNECTING_ENV_VARS) | set(N.NEVER_FORWARDED_ENV_VARS) | {
        N.ENV_AWS_PROFILE, N.ENV_AWS_ENDPOINT_URL_S3, N.ENV_AWS_SHARED_CREDENTIALS_FILE, "AWS_CONFIG_FILE"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    # Job entrypoints (`bfn train ...`) run under the raylet's PATH: put this environment's bin first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env[N.ENV_AWS_SHARED_CREDENTIALS_FILE] = str(stack.aws_credentials_file)
    env["AWS_CONFIG_FILE"] = os.devnull  # never a profile of the user's ~/.aws
    env[LOCAL_RAY_SWITCH] = "0"
    return env


def _command(stack: Stack, name: str) -> tuple[list[str], dict[str, str]]:
    py = sys.executable
    env = _clean_env(stack)
    host = S.LOCAL_SERVICE_HOST
    if name == "s3":
        cmd = [py, "-m", "bfn_platform.s3_server", "--host", host, "--port", str(stack.ports["s3"]),
               "--data", str(stack.s3_store_dir), "--credentials", str(stack.s3_credentials_file), "--bucket", BUCKET]
        if stack.snapshot_dir.exists():
            cmd += ["--import-snapshot", str(stack.snapshot_dir)]  # buckets saved by an older `down`
        return cmd, env
    if name == "mlflow":
        env[S.ENV_MLFLOW_SERVER_ENABLE_JOB_EXECUTION] = "false"  # one process, not 7 job workers
        return [py, "-m", "mlflow", "server", "--host", host, "--port", str(stack.ports["mlflow"]),
                "--backend-store-uri", f"sqlite:///{stack.dir / 'mlflow.db'}",
                "--artifacts-destination", (stack.dir / "mlartifacts").as_uri(), "--serve-artifacts",
                "--workers", "1"], env
    env.update({N.ENV_RAY_AUTH_MODE: "token", N.ENV_RAY_AUTH_TOKEN_PATH: str(stack.token_file)})
    cpus = str(max(1, os.cpu_count() or 1))
    common = ["--num-cpus", cpus, "--object-store-memory", str(NODE_OBJECT_STORE_BYTES),
              "--dashboard-agent-listen-port", str(free_port()),
              # One temp dir per node: two nodes on one machine sharing one would share runtime_resources,
              # and the worker node's cleanup of a job's working_dir would pull it from under the driver.
              "--temp-dir", str(ray_temp_dir(stack, name))]
    if name == "ray-head":
        ray = str(Path(py).with_name("ray"))
        return [ray, "start", "--block", "--head", "--node-ip-address", S.LOCAL_RAY_NODE_IP, "--port", str(stack.ports["ray"]),
                "--dashboard-host", host, "--dashboard-port", str(stack.ports["dashboard"]),
                "--ray-client-server-port", str(stack.ports["client"]), "--include-dashboard", "true", *common], env
    return [py, "-m", "bfn_platform.ray_node", "--address", stack.gcs_address, *common], env


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


def s3_health(stack: Stack) -> dict | None:
    """The S3 server's own report ({'objects': N, 'buckets': [...], 'data': DIR}), None if it does not answer."""
    try:
        with urllib.request.urlopen(stack.s3_url + "/_bfn/health", timeout=5) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def healthy(stack: Stack, name: str) -> tuple[bool, str]:
    """(ok, detail) for one service, by asking it, not just by its PID."""
    if name == "s3":
        report = s3_health(stack)
        if report is None:
            return False, f"{stack.s3_url} does not answer"
        return True, f"{stack.s3_url}, {report.get('objects', '?')} objects written through to {report.get('data')}"
    if name == "mlflow":
        code = http_status(stack.mlflow_url + "/health")
        return code == 200, stack.mlflow_url if code == 200 else f"{stack.mlflow_url}/health: {code or 'no answer'}"
    nodes = ray_nodes(stack)
    if nodes is None:
        return False, f"dashboard {stack.dashboard_url} does not answer"
    bad = [n["ip"] for n in nodes if not str(n["ip"]).startswith("127.")]
    if bad:
        return False, f"nodes on non-loopback addresses {bad}"
    heads = [n for n in nodes if n["head"]]
    if name == "ray-head":
        if heads:
            return True, f"node {heads[0]['ip']}, GCS {stack.gcs_address}, dashboard {stack.dashboard_url}"
        return False, "no alive head node"
    workers = [n for n in nodes if not n["head"]]
    return (True, f"node {workers[0]['ip']}") if workers else (False, "no alive worker node")


# what a service's log says when it fails to start: the line to quote rather than the log's last one
CAUSE = re.compile(r"error|exception|failed|refused|already in use|permission denied|not allowed", re.I)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def start_failure(log: Path, offset: int = 0) -> str:
    """The line of `log` (from byte `offset`, where this start began) that says why a service did not start."""
    text = log.read_bytes()[offset:].decode("utf-8", "replace") if log.exists() else ""
    lines = [ANSI.sub("", line).strip() for line in text.splitlines() if line.strip()]
    causes = [line for line in lines if CAUSE.search(line)]
    return ((causes or lines or ["no output"])[-1])[:400]


def _wait_healthy(stack: Stack, name: str, pid: int, timeout: float, log: Path, offset: int = 0) -> None:
    deadline = time.monotonic() + timeout
    detail = ""
    while time.monotonic() < deadline:
        ok, detail = healthy(stack, name)
        if ok:
            return
        if not alive(pid):
            raise BfnError(f"{name} exited while starting: {start_failure(log, offset)} (log {log})")
        time.sleep(0.5)
    raise BfnError(f"{name} did not become healthy within {timeout:.0f} s ({detail}): {start_failure(log, offset)} "
                   f"(log {log})")


def _start(stack: Stack, name: str) -> None:
    cmd, env = _command(stack, name)
    log = stack.dir / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    offset = log.stat().st_size if log.exists() else 0
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=stack.dir, start_new_session=True)
    port_key = SERVICE_PORT[name]
    stack.services[name] = {"pid": proc.pid, "port": stack.ports[port_key] if port_key else None, "log": str(log),
                            "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    stack.save()  # recorded before waiting: a failed start can still be stopped by `down`
    _wait_healthy(stack, name, proc.pid, 180 if name.startswith("ray") else 120, log, offset)


def _service_ports(stack: Stack, name: str) -> list[tuple[str, int]]:
    if name == "ray-head":
        return [(k, stack.ports[k]) for k in ("ray", "dashboard", "client")]
    key = SERVICE_PORT[name]
    return [(key, stack.ports[key])] if key else []


def up(home: Path, ports: dict[str, int] | None = None, log=print) -> Stack:
    """Start whatever of the stack is not running (idempotent) and write the env file. A failed start
    stops what it started and leaves the state folder as it found it (its logs kept under HOME/logs)."""
    stack = Stack.load(home)
    running = stack.running()
    if ports:
        changed = {k: v for k, v in ports.items() if stack.ports.get(k) != v}
        if changed and running:
            raise BfnError(f"the stack in {stack.home} is running with ports {stack.ports}: `bfn stack down` before "
                           f"changing {', '.join(changed)}")
        stack.ports.update(ports)
    before = _Before(stack)
    stack.dir.mkdir(parents=True, exist_ok=True)
    stack.ray_token()
    stack.write_aws_credentials()
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
            for key, port in _service_ports(stack, name):
                if port_in_use(S.LOCAL_SERVICE_HOST, port):
                    raise BfnError(f"port {port} ({name} {key}) on {S.LOCAL_SERVICE_HOST} is in use by another process: "
                                   f"free it or choose another with `bfn stack up --ports {key}=N`")
            log(f"{name}: starting")
            started.append(name)
            _start(stack, name)
            if name == "s3":
                report = s3_health(stack) or {}
                log(f"s3: bucket {BUCKET} ready, {report.get('objects', 0)} objects in {stack.s3_store_dir}")
    except BaseException as err:
        for name in reversed(started):  # leave nothing half-started behind
            stop_group(stack.services[name]["pid"])
            stack.services.pop(name, None)
            if name.startswith("ray"):
                shutil.rmtree(ray_temp_dir(stack, name), ignore_errors=True)
        if stack.running():
            stack.save()
            raise
        logs = before.restore()
        if logs and isinstance(err, BfnError):
            raise BfnError(str(err).replace(str(stack.dir / "logs"), str(logs))) from None
        raise
    stack.save()
    stack.write_env_file()
    return stack


class _Before:
    """What the state folder held before an `up`, to put back when the attempt fails with nothing running:
    no record of dead services, no token or credentials file, no new folder (its logs go to HOME/logs)."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.dir_existed = stack.dir.exists()
        self.files = {p: (p.read_bytes() if p.exists() else None)
                      for p in (stack.state_file, stack.token_file, stack.s3_credentials_file, stack.aws_credentials_file)}

    def restore(self) -> Path | None:
        """Put the folder back; returns where the attempt's logs went when the folder itself was new."""
        if not self.dir_existed:
            logs, keep = self.stack.dir / "logs", None
            if logs.is_dir():
                keep = self.stack.home / "logs" / f"stack-up-failed-{time.strftime('%Y%m%d-%H%M%S')}"
                keep.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(logs), keep)
            shutil.rmtree(self.stack.dir, ignore_errors=True)
            return keep
        for path, content in self.files.items():
            if content is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(content)
        return None


def down(home: Path, log=print) -> Stack:
    """Stop exactly the processes `up` started (reverse order); every service's data is already on disk."""
    stack = Stack.load(home)
    if not stack.services:
        log(f"no stack recorded in {stack.dir}: nothing to stop")
        return stack
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
            kept = ""
            if name == "s3":  # written through before each answer: a crash loses no acknowledged object
                from bfn_platform.s3_store import stored_object_count

                kept = f"; its {stored_object_count(stack.s3_store_dir)} objects are safe in {stack.s3_store_dir}"
            rows.append({"service": name, "state": "dead", "pid": rec.get("pid"),
                         "detail": f"recorded but not running{kept}: `bfn stack up` restarts it (log {rec.get('log')})"})
            continue
        ok, detail = healthy(stack, name)
        rows.append({"service": name, "state": "healthy" if ok else "unhealthy", "pid": rec["pid"], "detail": detail})
    return rows


