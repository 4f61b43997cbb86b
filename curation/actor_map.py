"""A pool of Ray actors that survives losing nodes: each job runs on some actor, a job whose
actor dies (its node lost, its process killed) is requeued and a replacement actor started.

Ray's ActorPool raises on the first dead actor, and Ray's own actor restarts deadlocked on
small clusters (a restarting actor waits for CPUs that idle actors hold); see map_on_actors.
"""

from __future__ import annotations

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
