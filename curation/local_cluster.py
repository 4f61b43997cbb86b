"""Several Ray nodes on one machine, all on 127.0.0.1: for the fault-tolerance tests and
benchmarks/cluster.py (kill a node while it is busy, like a machine lost)."""

from __future__ import annotations

import os

from curation.ray_runtime import loopback_only


def start_local_cluster(
    n_workers: int, cpus_per_node: float = 1, system_config: dict | None = None
):
    """A head without CPUs (the driver's node) plus ``n_workers`` worker nodes, all on 127.0.0.1.

    Returns ``(cluster, worker nodes)``; ``cluster.address`` is what ``curate run --address``
    takes, ``cluster.remove_node(node, allow_graceful=False)`` kills a node like a lost
    machine. Uses RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (see loopback_only): without it the
    nodes listen on the routable address and the driver looks for the head there. Nodes can
    only be added from the main thread (Ray installs signal handlers). The cluster does not stay
    advertised in /tmp/ray/ray_current_cluster, where any later bare ``ray.init()`` on this
    machine would attach to it (or wait forever once it is gone).
    """
    import tempfile
    from pathlib import Path

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    loopback_only()
    from ray.cluster_utils import Cluster

    advert = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    before = advert.read_text() if advert.is_file() else None
    head = {"num_cpus": 0, "include_dashboard": False}
    if system_config:
        head["_system_config"] = system_config
    try:
        cluster = Cluster(initialize_head=True, head_node_args=head)
        workers = [cluster.add_node(num_cpus=cpus_per_node) for _ in range(n_workers)]
        cluster.wait_for_nodes()
    finally:
        if before is None:
            advert.unlink(missing_ok=True)
        else:
            advert.write_text(before)
    return cluster, workers


def node_runs_task(node, title: str) -> bool:
    """True when one of a local ``node``'s worker processes runs a task titled ``title``
    (e.g. ``"ray::patch_part"``): to kill a node while it is busy, in tests and benchmarks."""
    import psutil
    from ray._private import ray_constants

    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    try:
        children = psutil.Process(raylet).children(recursive=True)
    except psutil.Error:
        return False
    for proc in children:
        try:
            if " ".join(proc.cmdline()).startswith(title):
                return True
        except psutil.Error:
            continue
    return False
