"""``curate submit / status / logs / stop``: runs as Ray jobs, and the progress of run folders.

Only typer and the standard library are imported here; Ray (Jobs SDK) and pyarrow are imported
inside the commands. :func:`register` adds the commands to the main ``curate`` app.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from curation.cli_options import Inputs, Overrides, Pipeline, Stage

_ADDRESS_HELP = (
    "Job server of the Ray head (its dashboard): default $RAY_ADDRESS or http://127.0.0.1:8265."
)
Address = Annotated[str | None, typer.Option("--address", help=_ADDRESS_HELP)]


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _client(address: str | None):
    from curation.jobs import JobError, connect

    try:
        return connect(address)
    except JobError as exc:
        _fail(str(exc), code=1)


def _is_loopback(address: str) -> bool:
    from urllib.parse import urlsplit

    return urlsplit(address).hostname in ("127.0.0.1", "localhost", "::1")


def _job_path(value: str, upload: Path | None) -> str:
    """A local path as the job will see it: relative inside the uploaded working dir (the
    job's current folder), else absolute (right for a head on this machine or shared storage).
    Names that are not local paths (bundled pipelines, URLs) pass unchanged."""
    prefix = "folder:" if value.startswith("folder:") else ""
    raw = value[len(prefix) :]
    if "://" in raw:
        return value
    path = Path(raw).expanduser()
    if not path.exists():
        if not any(c in raw for c in "*?[") or path.is_absolute():
            return value
        return prefix + str(Path.cwd() / path)  # a glob: anchor it here
    path = path.resolve()
    if upload is not None and path.is_relative_to(upload.resolve()):
        return prefix + path.relative_to(upload.resolve()).as_posix()
    return prefix + str(path)


def _check_output(output) -> None:
    """For a head on this machine: refuse an output that cannot be written or is in use.

    An object-store output is not test-written from here: the job writes it with the
    cluster's credentials, which may differ from this machine's; the run itself reports an
    output it cannot write, in one line.
    """
    import tempfile

    from curation.progress import holder_alive
    from curation.run_lock import LOCK_NAME, describe_holder, read_lock_info
    from manifests.storage import is_remote

    if not is_remote(output):
        existing = output
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:  # really try: permission bits say little to root or on network file systems
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as exc:
            _fail(f"the output folder {output} is not writable ({existing}: {exc.strerror or exc})")
    try:
        held = (output / LOCK_NAME).exists()
    except OSError:  # an object store refusing this machine's credentials: the run will say
        held = False
    if held:
        holder = read_lock_info(output)
        if holder_alive(holder):
            _fail(
                f"{output} is in use by another curate run ({describe_holder(holder)}); "
                "wait for it to end or stop it, or use another --output"
            )


def submit(
    pipeline: Pipeline = "demo",
    stage: Stage = "all",
    input: Inputs = None,
    output: Annotated[
        str | None,
        typer.Option(
            help="Run folder on the cluster: a path or a URL such as s3://bucket/run "
            "(default: runs/<pipeline name>, made absolute)."
        ),
    ] = None,
    set_: Overrides = None,
    address: Address = None,
    working_dir: Annotated[
        str,
        typer.Option(
            help="auto: upload this source checkout (excluding runs/, .venv, .git) when curate "
            "runs from one, else use curate as installed on the nodes; none; or a folder."
        ),
    ] = "auto",
) -> None:
    """Submit `curate run` with these options as a Ray job; prints the job id."""
    from curation.config import ConfigError, load_pipeline
    from curation.jobs import JobError, runtime_env, submit_run
    from curation.run import STAGES
    from manifests.storage import is_remote, location

    if stage != "all" and stage not in STAGES:
        _fail(f"unknown stage {stage!r}: use one of {', '.join(STAGES)} or all")
    try:
        cfg = load_pipeline(pipeline, set_ or [])  # refuse a bad pipeline before submitting
    except ConfigError as exc:
        _fail(str(exc))
    try:
        upload = runtime_env(working_dir).get("working_dir")
    except JobError as exc:
        _fail(str(exc))
    upload = Path(upload) if upload else None
    out = location(output or f"runs/{cfg.name}")
    if not is_remote(out):
        out = out.expanduser()
        out = out if out.is_absolute() else Path.cwd() / out
    client = _client(address)
    if _is_loopback(client.curate_address):
        _check_output(out)
    args = ["--pipeline", _job_path(pipeline, upload), "--stage", stage, "--output", str(out)]
    for spec in input or []:
        args += ["--input", _job_path(spec, upload)]
    for item in set_ or []:
        args += ["--set", item]
    start = time.perf_counter()
    try:
        job_id = submit_run(
            client, args, output=str(out), pipeline=cfg.name, working_dir=working_dir
        )
    except JobError as exc:
        _fail(str(exc), code=1)
    typer.echo(job_id)
    typer.echo(
        f"submitted to {client.curate_address} in {time.perf_counter() - start:.1f} s; run folder "
        f"{out}\n  curate status {job_id}\n  curate logs {job_id} --follow",
        err=True,
    )


def status(
    target: Annotated[
        str | None,
        typer.Argument(help="A job id, or a run folder (local run, running or finished)."),
    ] = None,
    address: Address = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Per-stage progress of a job or a run folder; without an argument, the jobs of the head."""
    from curation.progress import format_progress, run_progress

    if target is not None and _is_run_folder(target):
        progress = run_progress(target)
        typer.echo(
            json.dumps(progress.to_dict(), indent=2) if as_json else format_progress(progress)
        )
        return
    if target is not None and ("/" in target or target.startswith(".")):
        _fail(f"{target}: no such run folder (and not a job id)")
    from curation.jobs import (
        TERMINAL,
        JobError,
        job_info,
        job_logs,
        last_error_line,
        last_progress_line,
    )
    from curation.jobs import list_jobs as jobs_of

    client = _client(address)
    try:
        if target is None:
            jobs = jobs_of(client)
            if as_json:
                typer.echo(json.dumps(jobs, indent=2))
            for j in [] if as_json else jobs:
                typer.echo(f"{j['job_id']:<44} {j['status']:<10} {j['output'] or ''}")
            if not jobs and not as_json:
                typer.echo(f"no jobs on {client.curate_address}")
            return
        info = job_info(client, target)
        logs = job_logs(client, target) if info["status"] != "PENDING" else ""
    except JobError as exc:
        _fail(str(exc), code=1)
    out = info["metadata"].get("curate_output")
    progress = run_progress(out) if out and _is_run_folder(out) else None
    if as_json:
        info["run"] = progress.to_dict() if progress else None
        info["last_line"] = last_progress_line(logs)
        typer.echo(json.dumps(info, indent=2))
        return
    when = ""
    if info["start_time"]:
        end = info["end_time"] or time.time()
        when = f", {end - info['start_time']:.0f} s" + ("" if info["end_time"] else " so far")
    typer.echo(f"job {target}: {info['status']}{when}")
    if info["status"] == "FAILED":
        typer.echo(f"  {last_error_line(logs) or info['message']}")
    if progress is not None:
        typer.echo(format_progress(progress))
    else:
        last = last_progress_line(logs)
        where = "was not written" if info["status"] in TERMINAL else "not written yet"
        typer.echo(
            f"run folder {out or '?'}: {where}, or not on this machine"
            + (f"; last: {last}" if last else "")
        )


def _is_run_folder(spec: str) -> bool:
    """Whether ``spec`` (a path or a URL; a job id is neither) names a folder we can read."""
    from manifests.storage import location

    try:
        return location(spec).is_dir()
    except OSError:  # e.g. an object store that refuses us: no folder to show
        return False


def logs(
    job_id: Annotated[str, typer.Argument(help="The job id printed by curate submit.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")
    ] = False,
    address: Address = None,
) -> None:
    """The job's output (the run's progress lines); --follow streams it until the job ends."""
    from curation.jobs import JobError, follow_logs, job_logs

    client = _client(address)
    try:
        if not follow:
            typer.echo(job_logs(client, job_id), nl=False)
            return
        final = follow_logs(client, job_id, lambda text: typer.echo(text, nl=False))
    except JobError as exc:
        _fail(str(exc), code=1)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    typer.echo(f"job {job_id}: {final}", err=True)
    if final == "FAILED":
        raise typer.Exit(1)


def stop(
    job_id: Annotated[str, typer.Argument(help="The job id printed by curate submit.")],
    address: Address = None,
    wait_s: Annotated[float, typer.Option(help="Seconds to wait for the job to end.")] = 30.0,
) -> None:
    """Stop a job; a later `curate submit` (or `curate run`) of the same run resumes it."""
    from curation.jobs import JobError, stop_job

    client = _client(address)
    try:
        info = stop_job(client, job_id, timeout_s=wait_s)
    except JobError as exc:
        _fail(str(exc), code=1)
    typer.echo(f"job {job_id}: {info['status']}")


def register(app: typer.Typer) -> None:
    """Add submit / status / logs / stop to the ``curate`` app."""
    app.command()(submit)
    app.command()(status)
    app.command()(logs)
    app.command()(stop)
