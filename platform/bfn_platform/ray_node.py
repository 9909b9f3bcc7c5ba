"""One Ray worker node of the local stack, on 127.0.0.1, blocking like `ray start --block`.

Why not `ray start`: Ray binds its servers (GCS, raylet, dashboard agent, runtime-env agent,
metrics exporter) to loopback only when the node's address is exactly 127.0.0.1; for any other
address, 127.0.0.2 included, they listen on every interface. A second node on 127.0.0.1 is what
`ray.cluster_utils.Cluster` runs in Ray's own tests, but the `ray start` command refuses it (with
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which keeps 127.0.0.1 from being replaced by the machine's
network address, it allows only a head). So the worker node is started here the way `ray start`
and Cluster.add_node start one: a `ray._private.node.Node` from `RayParams`, then a watch on its
processes. The head still comes from `ray start --head`.

    python -m bfn_platform.ray_node --address 127.0.0.1:6379 --num-cpus 2 --object-store-memory N \
        --temp-dir DIR --dashboard-agent-listen-port P
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from pipelines.ray_runtime import LOCAL_RAY_SWITCH

LOOPBACK = "127.0.0.1"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bfn_platform.ray_node", description=__doc__.split("\n\n")[0])
    p.add_argument("--address", required=True, help="the head's GCS address, 127.0.0.1:PORT")
    p.add_argument("--num-cpus", type=int, required=True)
    p.add_argument("--object-store-memory", type=int, required=True)
    p.add_argument("--temp-dir", required=True)
    p.add_argument("--dashboard-agent-listen-port", type=int, default=0)
    args = p.parse_args(argv)
    if not args.address.startswith(LOOPBACK + ":"):
        p.error(f"--address must be the local head on {LOOPBACK}:PORT, not {args.address}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if os.environ.get(LOCAL_RAY_SWITCH) != "0":
        print(f"error: set {LOCAL_RAY_SWITCH}=0, or Ray replaces {LOOPBACK} with a network address", file=sys.stderr)
        return 1
    import ray._private.node
    from ray._private.parameter import RayParams

    params = RayParams(node_ip_address=LOOPBACK, gcs_address=args.address, num_cpus=args.num_cpus, num_gpus=0,
                       object_store_memory=args.object_store_memory, temp_dir=args.temp_dir,
                       dashboard_agent_listen_port=args.dashboard_agent_listen_port or None)
    node = ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
    print(f"Ray worker node started on {LOOPBACK} (GCS {args.address}, logs {node.get_logs_dir_path()})", flush=True)
    # SIGTERM (`bfn stack down`) ends through sys.exit, so shutdown_at_exit stops the node's processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(1)
        dead = [p for p in node.dead_processes() if p[1].returncode not in (0, -signal.SIGTERM, 128 + signal.SIGTERM)]
        if dead:
            names = ", ".join(name for name, _ in dead)
            print(f"error: Ray node process(es) {names} exited unexpectedly; see {node.get_logs_dir_path()}", flush=True)
            return 1


if __name__ == "__main__":
    raise SystemExit(main())
