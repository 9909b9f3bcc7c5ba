"""Real local services for integration tests: an MLflow server process and a two-node Ray cluster,
all on loopback with free ports, stopped afterwards."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}: {log.read_text()[-2000:] if log else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop_process_group(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, 15)
        proc.wait(timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait(5)


def start_mlflow(root: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:`port` with a SQLite store and proxied artifacts under `root` (one
    process, its own process group), once it answers; the same port and store can be started again."""
    root.mkdir(parents=True, exist_ok=True)
    log = root / "mlflow.log"
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", (root / "artifacts").as_uri(), "--serve-artifacts", "--workers", "1"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 120, proc, log)
    except BaseException:
        stop_process_group(proc)
        raise
    return proc


@contextmanager
def mlflow_server(root: Path):
    """An MLflow server (start_mlflow) on a free port for the block: yields its URL."""
    port = free_port()
    proc = start_mlflow(root, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(proc)


@contextmanager
def ray_cluster(num_nodes: int = 2, cpus_per_node: int = 2):
    """A Ray cluster of `num_nodes` nodes on 127.0.0.1 (ray.cluster_utils), this process its driver."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported: nodes on loopback
    os.environ["RAY_AUTH_MODE"] = "disabled"  # tests only
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus_per_node, "include_dashboard": False})
    for _ in range(num_nodes - 1):
        cluster.add_node(num_cpus=cpus_per_node)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        from pipelines.ray_runtime import shutdown_ray

        # Bounded: a hung ray.shutdown() once held a whole CI run for 15 minutes at the session's end;
        # stopping the cluster's processes is what frees it.
        disconnected = not ray.is_initialized() or shutdown_ray(15)
        if disconnected:
            _bounded(cluster.shutdown, 30)
        else:  # Cluster.shutdown refuses to remove a node the (hung) driver is still connected to
            print("ray.shutdown() did not finish within 15 s: stopping the cluster's processes", file=sys.stderr)
        for node in cluster.list_all_nodes():  # whatever is still running
            node.kill_all_processes(check_alive=False, allow_graceful=False)


def _bounded(fn, timeout_s: float) -> bool:
    import threading

    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return not thread.is_alive()
