"""One run at a time per run folder, saying who holds it.

A local folder is locked with an flock on ``<run>/.curate.lock``. An object store has no locks,
so a remote run folder gets a *lease* instead: the ``.curate.lock`` object is created with a
conditional create (it fails when the object exists: S3 ``If-None-Match``), and the holder
refreshes its ``heartbeat_at`` while it runs. A lease whose heartbeat is older than
:data:`LEASE_S` belongs to a run that died: the next run takes it over.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

from curation.redact import redact_argv
from curation.stages.base import RunDirError
from manifests.storage import Location, is_remote, remove

#: Held (flock) by the run writing a run folder; removed when it ends. A run killed hard
#: leaves the file behind but not the lock (the kernel drops it): the next run takes it.
LOCK_NAME = ".curate.lock"
#: Seconds between heartbeats of a remote lease.
HEARTBEAT_S = 30.0
#: A remote lease whose heartbeat is older than this is stale (its run died). Several
#: heartbeats long, so a slow store or some clock skew between hosts does not break a lease.
LEASE_S = 120.0


def acquire_run_lock(run_dir: Location, stages: list[str]) -> int | RemoteLease:
    """Take the run folder's exclusive lock (creating a local folder); returns the handle for
    :func:`release_run_lock` (an fd, or a :class:`RemoteLease` on an object store).

    Raises RunDirError when the folder cannot be written, or when another live run holds the
    lock (the message names it). A lock left by a dead process does not block: flock locks
    die with their process, leases go stale.
    """
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": time.time(),
        "stages": list(stages),
        "command": redact_argv(sys.argv),
    }
    if is_remote(run_dir):
        return _acquire_lease(run_dir, info)
    import fcntl

    path = run_dir / LOCK_NAME
    while True:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunDirError(
                f"cannot write to the output folder {run_dir}: {exc.strerror or exc}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_lock_info(run_dir)
            os.close(fd)
            raise _in_use(run_dir, holder) from None
        # The holder before us may have removed the file between our open and our lock:
        # then we locked a file nobody else will see; start again on the current one.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(info) + "\n").encode())
    return fd


def release_run_lock(run_dir: Location, handle: int | RemoteLease) -> None:
    """Remove the lock file, then drop the lock (in that order: see acquire_run_lock)."""
    if isinstance(handle, RemoteLease):
        handle.release()
        return
    try:
        (run_dir / LOCK_NAME).unlink()
    except FileNotFoundError:
        pass
    os.close(handle)


def read_lock_info(run_dir: Location) -> dict | None:
    """What the lock file says about the run holding it (pid, host, started_at, stages,
    command; ``heartbeat_at`` for a remote lease), or None when there is no lock file or it is
    unreadable (being written)."""
    try:
        return json.loads((run_dir / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None


def lease_fresh(info: dict | None) -> bool:
    """Whether a remote lease's holder has shown signs of life within :data:`LEASE_S`.

    The heartbeat decides, except for a holder on this very host whose process is gone (a
    run killed here and started again at once need not wait for its lease to expire). Another
    host's pid says nothing here, and wrongly taking over a live run's folder is worse than
    waiting.
    """
    if not info or process_gone(info):
        return False
    return time.time() - float(info.get("heartbeat_at", 0)) < LEASE_S


def process_gone(info: dict) -> bool:
    """True when the lock's holder ran on this host and its process no longer exists."""
    if info.get("host") != socket.gethostname() or "pid" not in info:
        return False
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    return False


class RemoteLease:
    """A held lease on a remote run folder; a daemon thread keeps its heartbeat fresh."""

    def __init__(self, path: Location, info: dict) -> None:
        self.path, self.info = path, info
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="curate-lease", daemon=True)
        self._thread.start()

    def _ours(self) -> bool:
        """Whether the lock object still holds our lease (store errors propagate)."""
        try:
            current = json.loads(self.path.fs.cat_file(self.path.path))
        except FileNotFoundError:
            return False
        return current.get("lease") == self.info["lease"]

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if not self._ours():
                    return  # taken over while we were stale: never overwrite another run's lease
                self.info["heartbeat_at"] = time.time()
                self.path.fs.pipe_file(self.path.path, _encode(self.info))
            except Exception:  # a store hiccup: the next beat retries (the lease outlives a few)
                pass

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        try:
            if self._ours():
                remove(self.path)
        except Exception:  # the store is unreachable: the lease goes stale by itself; the
            pass  # run's own outcome (or error) is what the caller must see


def _acquire_lease(run_dir: Location, info: dict) -> RemoteLease:
    path = run_dir / LOCK_NAME
    info = {**info, "lease": uuid.uuid4().hex, "heartbeat_at": time.time()}
    try:
        if _create(path, info):
            return RemoteLease(path, info)
        holder = read_lock_info(run_dir)
        if not lease_fresh(holder):
            remove(path)  # stale (its run died) or gone meanwhile: take it over, the same way
            if _create(path, info):
                return RemoteLease(path, info)
            holder = read_lock_info(run_dir)  # another run took it over first
    except Exception as exc:  # each backend has its own errors (botocore's are not OSErrors)
        text = getattr(exc, "strerror", None) or str(exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
        raise RunDirError(f"cannot write to the output folder {run_dir}: {reason}") from None
    raise _in_use(run_dir, holder)


def _create(path: Location, info: dict) -> bool:
    """Create the lease object; False when it exists. ("x": the store refuses to create an
    existing object, so of two runs starting together exactly one gets the lease.)"""
    try:
        with path.fs.open(path.path, "xb") as f:
            f.write(_encode(info))
    except FileExistsError:
        return False
    return True


def _encode(info: dict) -> bytes:
    return (json.dumps(info) + "\n").encode()


def _in_use(run_dir: Location, holder: dict | None) -> RunDirError:
    hint = ""
    if holder and "heartbeat_at" in holder:
        age = max(time.time() - float(holder["heartbeat_at"]), 0)
        hint = (
            f" (a run that died frees it {LEASE_S:.0f} s after its last heartbeat, {age:.0f} s ago)"
        )
    return RunDirError(
        f"{run_dir} is in use by another curate run ({describe_holder(holder)}); "
        f"wait for it to end or stop it, or use another --output{hint}"
    )


def describe_holder(info: dict | None) -> str:
    if not info:
        return "process unknown"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started_at", 0)))
    argv = list(info.get("command") or [])
    if argv and Path(argv[0]).name in ("cli.py", "__main__.py", "curate"):
        argv[0] = "curate"  # `python -m curation.cli` (jobs) records the module's path
    command = " ".join(argv)
    return f"pid {info.get('pid')} on {info.get('host')}, since {started}: {command}"
