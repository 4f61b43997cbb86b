"""manifests.storage on a local folder, ``file://`` URLs and a real S3 API server (moto)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from manifests import IMAGE, find_manifests, read_manifest, write_manifest
from manifests.storage import (
    StorageError,
    atomic_output,
    is_remote,
    join,
    location,
    relpath,
    remove,
    walk_files,
    write_text_atomic,
)

ROWS = [{"key": "a", "source": "s", "url": "u", "stage": "download", "status": "downloaded"}]


def test_local_paths_and_file_urls_are_plain_paths(tmp_path: Path) -> None:
    assert location(str(tmp_path)) == tmp_path
    assert location(tmp_path.as_uri()) == tmp_path
    assert type(location(f"file://{tmp_path}/x")) is type(tmp_path)
    assert not is_remote(location(tmp_path))
    assert join(tmp_path / "a" / "b", "../c.tar") == tmp_path / "a" / "c.tar"
    assert relpath(tmp_path / "a" / "c.tar", tmp_path / "b") == "../a/c.tar"


def test_failed_write_leaves_nothing_under_the_final_name(tmp_path: Path) -> None:
    dest = tmp_path / "d" / "out.bin"
    with pytest.raises(RuntimeError), atomic_output(dest) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # the temp file went too


def test_walk_skips_scratch_folders_and_temp_files(tmp_path: Path) -> None:
    for name in ("b/2.parquet", "a/1.parquet", "_work/x.parquet", "a/.1.parquet.tmp-h", "c.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    got = [p.relative_to(tmp_path).as_posix() for p in walk_files(tmp_path, ".parquet")]
    assert got == ["a/1.parquet", "b/2.parquet"]


def test_object_store_paths(s3_bucket: str) -> None:
    root = location(s3_bucket + "/run")
    assert is_remote(root)
    shard = join(root / "score" / "src", "../../download/src/00000.tar")
    assert str(shard) == s3_bucket + "/run/download/src/00000.tar"
    assert relpath(shard, root / "score" / "src") == "../../download/src/00000.tar"


def test_object_store_publish_is_all_or_nothing(s3_bucket: str) -> None:
    dest = location(s3_bucket + "/run/out.bin")
    with pytest.raises(RuntimeError), atomic_output(dest) as tmp:
        tmp.write_bytes(b"x" * 1000)
        raise RuntimeError("writer died")
    assert not dest.exists()  # an fsspec file closed after an error would have committed it
    with atomic_output(dest) as tmp:
        tmp.write_bytes(b"y" * 1000)
    assert dest.read_bytes() == b"y" * 1000
    assert not tmp.exists()
    remove(dest)
    remove(dest)  # absent: no error
    assert not dest.exists()


def test_manifests_round_trip_on_an_object_store(s3_bucket: str, tmp_path: Path) -> None:
    root = location(s3_bucket + "/run")
    write_manifest(ROWS, root / "download" / "s" / "00000.parquet", IMAGE)
    write_manifest(ROWS, root / "download" / "s" / "_work" / "raw.parquet", IMAGE)
    write_text_atomic(root / "download" / "s" / "notes.txt", "not a manifest")
    found = find_manifests(root, IMAGE)
    assert [str(p) for p in found] == [s3_bucket + "/run/download/s/00000.parquet"]
    assert read_manifest(root, IMAGE).to_pylist()[0]["key"] == "a"
    local = write_manifest(ROWS, tmp_path / "00000.parquet", IMAGE)
    assert (root / "download" / "s" / "00000.parquet").read_bytes() == local.read_bytes()


def test_a_url_without_a_backend_is_one_line_error() -> None:
    with pytest.raises(StorageError, match="Protocol not known: nosuch"):
        location("nosuch://bucket/run")
    proc = subprocess.run(
        [sys.executable, "-m", "curation.cli", "manifest", "validate", "nosuch://bucket/run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr == "error: nosuch://bucket/run: Protocol not known: nosuch\n"
