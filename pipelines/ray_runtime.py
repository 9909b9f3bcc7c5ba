"""Starting or joining Ray, kept on loopback unless a remote cluster is named.

Ray on Linux advertises the machine's network address even for a "local" cluster. For a local Ray
(no address, or a loopback one) `init_ray` sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 and passes
_node_ip_address=127.0.0.1, which keep every node on 127.0.0.1, and checks every node's address
before running anything. Nothing happens at import: importing this module changes no setting.
"""
from __future__ import annotations

import os
from urllib.parse import urlparse

from pipelines.errors import PipelineError
from pipelines.names import ENV_AWS_SHARED_CREDENTIALS_FILE, ENV_RAY_ADDRESS, WORKER_ENV_VARS

LOCAL_RAY_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": a local Ray's nodes use 127.0.0.1
_connected_here = False  # whether init_ray started or joined Ray in this process (not a caller before it)


def _is_loopback_address(address: str) -> bool:
    if not address or address == "auto":
        return address == ""
    host = urlparse(address if "://" in address else f"x://{address}").hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def worker_env(extra: dict[str, str] | None = None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The runtime_env env_vars of Ray workers and jobs: the settings they need (tracking server, object
    store, local state) and the path of a credentials file, never a credential (Ray logs these)."""
    from pipelines.credentials import credentials_file

    source = os.environ if environ is None else environ
    env = {k: source[k] for k in WORKER_ENV_VARS if source.get(k)}
    creds = credentials_file(source)
    if creds:
        env[ENV_AWS_SHARED_CREDENTIALS_FILE] = creds
    env.update(extra or {})
    return env


def check_loopback_nodes(allow_remote: bool) -> None:
    import ray

    addrs = [n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")]
    bad = [a for a in addrs if not a.startswith("127.")]
    if bad and not allow_remote:
        raise PipelineError(f"Ray nodes advertise non-loopback addresses {bad}: start them with "
                            "--node-ip-address=127.0.0.x (see `bfn stack up`) or set RAY_ADDRESS to the remote cluster")


def init_ray(address: str | None = None, num_cpus: int | None = None, env: dict[str, str] | None = None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS), or start a local one in this process."""
    address = address or os.environ.get(ENV_RAY_ADDRESS) or None
    if _is_loopback_address(address or ""):
        os.environ.setdefault(LOCAL_RAY_SWITCH, "0")
    import ray

    global _connected_here
    if ray.is_initialized():
        return
    runtime_env = {"env_vars": worker_env(env)}
    try:
        if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
            # The driver of a Ray job (`bfn submit`): the job's runtime_env already carries the
            # project and the settings to every worker. Passing another one would make Ray set up a
            # second working_dir and tear down the one this driver runs in.
            ray.init(address=address or "auto", log_to_driver=True)
        elif address:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        else:
            # The dashboard (on 127.0.0.1) serves the state API that Ray Train's controller polls.
            # _node_ip_address as well as the switch: Ray may have read its settings at an earlier import.
            # address="local": a new Ray of our own, never another user's local cluster that ray.init()
            # would otherwise find through /tmp/ray and join.
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", runtime_env=runtime_env,
                     log_to_driver=True, _node_ip_address="127.0.0.1")
        _connected_here = True
    except ConnectionError as err:
        raise PipelineError(f"could not connect to the Ray cluster at {address}: {str(err).splitlines()[0]}; "
                            "check the address (`bfn stack status`) or unset RAY_ADDRESS for a local run") from None
    check_loopback_nodes(allow_remote=bool(address) and not _is_loopback_address(address))


def shutdown_ray(timeout_s: float = 60.0) -> bool:
    """ray.shutdown(), given at most `timeout_s`: closing the driver's GCS subscribers is a blocking
    gRPC call that can hang for good (ray-project/ray#44836, #45044; seen here at the end of a test
    session). Returns whether it finished; if not, it is left in a daemon thread and the caller goes
    on (stopping the cluster's processes breaks the hung call)."""
    import threading

    import ray

    done = threading.Thread(target=ray.shutdown, name="ray-shutdown", daemon=True)
    done.start()
    done.join(timeout_s)
    return not done.is_alive()


def release_ray() -> None:
    """Disconnect from (or stop the local) Ray if init_ray connected this process; a connection some
    caller made before (a test's cluster, a notebook) is left alone."""
    global _connected_here
    if _connected_here:
        shutdown_ray()
        _connected_here = False
