"""One Ray connection per curate process: an embedded local Ray, or an existing cluster."""

from __future__ import annotations

import os

_connected = False


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
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if not ray.is_initialized():
        if address is None:
            # Loopback only: a local run must not listen on the machine's routable address.
            ray.init(
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
