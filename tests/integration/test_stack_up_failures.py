"""A failed `bfn stack up` says why and leaves the state folder as it found it: no record of dead
services in state.json, no token or credentials file it created, no Ray temp folder, no process.
Only the S3 server is started for real (a few seconds); the failures come before Ray would start."""
from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest

from bfn_platform.errors import BfnError

pytestmark = pytest.mark.integration

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from services import free_port  # noqa: E402


def _processes_of(home: Path) -> list[int]:
    """PIDs of live processes whose command line names the stack's folder."""
    hits = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(home).encode() in (entry / "cmdline").read_bytes():
                    hits.append(int(entry.name))
            except OSError:
                pass
    return hits


def _ports() -> dict[str, int]:
    return {k: free_port() for k in ("ray", "dashboard", "client", "mlflow", "s3")}


def test_busy_port_after_a_started_service_leaves_nothing_behind(tmp_path):
    from bfn_platform.stack import up

    home, ports = tmp_path / "home", _ports()
    started: list[str] = []
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports["mlflow"]))
        busy.listen()
        with pytest.raises(BfnError) as err:
            up(home, ports, log=started.append)
    assert f"port {ports['mlflow']} (mlflow mlflow)" in str(err.value) and "--ports mlflow=N" in str(err.value)
    assert "s3: starting" in started  # the S3 server did start, and was stopped again
    assert not (home / "stack").exists() and not (home / "stack.env").exists()
    kept = list((home / "logs").glob("stack-up-failed-*/s3.log"))
    assert len(kept) == 1 and "serving" in kept[0].read_text()
    assert not [p for p in Path("/tmp").glob(f"bfn-ray-{ports['ray']}-*")]
    assert _processes_of(home) == []


def test_a_service_that_cannot_start_is_named_with_its_own_error(tmp_path):
    from bfn_platform.stack import up
    from bfn_platform.stack_state import Stack

    home, ports = tmp_path / "home", _ports()
    stack = Stack(home.resolve())
    stack.s3_credentials()
    os.chmod(stack.s3_credentials_file, 0o644)  # the S3 server refuses keys others can read
    before = sorted(p.name for p in stack.dir.iterdir())
    with pytest.raises(BfnError) as err:
        up(home, ports, log=lambda m: None)
    message = str(err.value)
    assert message.startswith("s3 exited while starting: ") and "600" in message, message
    assert "\n" not in message
    # the folder existed: what this attempt added (state.json, token, credentials file) is gone again
    assert sorted(p.name for p in stack.dir.iterdir() if p.name != "logs") == before
    assert not (home / "stack.env").exists()
    log = Path(message.rsplit("(log ", 1)[1].rstrip(")"))
    assert log.exists()
    state = stack.dir / "state.json"
    assert not state.exists() or json.loads(state.read_text())["services"] == {}
    assert _processes_of(home) == []
