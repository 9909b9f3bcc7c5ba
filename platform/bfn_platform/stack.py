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
import secrets
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bfn_platform import settings as S
from pipelines import names as N
from bfn_platform.errors import BfnError
from bfn_platform.processes import alive, free_port, http_status, port_in_use, stop_group

BUCKET = "bfn"
REGION = "us-east-1"
SERVICES = ("s3", "mlflow", "ray-head", "ray-worker")  # start order; stopped in reverse
DEFAULT_PORTS = {"ray": S.RAY_GCS_PORT, "dashboard": S.RAY_DASHBOARD_PORT, "client": S.RAY_CLIENT_PORT,
                 "mlflow": S.MLFLOW_PORT, "s3": S.S3_PORT}
SERVICE_PORT = {"s3": "s3", "mlflow": "mlflow", "ray-head": "ray", "ray-worker": None}
NODE_OBJECT_STORE_BYTES = 300_000_000  # small object stores: the local stack shares a laptop


def parse_ports(text: str | None) -> dict[str, int]:
    """'ray=16379,mlflow=15000' -> {'ray': 16379, 'mlflow': 15000} (names from DEFAULT_PORTS)."""
    out: dict[str, int] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in DEFAULT_PORTS:
            raise BfnError(f"bad --ports entry {part!r}: use NAME=PORT with NAME one of {', '.join(DEFAULT_PORTS)}")
        try:
            port = int(value)
        except ValueError:
            port = -1
        if not 1 <= port <= 65535:
            raise BfnError(f"bad port {value!r} for {name} in --ports: an integer 1..65535")
        out[name] = port
    if len(set(out.values())) != len(out):
        raise BfnError(f"--ports gives two services the same port: {text}")
    return out


# ---------------------------------------------------------------------------------------------
# state


@dataclass
class Stack:
    home: Path
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    services: dict[str, dict] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return self.home / "stack"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def env_file(self) -> Path:
        return self.home / S.STACK_ENV_FILE

    @property
    def token_file(self) -> Path:
        return self.dir / "ray_auth_token"

    @property
    def snapshot_dir(self) -> Path:
        return self.dir / "s3"

    @property
    def dashboard_url(self) -> str:
        return f"http://{S.LOCAL_SERVICE_HOST}:{self.ports['dashboard']}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{S.LOCAL_SERVICE_HOST}:{self.ports['mlflow']}"

    @property
    def s3_url(self) -> str:
        return f"http://{S.LOCAL_SERVICE_HOST}:{self.ports['s3']}"

    @property
    def gcs_address(self) -> str:
        return f"{S.LOCAL_HEAD_IP}:{self.ports['ray']}"

    @classmethod
    def load(cls, home: Path) -> "Stack":
        stack = cls(home.resolve())
        if stack.state_file.exists():
            data = json.loads(stack.state_file.read_text())
            stack.ports.update(data.get("ports", {}))
            stack.services = data.get("services", {})
        return stack

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"ports": self.ports, "services": self.services}, indent=2))
        tmp.replace(self.state_file)

    def running(self) -> list[str]:
        return [name for name, rec in self.services.items() if alive(rec.get("pid"))]

    # -- secrets kept on disk with mode 0600, never printed ------------------------------------

    def _secret_file(self, path: Path, make) -> str:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(make())
        return path.read_text().strip()

    def ray_token(self) -> str:
        return self._secret_file(self.token_file, lambda: secrets.token_hex(32))

    def s3_credentials(self) -> dict[str, str]:
        """Throw-away keys for the local S3 server (moto accepts any); stable across down / up."""
        raw = self._secret_file(self.dir / "s3_credentials.json", lambda: json.dumps(
            {N.ENV_AWS_ACCESS_KEY_ID: "bfnlocal" + secrets.token_hex(6), N.ENV_AWS_SECRET_ACCESS_KEY: secrets.token_hex(20)}))
        return json.loads(raw)

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.ray_token()}"}

    def client_env(self) -> dict[str, str]:
        """What a shell needs to use the stack: the contents of the env file."""
        return {
            N.ENV_RAY_ADDRESS: self.gcs_address,
            N.ENV_RAY_AUTH_MODE: "token",
            N.ENV_RAY_AUTH_TOKEN_PATH: str(self.token_file),
            N.ENV_MLFLOW_TRACKING_URI: self.mlflow_url,
            N.ENV_AWS_ENDPOINT_URL: self.s3_url,
            **self.s3_credentials(),
            N.ENV_AWS_DEFAULT_REGION: REGION,
            N.ENV_BFN_STORAGE: f"s3://{BUCKET}/checkpoints",
            N.ENV_BFN_DATA: f"s3://{BUCKET}/data",
            N.ENV_BFN_HOME: str(self.home),
            "BFN_RAY_DASHBOARD": self.dashboard_url,  # the Jobs API, for `bfn submit` / `bfn jobs`
        }

    def write_env_file(self) -> Path:
        lines = ["# written by `bfn stack up`: source it to point bfn, Ray, MLflow and boto3 at the local stack",
                 "# (local throw-away credentials only; mode 0600)"]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in self.client_env().items()]
        tmp = self.env_file.with_suffix(".tmp")
        self.env_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        tmp.replace(self.env_file)
        return self.env_file


# ---------------------------------------------------------------------------------------------
# the services


def _clean_env() -> dict[str, str]:
    """The services' environment: none of the caller's connection settings or cloud credentials."""
    drop = set(N.CONNECTING_ENV_VARS) | {"AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"}
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


