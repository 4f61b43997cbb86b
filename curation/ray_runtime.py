"""One Ray connection per curate process: an embedded local Ray, or an existing cluster."""

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


# --- A pool of actors that survives losing nodes --------------------------------------------------

#: Seconds to wait for a worker to start while no job is running (e.g. every node lost and
#: no new one joining): then the stage fails instead of waiting forever.
START_TIMEOUT_S = 600.0


class WorkersLostError(RuntimeError):
    """Jobs cannot run: their workers keep dying, or none can be started."""


def map_on_actors(
    ray,
    make_actor,
    n_actors: int,
    jobs: list,
    call,
    *,
    max_retries: int,
    describe=str,
    log=print,
):
    """Run ``call(actor, job)`` for every job on ``n_actors`` actors; yield ``(index, result)``
    as jobs finish, each job exactly once.

    An actor that dies with a job (its node lost, its process killed, or merely unreachable:
    Ray cannot tell whether the call ran) is killed for good and replaced by a new one from
    ``make_actor()``, used once it is ready (Ray places it wherever resources are free, e.g.
    on a node that joined later); its job goes back to the front of the queue. A job whose
    actor died more than ``max_retries`` times raises WorkersLostError. Results travel back
    to the caller, which writes them: a job that ran twice is written once. Errors raised by
    the job itself are not retried: they propagate.
    """
    import collections
    import time

    from ray.exceptions import RayActorError

    queue = collections.deque(range(len(jobs)))
    attempts = collections.Counter()
    failed_starts = 0
    idle: list = []
    starting: dict = {}  # ready-probe ref -> actor
    running: dict = {}  # result ref -> (actor, job index)

    def start() -> None:
        actor = make_actor()
        starting[actor.__ray_ready__.remote()] = actor

    try:
        for _ in range(n_actors):
            start()
        waited_since = time.monotonic()
        while queue or running:
            while queue and idle:
                actor, j = idle.pop(), queue.popleft()
                running[call(actor, jobs[j])] = (actor, j)
            if not running and not starting:
                raise WorkersLostError("no worker is left and none can be started")
            refs = list(running) + list(starting)
            ready, _ = ray.wait(refs, num_returns=1, timeout=None if running else 5.0)
            if not ready:
                if time.monotonic() - waited_since > START_TIMEOUT_S:
                    raise WorkersLostError(
                        f"no worker started within {START_TIMEOUT_S:.0f} s: the cluster "
                        "has no free node with the resources a worker asks for"
                    )
                continue
            waited_since = time.monotonic()
            ref = ready[0]
            if ref in starting:
                actor = starting.pop(ref)
                try:
                    ray.get(ref)
                except RayActorError as exc:  # died while starting (node lost): try another
                    failed_starts += 1
                    ray.kill(actor)
                    if failed_starts > n_actors * (max_retries + 1):
                        raise WorkersLostError(
                            f"{failed_starts} workers died while starting; last: {exc}"
                        ) from exc
                    log(f"worker failed to start ({type(exc).__name__}); starting another")
                    start()
                    continue
                idle.append(actor)
                continue
            actor, j = running.pop(ref)
            try:
                result = ray.get(ref)
            except RayActorError as exc:
                attempts[j] += 1
                ray.kill(actor)
                if attempts[j] > max_retries:
                    raise WorkersLostError(
                        f"{describe(jobs[j])}: its worker died {attempts[j]} times "
                        f"(max_retries={max_retries}); last: {exc}"
                    ) from exc
                log(
                    f"worker lost ({type(exc).__name__}) while on {describe(jobs[j])}: "
                    f"requeued (attempt {attempts[j] + 1}), starting a replacement worker"
                )
                queue.appendleft(j)
                start()
                continue
            idle.append(actor)
            yield j, result
    finally:
        for actor in idle + list(starting.values()) + [a for a, _ in running.values()]:
            ray.kill(actor)


# --- Several Ray nodes on one machine (tests, benchmarks) -----------------------------------------


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
