"""Run folders on an object store (a real S3 API server, moto's, on 127.0.0.1): the run lock as
a lease, `curate status` and `curate manifest validate|stats` on s3:// URLs."""

from __future__ import annotations

import json
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curation import run_lock
from curation.cli import app
from curation.progress import run_progress
from curation.run_lock import LOCK_NAME, acquire_run_lock, read_lock_info, release_run_lock
from curation.stages.base import RunDirError
from manifests import IMAGE, write_manifest
from manifests.storage import location, write_text_atomic

SECRET = "testing-secret-never-logged"  # tests/s3_server.py's AWS_SECRET_ACCESS_KEY


def _rows(stage: str, statuses: list[str], shard: str = "00000.tar") -> list[dict]:
    return [
        {
            "key": f"k{i}",
            "source": "src",
            "url": f"http://example.invalid/{i}.jpg",
            "stage": stage,
            "status": st,
            "shard": shard if st in ("downloaded", "scored", "kept") else None,
            "error": "http 404" if st == "failed" else None,
        }
        for i, st in enumerate(statuses)
    ]


def _finished_run(root) -> None:
    """A small finished run of all four stages, its files as the stages write them."""
    config = {
        "name": "tiny",
        "sources": [{"name": "src", "kind": "laion"}],
        "download": {"samples_per_shard": 2},
    }
    write_text_atomic(root / "config.yaml", json.dumps(config))  # JSON is YAML
    src = root / "download" / "src"
    with (src / "_work" / "fetch.parquet").open("wb") as f:  # the fetch list: 2 rows, 1 shard
        pq.write_table(pa.table({"url": ["a", "b"]}), f)
    write_text_atomic(src / "00000.tar", "tar bytes")
    write_manifest(_rows("download", ["downloaded", "failed"]), src / "00000.parquet", IMAGE)
    write_text_atomic(root / "score" / "src" / "00000.tar", "tar bytes")
    write_manifest(_rows("score", ["scored", "failed"]), root / "score/src/00000.parquet", IMAGE)
    kept = _rows("filter", ["kept", "failed"], shard="../../score/src/00000.tar")  # a ../ path
    write_manifest(kept, root / "filter" / "src" / "00000.parquet", IMAGE)
    done = {"counts": {"images": 1, "tiles": 3, "kept": 2, "images_failed": 0}}
    write_text_atomic(root / "patch" / "src" / "00000.done.json", json.dumps(done))
    card = {
        "pipeline": "tiny",
        "stages": {
            "download": {"seconds": 2.0, "counts": {"downloaded": 1, "failed": 1}},
            "score": {"seconds": 1.0, "counts": {"scored": 1, "failed": 1}},
            "filter": {"seconds": 1.0, "counts": {"kept": 1, "failed": 1}},
            "patch": {"seconds": 1.0, "counts": {"kept": 2, "rejected": 1}},
        },
    }
    write_text_atomic(root / "run.json", json.dumps(card))


def test_lease_is_exclusive_and_released(s3_bucket: str) -> None:
    run_dir = location(s3_bucket + "/run")
    lease = acquire_run_lock(run_dir, ["download"])
    try:
        info = read_lock_info(run_dir)
        assert info["pid"] == os.getpid() and info["heartbeat_at"] <= time.time()
        raw = (run_dir / LOCK_NAME).read_text()
        assert SECRET not in raw
        with pytest.raises(
            RunDirError, match=rf"in use by another curate run \(pid {os.getpid()} "
        ) as e:
            acquire_run_lock(location(s3_bucket + "/run"), ["score"])
        assert "\n" not in str(e.value) and str(run_dir) in str(e.value)
        assert run_progress(run_dir).state == "running"
    finally:
        release_run_lock(run_dir, lease)
    assert not (run_dir / LOCK_NAME).exists()
    release_run_lock(run_dir, acquire_run_lock(run_dir, ["download"]))  # free again


def test_a_stale_lease_is_taken_over(s3_bucket: str) -> None:
    run_dir = location(s3_bucket + "/run")
    dead = {"pid": 1, "host": "gone", "started_at": 0, "stages": ["download"], "command": []}
    dead |= {"lease": "dead", "heartbeat_at": time.time() - run_lock.LEASE_S - 5}
    write_text_atomic(run_dir / LOCK_NAME, json.dumps(dead))
    p = run_progress(run_dir)
    assert p.state == "stopped"  # status: the holder is gone, a rerun resumes
    lease = acquire_run_lock(run_dir, ["download"])
    try:
        assert read_lock_info(run_dir)["lease"] == lease.info["lease"] != "dead"
    finally:
        release_run_lock(run_dir, lease)
    assert not (run_dir / LOCK_NAME).exists()


def test_the_heartbeat_refreshes_and_never_overwrites_a_new_holder(s3_bucket, monkeypatch):
    monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.2)
    run_dir = location(s3_bucket + "/run")
    lease = acquire_run_lock(run_dir, ["download"])
    try:
        first = read_lock_info(run_dir)["heartbeat_at"]
        deadline = time.time() + 20
        while read_lock_info(run_dir)["heartbeat_at"] == first and time.time() < deadline:
            time.sleep(0.1)
        assert read_lock_info(run_dir)["heartbeat_at"] > first
        # Another run took the lease over (we looked dead): ours stops beating, and releasing
        # ours leaves theirs in place.
        other = {**read_lock_info(run_dir), "lease": "other", "pid": 12345}
        write_text_atomic(run_dir / LOCK_NAME, json.dumps(other))
        time.sleep(1.0)
        assert read_lock_info(run_dir) == other
    finally:
        release_run_lock(run_dir, lease)
    assert read_lock_info(run_dir)["lease"] == "other"


def test_an_unwritable_remote_output_is_one_line(s3_endpoint: str) -> None:
    missing = location("s3://curate-no-such-bucket/run")
    with pytest.raises(RunDirError) as e:
        acquire_run_lock(missing, ["download"])
    message = str(e.value)
    assert message.startswith("cannot write to the output folder s3://curate-no-such-bucket/run: ")
    assert "\n" not in message and "bucket does not exist" in message
    result = CliRunner().invoke(
        app, ["run", "--stage", "download", "--output", "s3://curate-no-such-bucket/run"]
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert (
        "error: cannot write to the output folder s3://curate-no-such-bucket/run" in result.output
    )


def test_status_validate_and_stats_of_a_run_on_an_object_store(s3_bucket: str) -> None:
    url = s3_bucket + "/run"
    _finished_run(location(url))
    runner = CliRunner()

    result = runner.invoke(app, ["status", url])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"run {url} (pipeline tiny): finished"
    table = {ln.split()[0]: ln.split()[1:6] for ln in lines[2:]}
    assert table == {
        "download": ["done", "1/1", "1", "0", "1"],
        "score": ["done", "1/1", "1", "0", "1"],
        "filter": ["done", "1/1", "1", "0", "1"],
        "patch": ["done", "1/1", "2", "1", "0"],
    }

    result = runner.invoke(app, ["manifest", "validate", url])
    assert result.exit_code == 0, result.output
    assert "OK: 3 manifest file(s), 6 rows" in result.output  # _work/ is skipped

    result = runner.invoke(app, ["manifest", "stats", url, "--json"])
    assert result.exit_code == 0, result.output
    groups = json.loads(result.output)["groups"]
    assert list(groups) == ["download", "score", "filter"] and groups["score"]["rows"] == 2

    # A missing shard is a problem found on the object store too.
    location(url + "/score/src/00000.tar").unlink()
    result = runner.invoke(app, ["manifest", "validate", url])
    assert result.exit_code == 1
    assert "score/src/00000.parquet: shard 00000.tar does not exist" in result.output
    assert (
        "filter/src/00000.parquet: shard ../../score/src/00000.tar does not exist" in result.output
    )

    result = runner.invoke(app, ["status", s3_bucket + "/nothing-here"])
    assert result.exit_code == 2 and "no such run folder" in result.output
