"""One run at a time per run folder: an flock held while a run writes it, saying who holds it."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from curation.redact import redact_argv
from curation.stages.base import RunDirError

#: Held (flock) by the run writing a run folder; removed when it ends. A run killed hard
#: leaves the file behind but not the lock (the kernel drops it): the next run takes it.
LOCK_NAME = ".curate.lock"


def acquire_run_lock(run_dir: Path, stages: list[str]) -> int:
    """Take the run folder's exclusive lock (creating the folder); returns the lock's fd.

    Raises RunDirError when the folder cannot be written, or when another live process holds
    the lock (the message names it). A lock file left by a dead process does not block: flock
    locks die with their process.
    """
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
            raise RunDirError(
                f"{run_dir} is in use by another curate run ({describe_holder(holder)}); "
                "wait for it to end or stop it, or use another --output"
            ) from None
        # The holder before us may have removed the file between our open and our lock:
        # then we locked a file nobody else will see; start again on the current one.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": time.time(),
        "stages": list(stages),
        "command": redact_argv(sys.argv),
    }
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(info) + "\n").encode())
    return fd


def release_run_lock(run_dir: Path, fd: int) -> None:
    """Remove the lock file, then drop the lock (in that order: see acquire_run_lock)."""
    try:
        (run_dir / LOCK_NAME).unlink()
    except FileNotFoundError:
        pass
    os.close(fd)


def read_lock_info(run_dir: Path) -> dict | None:
    """What the lock file says about the run holding it (pid, host, started_at, stages,
    command), or None when there is no lock file or it is unreadable (being written)."""
    try:
        return json.loads((run_dir / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None


def describe_holder(info: dict | None) -> str:
    if not info:
        return "process unknown"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started_at", 0)))
    argv = list(info.get("command") or [])
    if argv and Path(argv[0]).name in ("cli.py", "__main__.py", "curate"):
        argv[0] = "curate"  # `python -m curation.cli` (jobs) records the module's path
    command = " ".join(argv)
    return f"pid {info.get('pid')} on {info.get('host')}, since {started}: {command}"
