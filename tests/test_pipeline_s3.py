"""Whole runs with inputs and outputs on an object store: a real S3 API server (moto's) on
127.0.0.1, reached through fsspec/s3fs exactly as a bucket on AWS or any S3-compatible store.

Credentials come from the environment (AWS_* variables, set by the fixture), as in production.
"""

from __future__ import annotations

import os
import signal
import tarfile
import time
from pathlib import Path

import pytest

from curation.config import PipelineConfig
from curation.sources import expand_parquet_inputs, read_url_list
from curation.stages.download import DownloadStage
from manifests import read_manifest, validate
from manifests.storage import location, walk_files
from tests.conftest import REPO
from tests.demo_run import curate_run, snapshot
from tests.images import encode, textured

pytestmark = pytest.mark.timeout(900)


def _put_tree(local: Path, remote: str) -> None:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            (location(remote) / path.relative_to(local).as_posix()).write_bytes(path.read_bytes())


def _bucket_names(root: str) -> list[str]:
    """Every object under ``root``, as the store lists it now (locations cache no listing)."""
    loc = location(root)
    return sorted(loc.fs.find(loc.path))


def test_folder_source_on_an_object_store_ingests_like_a_local_one(s3_bucket, tmp_path):
    root = tmp_path / "DIV2K"
    (root / "sub").mkdir(parents=True)
    (root / "0001.png").write_bytes(encode(textured(300, 280, 1), "PNG"))
    (root / "sub" / "0002.jpg").write_bytes(encode(textured(300, 300, 2)))
    (root / "fake.jpg").write_text("not an image")
    (root / "README.txt").write_text("not an input")
    _put_tree(root, s3_bucket + "/DIV2K")

    def run(src: str, out) -> list[dict]:
        cfg = PipelineConfig.model_validate(
            {
                "name": "f",
                "sources": [{"name": "div2k", "kind": "folder", "path": [src]}],
                "download": {"min_side": 256, "samples_per_shard": 2},
            }
        )
        logs = []
        DownloadStage(cfg, out, log=logs.append).run()
        assert any("ignored 1 file" in line for line in logs)
        assert validate(out).ok
        return read_manifest(location(out) / "download", "image").to_pylist()

    remote = run(s3_bucket + "/DIV2K", s3_bucket + "/run")
    local = run(str(root), tmp_path / "run")
    assert [r["url"] for r in remote] == [
        f"{s3_bucket}/DIV2K/{n}" for n in ("0001.png", "fake.jpg", "sub/0002.jpg")
    ]
    # the same keys (relative names), statuses and bytes; only the URLs differ
    drop = {"url"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in remote] == [
        {k: v for k, v in r.items() if k not in drop} for r in local
    ]
    for name in ("00000.tar", "00001.tar"):
        with tarfile.open(
            fileobj=(location(s3_bucket) / "run/download/div2k" / name).open("rb")
        ) as a:
            with tarfile.open(tmp_path / "run/download/div2k" / name) as b:
                assert [m.name for m in a] == [m.name for m in b]


def test_url_lists_on_an_object_store(s3_bucket, tmp_path):
    demo = REPO / "pipelines" / "demo" / "urls.parquet"
    for name in ("a/1.parquet", "a/2.parquet", "b/3.parquet"):
        (location(s3_bucket) / "lists" / name).write_bytes(demo.read_bytes())
    by_glob = expand_parquet_inputs([s3_bucket + "/lists/*/*.parquet"])
    by_folder = expand_parquet_inputs([s3_bucket + "/lists/a"])
    assert [str(p) for p in by_glob] == [
        f"{s3_bucket}/lists/{n}" for n in ("a/1.parquet", "a/2.parquet", "b/3.parquet")
    ]
    assert [str(p) for p in by_folder] == [str(p) for p in by_glob[:2]]
    cfg = PipelineConfig.model_validate(
        {
            "name": "x",
            "sources": [{"name": "s", "kind": "laion", "path": [s3_bucket + "/lists/a/1.parquet"]}],
        }
    )
    local = cfg.model_copy(deep=True)
    local.sources[0].path = [str(demo)]
    a, b = read_url_list(cfg.sources[0]), read_url_list(local.sources[0])
    # keys of repeated URLs include the file they came from; every other column is the same
    assert a.drop_columns(["key"]).equals(b.drop_columns(["key"]))
    dup = a["_duplicate_url"].to_pylist()
    assert [k for k, d in zip(a["key"].to_pylist(), dup, strict=True) if not d] == [
        k for k, d in zip(b["key"].to_pylist(), dup, strict=True) if not d
    ]


def test_demo_on_an_object_store_killed_and_resumed_equals_a_local_run(s3_bucket, clean_demo_run):
    """The whole demo (img2dataset, Ray scorers, Ray patch tasks) with ``--output s3://...``,
    killed once a patch part is published, then rerun: the bucket ends up with exactly the
    manifests and patch tars of an uninterrupted local run, and no half object is ever seen."""
    out = s3_bucket + "/runs/demo"
    proc = curate_run(out)
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        if any(n.endswith(".done.json") for n in _bucket_names(out + "/patch")):
            break
        time.sleep(0.5)
    assert proc.poll() is None, f"the run ended before the kill point: {proc.stderr.read()}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # every published tar is whole; nothing is left under a temp name
    for tar in walk_files(location(out), ".tar"):
        with tar.open("rb") as f, tarfile.open(fileobj=f) as tf:
            tf.getmembers()
    assert not [n for n in _bucket_names(out) if ".tmp-" in n]

    again = curate_run(out)
    assert again.wait(timeout=600) == 0, again.stderr.read()
    assert validate(out).ok
    assert snapshot(out) == snapshot(clean_demo_run)
    names = _bucket_names(out)
    assert not [n for n in names if ".tmp-" in n or n.endswith(".curate.lock")]
    card = location(out) / "run.json"
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in card.read_text()
