"""`curate status RUN_DIR` on a real run folder at several points, and the run folder's lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from curation.config import PipelineConfig
from curation.progress import format_progress, run_progress
from curation.redact import redact_argv
from curation.run import run_pipeline
from curation.run_lock import LOCK_NAME, acquire_run_lock, release_run_lock
from curation.stages.base import RunDirError
from tests.images import encode, textured

CURATE = [sys.executable, "-m", "curation.cli"]


def _config(images: Path) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": "tiny",
            "sources": [{"name": "tiny", "kind": "folder", "path": [str(images)]}],
            "download": {"min_side": 256, "samples_per_shard": 2},
            "score": {"metrics": ["niqe", "brisque"], "workers": 1},
            "filter": {"min_side": 256},
        }
    )


@pytest.fixture
def images(tmp_path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    for i in range(6):  # 3 shards of 2; 600x560: one 512 tile each
        (root / f"im{i}.jpg").write_bytes(encode(textured(600, 560, i)))
    return root


def _stage(progress, name):
    return next(s for s in progress.stages if s.stage == name)


def _status_cli(run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CURATE, "status", str(run_dir)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_status_of_a_local_run_at_several_points(tmp_path, images):
    run_dir = tmp_path / "run"
    cfg = _config(images)
    assert run_progress(run_dir).state == "empty"

    run_pipeline(cfg, run_dir, ["download"], log=lambda *_: None)
    p = run_progress(run_dir)
    dl = _stage(p, "download")
    assert p.state == "finished" and not (run_dir / LOCK_NAME).exists()
    assert (dl.state, dl.shards_done, dl.shards_total, dl.kept, dl.failed) == ("done", 3, 3, 6, 0)
    assert dl.seconds is not None and dl.rows_per_s > 0
    assert (_stage(p, "score").state, _stage(p, "score").shards_total) == ("pending", 3)

    # a lost shard: the stage is partial again, and the next stage's total is unknown
    (run_dir / "download" / "tiny" / "00001.parquet").unlink()
    p = run_progress(run_dir)
    assert p.state == "incomplete"
    assert (_stage(p, "download").state, _stage(p, "download").shards_done) == ("partial", 2)
    assert _stage(p, "score").shards_total is None
    run_pipeline(cfg, run_dir, ["download"], log=lambda *_: None)  # resumes that shard only

    run_pipeline(cfg, run_dir, ["score", "filter", "patch"], log=lambda *_: None)
    p = run_progress(run_dir)
    assert p.state == "finished"
    by = {s.stage: s for s in p.stages}
    assert all((s.state, s.shards_done, s.shards_total) == ("done", 3, 3) for s in p.stages)
    assert (by["score"].kept, by["score"].rejected, by["score"].failed) == (6, 0, 0)
    assert by["filter"].kept + by["filter"].rejected == 6
    assert by["patch"].unit == "tiles"
    assert by["patch"].kept + by["patch"].rejected == by["filter"].kept  # one tile per image
    text = format_progress(p)
    assert "download  done           3/3" in text and "patch     done" in text

    proc = _status_cli(run_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == f"run {run_dir} (pipeline tiny): finished"
    data = json.loads(
        subprocess.run(
            [*CURATE, "status", str(run_dir), "--json"], capture_output=True, text=True, timeout=120
        ).stdout
    )
    assert [s["shards_done"] for s in data["stages"]] == [3, 3, 3, 3]

    # A live run of score .. patch that has redone two score parts so far: throughput and ETA
    # come from the parts finished since the stage started.
    parts = sorted((run_dir / "score" / "tiny").glob("0000*.parquet"))
    parts[2].unlink()
    fd = acquire_run_lock(run_dir, ["score", "filter", "patch"])
    try:
        started = json.loads((run_dir / LOCK_NAME).read_text())["started_at"]
        os.utime(run_dir / "run.json", (started - 100, started - 100))  # a previous run's card
        for part, dt in zip(parts[:2], (2, 4), strict=True):
            os.utime(part, (started + dt, started + dt))
        p = run_progress(run_dir, now=started + 6)
        score = _stage(p, "score")
        assert p.state == "running" and p.holder["pid"] == os.getpid()
        assert (score.state, score.shards_done, score.shards_total) == ("running", 2, 3)
        assert score.seconds == pytest.approx(6) and score.eta_s == pytest.approx(3)
        assert score.rows_per_s == pytest.approx(4 / 6)  # 2 parts of 2 images in 6 s
        assert _stage(p, "filter").shards_total is None
        assert f"pid {os.getpid()}" in _status_cli(run_dir).stdout
    finally:
        release_run_lock(run_dir, fd)
    assert not (run_dir / LOCK_NAME).exists()


_HOLDER = """
import sys, time
from pathlib import Path
from curation.run_lock import acquire_run_lock
acquire_run_lock(Path(sys.argv[1]), ["download"])
print("locked", flush=True)
time.sleep(600)
"""


@pytest.mark.timeout(180)
def test_two_runs_on_one_output_and_a_stale_lock(tmp_path, images):
    run_dir = tmp_path / "run"
    cfg = _config(images)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=rf"in use by another curate run \(pid {holder.pid} "):
            run_pipeline(cfg, run_dir, ["download"], log=lambda *_: None)
        assert not (run_dir / "config.yaml").exists()  # nothing of the refused run was written
        assert run_progress(run_dir).state == "running"
        proc = subprocess.run(
            [*CURATE, "run", "--stage", "download", "--output", str(run_dir)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2
        assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
        assert f"pid {holder.pid}" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding the lock: its lock file stays
        holder.wait(timeout=30)
    assert (run_dir / LOCK_NAME).exists()
    p = run_progress(run_dir)
    assert p.state == "stopped" and "rerun it to resume" in format_progress(p)
    run_pipeline(cfg, run_dir, ["download"], log=lambda *_: None)  # the stale lock is taken
    assert not (run_dir / LOCK_NAME).exists()
    assert run_progress(run_dir).state == "finished"


@pytest.mark.timeout(120)
def test_an_output_that_cannot_be_written_is_one_clear_line(tmp_path, images):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(RunDirError, match="cannot write to the output folder"):
        run_pipeline(_config(images), blocker / "run", ["download"], log=lambda *_: None)
    proc = subprocess.run(
        [*CURATE, "run", "--stage", "download", "--input", f"folder:{images}"]
        + ["--output", "/proc/curate-test-run", "--set", "download.min_side=256"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: cannot write to the output folder /proc/curate-test-run")


def test_no_secret_reaches_a_run_card():
    argv = [
        "curate",
        "run",
        "--set",
        "storage.secret_key=abc",
        "--set=storage.token=xyz",
        "--set",
        "download.min_side=512",
        "--input",
        "s3://user:pa55@bucket/urls.parquet?X-Amz-Signature=f00&part=1",
        "--auth-token",
        "t0k",
    ]
    safe = " ".join(redact_argv(argv))
    for secret in ("abc", "xyz", "pa55", "f00", "t0k"):
        assert secret not in safe
    assert "download.min_side=512" in safe and "part=1" in safe and "s3://user:***@" in safe
    assert redact_argv(["curate", "run", "--output", "runs/x"]) == [
        "curate",
        "run",
        "--output",
        "runs/x",
    ]


def test_status_of_a_missing_folder_is_an_error(tmp_path):
    proc = subprocess.run(
        [*CURATE, "status", str(tmp_path / "nope")], capture_output=True, text=True, timeout=60
    )
    assert (
        proc.returncode == 2
        and proc.stderr.startswith("error: ")
        and "no such run folder" in proc.stderr
    )


def test_status_of_a_run_folder_needs_no_ray():
    code = "import sys, curation.progress, curation.cli_cluster; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False"
