"""Run ``curate run`` as a Ray job: submit, look, follow logs, stop (Ray Jobs SDK).

The job server is the head's dashboard address (``http://HEAD:8265``). Ray is imported lazily,
inside the functions, so ``curate --help`` stays instant. Every failure a user can cause (head
unreachable, token missing or wrong, unknown job) becomes a :class:`JobError` whose message is
one line, without the SDK's traceback.

Tokens (Ray token auth, ``RAY_AUTH_MODE=token``) are read by Ray from ``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``; curate never copies them into the job's
runtime environment, its metadata or the run folder.
"""

from __future__ import annotations

import os
import secrets
import shlex
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
#: Never uploaded with the working dir: run outputs, environments, caches, VCS.
EXCLUDES = [
    "runs/",
    "curate-output/",
    ".venv/",
    ".git/",
    "__pycache__/",
    "*.egg-info/",
    ".pytest_cache/",
    ".ruff_cache/",
]
#: Set in the job's environment: nothing phones home (values are not secrets).
JOB_ENV = {
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "WANDB_MODE": "disabled",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "PYTHONUNBUFFERED": "1",  # progress lines reach `curate logs` as they are printed
}
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class JobError(RuntimeError):
    """A job command cannot go on; the message is one line, meant for the user."""


def resolve_address(address: str | None = None) -> str:
    """The job server URL: ``address``, else $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS when they
    name an HTTP server (``host:port`` counts), else http://127.0.0.1:8265."""
    if not address:
        for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
            value = os.environ.get(var, "").strip()
            if value and value != "auto":
                address = value
                break
    address = (address or DEFAULT_ADDRESS).rstrip("/")
    if address == "auto":
        address = DEFAULT_ADDRESS
    if "://" not in address:
        address = "http://" + address
    scheme = address.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise JobError(
            f"{address} is not a job server address: jobs go to the head's dashboard, "
            "http://HEAD:8265 (not the ray:// client port or the GCS port)"
        )
    return address


def _check_token_env() -> None:
    """Give Ray a usable token setup, or say what is wrong (Ray aborts on a bad token path)."""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            ok = bool(Path(path).expanduser().read_text().strip())
        except OSError as exc:
            raise JobError(f"RAY_AUTH_TOKEN_PATH={path} cannot be read: {exc.strerror}") from None
        if not ok:
            raise JobError(f"RAY_AUTH_TOKEN_PATH={path} is empty")
    # A token at hand is a token meant to be used: Ray sends one only in token mode. (A head
    # started where ~/.ray/auth_token exists turns token auth on by itself.)
    if not os.environ.get("RAY_AUTH_MODE") and _token_configured():
        os.environ["RAY_AUTH_MODE"] = "token"


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast on an unreachable head (the SDK's requests have no connect timeout)."""
    parts = urlsplit(address)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise JobError(
            f"cannot reach the Ray job server at {address} ({reason}): is the head running, "
            "with its dashboard on that address (ray start --head --dashboard-host=...)? "
            "Set --address or RAY_ADDRESS"
        ) from None


def _token_configured() -> bool:
    return bool(
        os.environ.get("RAY_AUTH_TOKEN")
        or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or (Path.home() / ".ray" / "auth_token").is_file()
    )


def _auth_message(address: str, exc: Exception) -> str:
    if "Authentication required" in str(exc) or not _token_configured():
        return (
            f"the Ray cluster at {address} requires a token and none was sent: set "
            "RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH (or RAY_AUTH_MODE=token with the token in "
            "~/.ray/auth_token); `ray get-auth-token` on the head prints it"
        )
    return (
        f"the Ray cluster at {address} refused the token (from RAY_AUTH_TOKEN, "
        "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token): use that cluster's token "
        "(`ray get-auth-token` on the head)"
    )


@contextmanager
def _sdk_errors(address: str, job_id: str | None = None) -> Iterator[None]:
    """Turn the SDK's exceptions into one-line JobErrors."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as exc:
        raise JobError(_auth_message(address, exc)) from None
    except (ConnectionError, requests.exceptions.ConnectionError):
        raise JobError(f"lost the connection to the Ray job server at {address}") from None
    except RuntimeError as exc:
        text = str(exc)
        if job_id and "404" in text:
            raise JobError(f"no job {job_id!r} on {address}") from None
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise JobError(f"the Ray job server at {address} answered: {first}") from None


def connect(address: str | None = None):
    """A JobSubmissionClient for the head at ``address`` (see :func:`resolve_address`)."""
    address = resolve_address(address)
    _check_token_env()
    _probe(address)
    import logging

    from ray.job_submission import JobSubmissionClient

    # The SDK logs packaging chatter at INFO and a token warning we replace with a message
    # (its loggers carry their own levels, so each is quieted).
    for name in ["ray", *logging.root.manager.loggerDict]:
        if name == "ray" or name.startswith("ray."):
            logging.getLogger(name).setLevel(logging.ERROR)
    with _sdk_errors(address):
        client = JobSubmissionClient(address)
    client.curate_address = address
    return client


def source_checkout() -> Path | None:
    """The project folder when curate runs from a source checkout (not an installed wheel)."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "curation").is_dir() else None


def runtime_env(working_dir: str) -> dict:
    """``auto``: upload the source checkout if curate runs from one (a head on this machine,
    or nodes without curate installed), else rely on curate installed on the nodes; ``none``:
    never upload; a path: upload that folder."""
    env: dict = {"env_vars": dict(JOB_ENV)}
    if working_dir == "none":
        return env
    folder = source_checkout() if working_dir == "auto" else Path(working_dir)
    if folder is None:
        return env
    if not folder.is_dir():
        raise JobError(f"--working-dir {folder}: no such folder")
    env["working_dir"] = str(folder)
    env["excludes"] = list(EXCLUDES)
    return env


def new_job_id(pipeline: str) -> str:
    """Readable and unique: curate-<pipeline>-<UTC time>-<random>."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in pipeline)[:40]
    return f"curate-{safe}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def submit_run(
    client,
    run_args: list[str],
    *,
    output: str,
    pipeline: str,
    working_dir: str = "auto",
    job_id: str | None = None,
) -> str:
    """Submit ``curate run RUN_ARGS`` as a job; returns the job id.

    The entrypoint is ``python -m curation.cli run ...``: it works both with the uploaded
    working dir (its code comes first on the path) and with curate installed on the nodes.
    """
    from curation.redact import redact, redact_argv

    entrypoint = shlex.join([os.environ.get("CURATE_JOB_PYTHON", "python"), "-m", "curation.cli"])
    # --address auto: the job's Ray work goes to the cluster running the job (the job's driver
    # has RAY_ADDRESS set). Without an address `curate run` starts its own embedded Ray, which
    # inside a job would be a second, single-node Ray on the head.
    entrypoint += " " + shlex.join(["run", *run_args, "--address", "auto"])
    metadata = {
        "curate_output": redact(output),  # a URL may carry a password (user:pass@host)
        "curate_pipeline": pipeline,
        "curate_command": shlex.join(redact_argv(["curate", "run", *run_args])),
    }
    job_id = job_id or new_job_id(pipeline)
    env = runtime_env(working_dir)
    with _sdk_errors(client.curate_address):
        try:
            return client.submit_job(
                entrypoint=entrypoint, runtime_env=env, metadata=metadata, submission_id=job_id
            )
        except ValueError as exc:  # runtime_env problems (e.g. a working dir too large)
            raise JobError(f"cannot package the job: {exc}") from None


def job_info(client, job_id: str) -> dict:
    """status, message, entrypoint, start/end (unix seconds), metadata, exit code."""
    with _sdk_errors(client.curate_address, job_id):
        info = client.get_job_info(job_id)
    return {
        "job_id": job_id,
        "status": str(getattr(info.status, "value", info.status)),
        "message": info.message,
        "entrypoint": info.entrypoint,
        "start_time": info.start_time / 1000 if info.start_time else None,
        "end_time": info.end_time / 1000 if info.end_time else None,
        "metadata": info.metadata or {},
        "exit_code": info.driver_exit_code,
    }


def list_jobs(client) -> list[dict]:
    with _sdk_errors(client.curate_address):
        jobs = client.list_jobs()
    out = [
        {
            "job_id": j.submission_id or j.job_id,
            "status": str(getattr(j.status, "value", j.status)),
            "start_time": j.start_time / 1000 if j.start_time else None,
            "output": (j.metadata or {}).get("curate_output"),
        }
        for j in jobs
    ]
    return sorted(out, key=lambda j: j["start_time"] or 0)


def job_logs(client, job_id: str) -> str:
    with _sdk_errors(client.curate_address, job_id):
        return client.get_job_logs(job_id)


def follow_logs(client, job_id: str, write: Callable[[str], None] = sys.stdout.write) -> str:
    """Print the job's logs as they come until the job ends; returns its final status."""
    import asyncio

    async def _tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    info = job_info(client, job_id)  # a clear error for an unknown job before tailing
    if info["status"] not in TERMINAL:
        with _sdk_errors(client.curate_address, job_id):
            asyncio.run(_tail())
    else:
        write(job_logs(client, job_id))
    return wait_for(client, job_id, timeout_s=30)["status"]


def stop_job(client, job_id: str, timeout_s: float = 30.0) -> dict:
    """Ask the job to stop and wait (up to ``timeout_s``) until it has; returns its info."""
    job_info(client, job_id)
    with _sdk_errors(client.curate_address, job_id):
        client.stop_job(job_id)
    return wait_for(client, job_id, timeout_s)


def wait_for(client, job_id: str, timeout_s: float, poll_s: float = 0.5) -> dict:
    """The job's info once it has ended, or when ``timeout_s`` is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        info = job_info(client, job_id)
        if info["status"] in TERMINAL or time.monotonic() > deadline:
            return info
        time.sleep(poll_s)


def last_error_line(logs: str) -> str | None:
    """The ``error: ...`` line curate prints when a run is refused, if the logs hold one."""
    lines = [ln.strip() for ln in logs.splitlines() if ln.strip().startswith("error:")]
    return lines[-1] if lines else None


def last_progress_line(logs: str) -> str | None:
    """The last ``[stage] ...`` line of a run's output."""
    lines = [ln.strip() for ln in logs.splitlines() if ln.strip().startswith("[")]
    return lines[-1] if lines else None
