"""Progress of a run folder, read from the run's own files: no Ray, works on a live run.

Each stage marks finished work the same way on every run, and this module only reads those
marks: a download shard is done when img2dataset has written its ``_stats.json`` (URL lists)
or its manifest part is published; a score or filter part when its manifest exists; a patch
part when its ``.done.json`` marker exists. Totals come from the previous stage's output (or,
for the download stage, from the fetch list / the source folder), so a total is known once the
stage before has run. Kept / rejected / failed are the rows of the stage's manifests: every
input row once, as it stands after that stage (patch counts tiles, and images that failed).

Throughput and ETA of the running stage count only the shards finished since that stage
started in the current run (``.curate.lock`` says when the run started; ``run.json`` is
rewritten after each stage); finished stages take their time from ``run.json``.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from curation.run import STAGES
from curation.run_lock import (
    LOCK_NAME,
    describe_holder,
    lease_fresh,
    process_gone,
    read_lock_info,
)
from manifests.storage import (
    Location,
    is_remote,
    join,
    location,
    parquet_rows,
    read_parquet,
    relpath,
)

_SHARD = re.compile(r"^(\d{5})(?:\.parquet|_stats\.json)$")
_KEPT = {"downloaded", "scored", "kept"}
_REJECTED = {"rejected", "prefiltered"}


@dataclass
class StageProgress:
    stage: str
    state: str = "pending"  # done | running | partial | pending
    shards_done: int = 0
    shards_total: int | None = None  # None: not known yet (the stage before has not run)
    kept: int = 0
    rejected: int = 0
    failed: int = 0
    unit: str = "rows"  # what kept / rejected / failed count: rows, or tiles for patch
    seconds: float | None = None  # the stage's time (finished) or time so far (running)
    rows_per_s: float | None = None  # input rows (images) handled per second
    eta_s: float | None = None
    # (finished at, input rows) per finished shard: what throughput is computed from
    _marks: list[tuple[float, int]] = field(default_factory=list, repr=False)


@dataclass
class RunProgress:
    run_dir: str
    pipeline: str | None
    state: str  # running | stopped | finished | incomplete | empty
    holder: dict | None = None  # the lock file's content while running (pid, host, ...)
    started_at: float | None = None
    stages: list[StageProgress] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = asdict(self)
        for s in out["stages"]:
            s.pop("_marks", None)
        return out


def run_progress(run_dir: str | os.PathLike, now: float | None = None) -> RunProgress:
    """Everything ``curate status RUN_DIR`` shows (RUN_DIR: a path or a URL); ``now`` is for
    tests (default: time.time())."""
    run_dir = location(run_dir)
    now = time.time() if now is None else now
    cfg = _read_config(run_dir)
    card = _read_json(run_dir / "run.json") or {}
    card_mtime = _mtimes(run_dir).get("run.json")
    holder = read_lock_info(run_dir)
    lock_exists = (run_dir / LOCK_NAME).exists()
    stages = [
        _download(run_dir, cfg),
        _count_parts(run_dir, "score", "download"),
        _count_parts(run_dir, "filter", "score"),
        _patch(run_dir),
    ]
    for before, s in zip(stages, stages[1:], strict=False):
        if before.shards_total is None or before.shards_done < before.shards_total:
            s.shards_total = None  # its input is not complete: the total is not known yet
    alive = lock_exists and holder_alive(holder)
    progress = RunProgress(
        str(run_dir), (cfg or {}).get("name") or card.get("pipeline"), "empty", holder=holder
    )
    progress.stages = stages
    finished_this_run: set[str] = set()
    if holder and card_mtime and card_mtime >= holder.get("started_at", 0):
        finished_this_run = set(card.get("stages", {}))
    for s in stages:
        info = card.get("stages", {}).get(s.stage)
        complete = s.shards_total is not None and s.shards_done >= s.shards_total
        if complete and (s.shards_total or info):
            s.state = "done"
        elif s.shards_done:
            s.state = "partial"
        if info and (s.state == "done" or not alive):
            s.seconds = info["seconds"]
            rows = sum(info["counts"].values())
            if s.stage == "patch":
                rows = sum(n for _, n in s._marks)  # images, not tiles
            s.rows_per_s = rows / info["seconds"] if info["seconds"] > 0 else None
    if alive:
        progress.state = "running"
        progress.started_at = holder.get("started_at")
        requested = [s for s in stages if s.stage in (holder.get("stages") or STAGES)]
        current = next((s for s in requested if s.stage not in finished_this_run), None)
        if current is not None:
            start = progress.started_at or now
            if card_mtime and finished_this_run and card_mtime > start:
                start = card_mtime  # run.json is rewritten when a stage ends
            _estimate(current, start, now)
    elif lock_exists:
        progress.state = "stopped"  # its process is gone: a rerun resumes (and takes the lock)
    elif any(s.shards_done for s in stages) or card:
        wanted = [s for s in stages if s.stage in card.get("stages", {})] or stages[:1]
        progress.state = "finished" if all(s.state == "done" for s in wanted) else "incomplete"
    return progress


def _estimate(s: StageProgress, start: float, now: float) -> None:
    s.state = "running"
    s.seconds = max(now - start, 0.0)
    recent = [(t, n) for t, n in s._marks if t >= start]
    if not recent or s.seconds <= 0:
        return
    s.rows_per_s = sum(n for _, n in recent) / s.seconds
    if s.shards_total is not None:
        left = max(s.shards_total - s.shards_done, 0)
        s.eta_s = left * s.seconds / len(recent)


def _download(run_dir: Location, cfg: dict | None) -> StageProgress:
    s = StageProgress("download")
    out = run_dir / "download"
    if cfg is None:
        return s
    per = max(int(cfg.get("download", {}).get("samples_per_shard", 1) or 1), 1)
    total: int | None = 0
    for src in cfg.get("sources", []):
        dest = out / src["name"]
        n_rows = _source_rows(src, dest)
        if n_rows is None:
            total = None
        elif total is not None:
            total += math.ceil(n_rows / per)
        finished: dict[str, tuple[float, int]] = {}
        for folder in (dest / "_work" / "img2dataset", dest):
            for name, mtime in sorted(_mtimes(folder).items()):
                m = _SHARD.match(name)
                if m and m[1] not in finished:
                    finished[m[1]] = (mtime, per)
        s.shards_done += len(finished)
        s._marks += finished.values()
        _add_counts(s, dest)
    s.shards_total = total
    return s


def _source_rows(src: dict, dest: Location) -> int | None:
    """Rows that go to the downloader: the fetch list's (URL lists) or the folder's files."""
    if src.get("kind", "laion") == "laion":
        fetch = dest / "_work" / "fetch.parquet"
        if fetch.is_file():
            return parquet_rows(fetch)
        # everything prefiltered: no fetch list; not started: nothing at all
        return 0 if (dest / "prefiltered.parquet").is_file() else None
    try:
        from curation.config import SourceConfig
        from curation.sources import list_image_folder

        return len(list_image_folder(SourceConfig.model_validate(src))[0])
    except Exception:  # a folder gone or unreadable: the total is unknown, not an error
        return None


def _count_parts(run_dir: Location, stage: str, before: str) -> StageProgress:
    """Score and filter: one output manifest per input manifest part, same relative path."""
    from manifests import IMAGE, find_manifests

    s = StageProgress(stage)
    inp, out = run_dir / before, run_dir / stage
    if not inp.is_dir():
        return s
    parts = find_manifests(inp, IMAGE)
    s.shards_total = len(parts)
    written = _mtimes(out, recursive=True)
    for part in parts:
        t = written.get(relpath(part, inp))
        if t is not None:
            s.shards_done += 1
            s._marks.append((t, _num_rows(part)))
    if out.is_dir():
        _add_counts(s, out)
    return s


def _patch(run_dir: Location) -> StageProgress:
    from manifests import IMAGE, find_manifests

    s = StageProgress("patch", unit="tiles")
    inp, out = run_dir / "filter", run_dir / "patch"
    if not inp.is_dir():
        return s
    parts = find_manifests(inp, IMAGE)
    s.shards_total = len(parts)
    written = _mtimes(out, recursive=True)
    for part in parts:
        rel = posixpath.join(posixpath.dirname(relpath(part, inp)), part.stem + ".done.json")
        done = _read_json(join(out, rel)) if rel in written else None
        if done is None:
            continue
        c = done.get("counts", {})
        s.shards_done += 1
        s.kept += c.get("kept", 0)
        s.rejected += c.get("tiles", 0) - c.get("kept", 0)
        s.failed += c.get("images_failed", 0)
        s._marks.append((written[rel], c.get("images", 0)))
    return s


def _add_counts(s: StageProgress, folder: Location) -> None:
    from manifests import IMAGE, find_manifests

    for path in find_manifests(folder, IMAGE):
        try:
            statuses = read_parquet(path, columns=["status"])["status"].to_pylist()
        except OSError:  # replaced while we read it: counted on the next look
            continue
        for st in statuses:
            if st in _KEPT:
                s.kept += 1
            elif st in _REJECTED:
                s.rejected += 1
            else:
                s.failed += 1


def _num_rows(path: Location) -> int:
    try:
        return parquet_rows(path)
    except OSError:
        return 0


def holder_alive(holder: dict | None) -> bool:
    """Whether the run named in the lock file runs: for a remote lease, whether its heartbeat
    is fresh; else whether its process runs (another host's: assumed to)."""
    if not holder or "pid" not in holder:
        return True  # the lock file is being written: a run is starting
    if "heartbeat_at" in holder:
        return lease_fresh(holder)
    return not process_gone(holder)


def _read_config(run_dir: Location) -> dict | None:
    try:
        import yaml

        return yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, ValueError):
        return None


def _read_json(path: Location) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _mtimes(folder: Location, recursive: bool = False) -> dict[str, float]:
    """Modification time of each file in ``folder`` (or under it), by ``/``-separated path
    relative to it. One listing, not one call per file: on an object store that is the
    difference between one request and thousands."""
    try:
        if not is_remote(folder):
            found = {}
            for dirpath, dirs, names in os.walk(folder):
                dirs[:] = dirs if recursive else []
                for name in names:
                    path = os.path.join(dirpath, name)
                    try:
                        found[Path(os.path.relpath(path, folder)).as_posix()] = os.stat(
                            path
                        ).st_mtime
                    except OSError:  # a temp file renamed meanwhile
                        pass
            return found
        from upath._stat import UPathStatResult  # the mtime UPath.stat() would give

        base = folder.path.rstrip("/")
        if recursive:
            infos = folder.fs.find(base, detail=True)
        else:
            infos = {i["name"]: i for i in folder.fs.ls(base, detail=True)}
        return {
            posixpath.relpath(name, base): UPathStatResult.from_info(info).st_mtime
            for name, info in infos.items()
            if info.get("type") == "file"
        }
    except OSError:  # not there (yet), or being replaced: nothing written
        return {}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def format_progress(p: RunProgress) -> str:
    """A plain-text table: one line per stage."""
    head = f"run {p.run_dir} (pipeline {p.pipeline or '?'}): {p.state}"
    if p.state == "running":
        head += f" ({describe_holder(p.holder)})"
    elif p.state == "stopped":
        head += f": its process is gone ({describe_holder(p.holder)}); rerun it to resume"
    elif p.state == "empty":
        return head + ": nothing written yet (no config.yaml or manifests)"
    lines = [
        head,
        f"  {'stage':<9} {'state':<8} {'shards':>9} {'kept':>8} {'rejected':>9} {'failed':>7}"
        f" {'rows/s':>8} {'time':>8} {'ETA':>8}",
    ]
    for s in p.stages:
        total = "?" if s.shards_total is None else str(s.shards_total)
        rate = "-" if s.rows_per_s is None else f"{s.rows_per_s:.1f}"
        unit = " tiles" if s.unit == "tiles" and (s.kept or s.rejected) else ""
        lines.append(
            f"  {s.stage:<9} {s.state:<8} {f'{s.shards_done}/{total}':>9} {s.kept:>8} "
            f"{s.rejected:>9} {s.failed:>7} {rate:>8} {_duration(s.seconds):>8} "
            f"{_duration(s.eta_s):>8}{unit}"
        )
    return "\n".join(lines)
