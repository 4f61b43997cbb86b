"""One Ray connection per curate process (an embedded local Ray, or an existing cluster), and
the sizing of a stage's workers from what the cluster's alive nodes report.

Running work on the actors that survives losing nodes: curation/actor_map.py; several local
nodes for tests and benchmarks: curation/local_cluster.py."""

from __future__ import annotations

import os

_connected = False


def loopback_only() -> None:
    """Make the Ray nodes this process starts listen on 127.0.0.1 only.

    Sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 unless the user set it. Ray reads it once, at
    ``import ray``: when ray was imported before (measured: then the raylets, GCS and agents
    listen on the routable address and on 0.0.0.0), the value it read is corrected too.
    """
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0":
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False


def ensure_ray(address: str | None = None):
    """Connect once; ``None`` starts a local Ray bound to 127.0.0.1 only (no dashboard)."""
    global _connected
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if address is None:
        # Without this a local Ray binds the machine's routable address even when told
        # _node_ip_address=127.0.0.1 (measured: GCS and workers on the LAN address). It makes
        # Ray treat the node as a single-node cluster on loopback; it must not be set on the
        # nodes of a real multi-node cluster, so only the embedded default sets it.
        loopback_only()
    import ray

    if not ray.is_initialized():
        if address is None:
            # Loopback only: a local run must not listen on the machine's routable address.
            # address="local": always a new instance. Without it ray.init() attaches to the
            # last cluster started on this machine (/tmp/ray/ray_current_cluster, written by
            # `ray start` and by test clusters), even a dead one, where it waits forever.
            ray.init(
                address="local",
                _node_ip_address="127.0.0.1",
                include_dashboard=False,
                log_to_driver=True,
                logging_level="WARNING",
                configure_logging=True,
            )
        else:
            ray.init(address=address, logging_level="WARNING")
        _connected = True
    return ray


def shutdown_ray() -> None:
    global _connected
    if _connected:
        import ray

        ray.shutdown()
        _connected = False


# --- Sizing from what the cluster reports -------------------------------------------------------

#: Nodes with fewer CPUs get fractional CPU requests: pools of whole-CPU workers filling every
#: CPU of a 2-core node stalled (FIELD-NOTES), half-CPU ones ran.
SMALL_NODE_CPUS = 4


def alive_nodes(ray) -> list[dict[str, float]]:
    """The total resources of every alive node, as the cluster reports them now."""
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def cpus_per_unit(nodes: list[dict[str, float]], threads: float = 1.0) -> float:
    """CPUs to reserve for work that runs ``threads`` threads: ``threads``, halved when a node
    with CPUs has fewer than SMALL_NODE_CPUS of them."""
    cpus = [n["CPU"] for n in nodes if n.get("CPU", 0) > 0]
    return threads * (0.5 if cpus and min(cpus) < SMALL_NODE_CPUS else 1.0)


def fit_count(need: dict[str, float], nodes: list[dict[str, float]]) -> int:
    """How many units asking ``need`` (e.g. ``{"CPU": 1, "GPU": 0.5}``) fit on ``nodes``,
    node by node (a unit cannot span two nodes)."""
    total = 0
    for res in nodes:
        fits = [int(res.get(k, 0) / v + 1e-9) for k, v in need.items() if v > 0]
        total += min(fits) if fits else 0
    return total
