"""Run a pipeline's stages in order into one run folder, and describe the run.

The run folder holds ``config.yaml`` (the resolved config), ``run.json`` (versions, seed,
timings, counts) and one sub-folder per stage.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import socket
import sys
import time
from pathlib import Path

from curation.config import PipelineConfig, dump_config
from curation.stages.base import RunDirError, StageSummary, write_json_atomic

STAGES = ("download", "score", "filter", "patch")
#: Held (flock) by the run writing a run folder; removed when it ends. A run killed hard
#: leaves the file behind but not the lock (the kernel drops it): the next run takes it.
LOCK_NAME = ".curate.lock"


class StageUnavailable(RuntimeError):
    """A stage that this version of curate does not implement yet."""


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("curate", "img2dataset", "ray", "pyarrow", "webdataset", "pyiqa", "torch"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def stage_class(name: str):
    if name == "download":
        from curation.stages.download import DownloadStage

        return DownloadStage
    if name == "score":
        from curation.stages.score import ScoreStage

        return ScoreStage
    if name == "filter":
        from curation.stages.filter import FilterStage

        return FilterStage
    if name == "patch":
        from curation.stages.patch import PatchStage

        return PatchStage
    raise StageUnavailable(f"stage {name!r} is not available yet in this version of curate")


def run_pipeline(
    cfg: PipelineConfig, run_dir: Path, stages: list[str], address: str | None = None, log=print
) -> list[StageSummary]:
    """Run ``stages`` in order; stops at the first unavailable stage (reported, not an error)."""
    if "score" in stages:
        # Refuse before downloading anything when the scoring setup cannot run.
        from curation.stages.score import available_metrics

        available_metrics(cfg)
    lock = acquire_run_lock(run_dir, stages)
    try:
        (run_dir / "config.yaml").write_text(dump_config(cfg))
        summaries: list[StageSummary] = []
        try:
            _run_stages(cfg, run_dir, stages, address, log, summaries)
        finally:
            from curation.ray_runtime import shutdown_ray

            shutdown_ray()
    finally:
        release_run_lock(run_dir, lock)
    return summaries


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


#: Option values and URL parts that may carry credentials; never written to run cards.
_SECRET_WORD = re.compile(r"token|secret|passw|credential|api_?key|access_?key|auth", re.I)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]*@", re.I)
_URL_QUERY_SECRET = re.compile(
    r"(?P<key>[?&][^=&#\s]*(?:token|secret|signature|sig|key|credential|password)[^=&#\s]*=)[^&#\s]*",
    re.I,
)


def redact(text: str) -> str:
    """``text`` with URL passwords and secret-looking query values replaced by ``***``."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    return _URL_QUERY_SECRET.sub(lambda m: m["key"] + "***", text)


def redact_argv(argv: list[str]) -> list[str]:
    """A command line safe to record: ``--set a.token=...`` style values, ``--token X`` style
    options and credentials inside URLs become ``***``."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append("***")
            hide_next = False
            continue
        opt, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        if opt and _SECRET_WORD.search(opt):  # --token=X, or --token X
            out.append(f"{opt}=***" if eq else arg)
            hide_next = not eq
            continue
        key, eq2, _ = value.partition("=")  # a --set value: key.path=value
        if eq2 and _SECRET_WORD.search(key):
            out.append(f"{opt}{eq}{key}=***")
            continue
        out.append(redact(arg))
    return out


def _run_stages(cfg, run_dir, stages, address, log, summaries) -> None:
    for name in stages:
        try:
            cls = stage_class(name)
        except StageUnavailable as exc:
            log(f"[{name}] {exc}; stopping here")
            break
        summaries.append(cls(cfg, run_dir, address=address, log=log).run())
        card = {
            "pipeline": cfg.name,
            "seed": cfg.seed,
            "command": redact_argv(sys.argv),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": _versions(),
            "stages": {
                s.stage: {"seconds": round(s.seconds, 3), "counts": s.counts, "notes": s.notes}
                for s in summaries
            },
        }
        write_json_atomic(run_dir / "run.json", card)
        _write_text_atomic(run_dir / "RUNCARD.md", format_run_card(card, dump_config(cfg)))


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def format_run_card(card: dict, config_yaml: str) -> str:
    """A human-readable card of the run: what ran, with what, what came out, what to know."""
    lines = [
        f"# Run card: {card['pipeline']}",
        "",
        f"- finished: {card['finished_at']}",
        f"- seed: {card['seed']}",
        f"- command: `{' '.join(card['command'])}`",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in card["versions"].items()),
        "",
        "## Stages",
    ]
    for stage, info in card["stages"].items():
        lines += [
            "",
            f"### {stage} ({info['seconds']:.1f} s, {sum(info['counts'].values())} rows)",
            "",
        ]
        lines += [f"- {k}: {n}" for k, n in sorted(info["counts"].items())]
        lines += [f"- **NOTE: {n}**" for n in info["notes"]]
    lines += ["", "## Resolved config", "", "```yaml", config_yaml.rstrip(), "```", ""]
    return "\n".join(lines)


def format_summary(summaries: list[StageSummary]) -> str:
    lines = []
    for s in summaries:
        total = sum(s.counts.values())
        lines.append(f"{s.stage}: {total} rows in {s.seconds:.1f} s")
        for key, n in sorted(s.counts.items()):
            lines.append(f"  {key:<40} {n:>8}")
        lines += [f"  note: {n}" for n in s.notes]
    return "\n".join(lines)
