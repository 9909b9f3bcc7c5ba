"""What the local stack is, on disk: its services, their ports and processes, its env file and
token, recorded in $BFN_HOME/stack/state.json (stack.py starts and stops the services)."""
from __future__ import annotations

import json
import secrets
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from bfn_platform import settings as S
from bfn_platform.errors import BfnError
from bfn_platform.processes import alive
from pipelines import names as N
from pipelines.credentials import credentials_ini, write_private
from pipelines.ray_runtime import LOCAL_RAY_SWITCH

BUCKET = "bfn"
REGION = "us-east-1"
SERVICES = ("s3", "mlflow", "ray-head", "ray-worker")  # start order; stopped in reverse
DEFAULT_PORTS = {"ray": S.RAY_GCS_PORT, "dashboard": S.RAY_DASHBOARD_PORT, "client": S.RAY_CLIENT_PORT,
                 "mlflow": S.MLFLOW_PORT, "s3": S.S3_PORT}
SERVICE_PORT = {"s3": "s3", "mlflow": "mlflow", "ray-head": "ray", "ray-worker": None}
NODE_OBJECT_STORE_BYTES = 300_000_000  # small object stores: the local stack shares a laptop


def parse_ports(text: str | None) -> dict[str, int]:
    """'ray=26379,mlflow=25000' -> {'ray': 26379, 'mlflow': 25000} (names from DEFAULT_PORTS; none in Ray's worker range)."""
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
        low, high = S.RAY_WORKER_PORTS
        if low <= port <= high:
            raise BfnError(f"port {port} for {name} in --ports lies in Ray's worker port range {low}-{high}, where Ray's "
                           f"own workers would take it: pick a port outside it (e.g. {port - low + 20000 if port - low + 20000 < 65536 else 6380})")
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
        """Where `down` saved the buckets before the S3 store wrote through to disk (imported once)."""
        return self.dir / "s3"

    @property
    def s3_store_dir(self) -> Path:
        return self.dir / "s3-store"

    @property
    def s3_credentials_file(self) -> Path:
        return self.dir / "s3_credentials.json"

    @property
    def aws_credentials_file(self) -> Path:
        """The stack's keys as an AWS shared-credentials file (0600): what the shell, the Ray nodes
        and jobs read, so no key is ever an environment value (pipelines/credentials.py)."""
        return self.dir / "aws_credentials"

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
        return f"{S.LOCAL_RAY_NODE_IP}:{self.ports['ray']}"

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
            write_private(path, make())
        return path.read_text().strip()

    def ray_token(self) -> str:
        return self._secret_file(self.token_file, lambda: secrets.token_hex(32))

    def s3_credentials(self) -> dict[str, str]:
        """The local S3 server's keys (it refuses any others); stable across down / up."""
        raw = self._secret_file(self.s3_credentials_file, lambda: json.dumps(
            {N.ENV_AWS_ACCESS_KEY_ID: "bfnlocal" + secrets.token_hex(6), N.ENV_AWS_SECRET_ACCESS_KEY: secrets.token_hex(20)}))
        return json.loads(raw)

    def write_aws_credentials(self) -> Path:
        creds = self.s3_credentials()
        text = credentials_ini(creds[N.ENV_AWS_ACCESS_KEY_ID], creds[N.ENV_AWS_SECRET_ACCESS_KEY])
        if not self.aws_credentials_file.exists() or self.aws_credentials_file.read_text() != text:
            write_private(self.aws_credentials_file, text)
        return self.aws_credentials_file

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.ray_token()}"}

    def client_env(self) -> dict[str, str]:
        """What a shell needs to use the stack: the contents of the env file."""
        return {
            N.ENV_RAY_ADDRESS: self.gcs_address,
            N.ENV_RAY_AUTH_MODE: "token",
            N.ENV_RAY_AUTH_TOKEN_PATH: str(self.token_file),
            # any Ray client in the shell (ray.init, `ray status`) keeps 127.0.0.1 instead of replacing
            # it with the machine's network address, where the stack does not listen
            LOCAL_RAY_SWITCH: "0",
            N.ENV_MLFLOW_TRACKING_URI: self.mlflow_url,
            N.ENV_AWS_ENDPOINT_URL: self.s3_url,
            N.ENV_AWS_SHARED_CREDENTIALS_FILE: str(self.aws_credentials_file),
            N.ENV_AWS_DEFAULT_REGION: REGION,
            N.ENV_BFN_STORAGE: f"s3://{BUCKET}/checkpoints",
            N.ENV_BFN_DATA: f"s3://{BUCKET}/data",
            N.ENV_BFN_HOME: str(self.home),
            "BFN_RAY_DASHBOARD": self.dashboard_url,  # the Jobs API, for `bfn submit` / `bfn jobs`
        }

    def write_env_file(self) -> Path:
        lines = ["# written by `bfn stack up`: source it to point bfn, Ray, MLflow and boto3 at the local stack",
                 "# (no credential in here: the S3 keys are read from AWS_SHARED_CREDENTIALS_FILE, mode 0600)",
                 # keys or a profile left in the shell would win over the stack's credentials file
                 f"unset {' '.join((N.ENV_AWS_ACCESS_KEY_ID, N.ENV_AWS_SECRET_ACCESS_KEY, N.ENV_AWS_SESSION_TOKEN, N.ENV_AWS_PROFILE))}"]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in self.client_env().items()]
        return write_private(self.env_file, "\n".join(lines) + "\n")
