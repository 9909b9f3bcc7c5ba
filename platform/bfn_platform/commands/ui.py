"""`bfn ui`: the MLflow UI on 127.0.0.1 for the configured tracking store.

With the embedded store (no MLFLOW_TRACKING_URI: sqlite:///$BFN_HOME/mlflow.db) it starts an MLflow
server on that store in the foreground until Ctrl-C. With MLFLOW_TRACKING_URI pointing at a
server, that server already serves the UI: its address is printed and nothing is started.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

from bfn_platform.commands.common import command
from bfn_platform.errors import BfnError
from pipelines.names import ENV_MLFLOW_TRACKING_URI

GUARD_NOTE = ("note: the UI's alias editor moves @champion without the likelihood guard; promote with `bfn models "
              "promote` (a move made in the UI shows as unguarded in `bfn models show`)")

EPILOG = """examples:
  bfn ui                       # http://127.0.0.1:5000 on ./.bfn/mlflow.db; Ctrl-C stops it
  bfn ui --port 5050
  BFN_HOME=/data/bfn bfn ui
"""


def register(sub) -> None:
    from bfn_platform import settings

    p = command(sub, "ui", __doc__, help="start the MLflow UI on 127.0.0.1 for the tracking store", epilog=EPILOG)
    p.add_argument("--port", type=int, default=settings.MLFLOW_PORT, help="port (default: %(default)s)")
    p.set_defaults(func=run)


def server_command(store: str, port: int, artifacts: str) -> list[str]:
    """`mlflow server` on loopback, one process (no job workers), proxying the local artifact folder."""
    return [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", store, "--artifacts-destination", artifacts, "--serve-artifacts", "--workers", "1"]


def run(args) -> int:
    from bfn_platform.console import console
    from bfn_platform.processes import port_in_use
    from pipelines.tracking import bfn_home, check_tracking_server, tracking_uri

    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        check_tracking_server(uri)
        console.print(f"MLFLOW_TRACKING_URI is a server, which serves the UI itself: {uri}", highlight=False)
        console.print(GUARD_NOTE, highlight=False)
        return 0
    if port_in_use("127.0.0.1", args.port):
        raise BfnError(f"port {args.port} on 127.0.0.1 is in use: pick another with `bfn ui --port N`")
    artifacts = (bfn_home() / "mlartifacts").as_uri()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    env.pop(ENV_MLFLOW_TRACKING_URI, None)
    console.print(f"MLflow UI for {uri}: http://127.0.0.1:{args.port}  (Ctrl-C stops it)", highlight=False)
    console.print(GUARD_NOTE, highlight=False)
    sys.stdout.flush()
    # SIGTERM becomes an exit that runs `finally`: whoever stops `bfn ui` stops the server (its own session) too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    proc = subprocess.Popen(server_command(uri, args.port, artifacts), env=env, start_new_session=True)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        from bfn_platform.processes import stop_group

        stop_group(proc.pid)
        return 0
    finally:
        if proc.poll() is None:
            from bfn_platform.processes import stop_group

            stop_group(proc.pid)
