"""The patch stage for real: a downloaded folder source, filter-like manifests, Ray tasks."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from curation.config import PipelineConfig
from curation.decode import decode_image
from curation.stages.base import RunDirError
from curation.stages.download import DownloadStage
from curation.stages.patch import DONE_SUFFIX, INDEX, PatchStage, PatchStageError, patch_part
from manifests import IMAGE, PATCH, find_manifests, read_manifest, validate, write_manifest
from tests.images import encode, textured

SIZE = 512


def half_flat(width: int, height: int, seed: int) -> np.ndarray:
    """Left half a gentle grey ramp (flat), right half noisy texture."""
    img = textured(width, height, seed)
    img[:, : width // 2] = (100 + np.arange(width // 2) / 8).astype(np.uint8)[None, :, None]
    return img


def make_photos(root: Path) -> None:
    """Nine images; sorted by name, 4 per download shard, each of the 3 parts gets patches."""
    root.mkdir()
    data = encode(textured(1100, 700, 14))
    (root / "a_broken.jpg").write_bytes(data[: len(data) // 3])  # header intact: no decode
    (root / "b_small.jpg").write_bytes(encode(textured(600, 400, 12)))  # kept, but no tile
    (root / "c_tiny.jpg").write_bytes(encode(textured(200, 200, 13)))  # too small at download
    (root / "full0.png").write_bytes(encode(textured(1100, 700, 10), "PNG"))  # 2 kept
    (root / "full1.png").write_bytes(encode(textured(700, 1100, 11), "PNG"))  # 2 kept, portrait
    for i in range(4):  # 2 tiles each: 1 flat, 1 kept
        (root / f"half{i}.jpg").write_bytes(encode(half_flat(1100, 700, i)))


def write_filter_manifests(run_dir: Path) -> None:
    """What the filter stage leaves: every row, downloaded ones now ``kept`` with scores."""
    download = run_dir / "download"
    for n, part in enumerate(find_manifests(download, IMAGE)):
        dest = run_dir / "filter" / part.relative_to(download)
        rows = []
        for i, row in enumerate(pq.read_table(part).to_pylist()):
            if row["status"] == "downloaded":
                shard = os.path.relpath(part.parent / row["shard"], dest.parent)
                row |= dict(status="kept", stage="filter", shard=shard)
                row |= dict(score_niqe=3.0 + n + i / 10, score_brisque=20.0 + i)
            rows.append(row)
        write_manifest(rows, dest, IMAGE)


def patch_config(photos: Path, **patch) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": "p",
            "sources": [{"name": "local", "kind": "folder", "path": [str(photos)]}],
            "download": {"min_side": 300, "samples_per_shard": 4},
            "patch": {"samples_per_shard": 2, **patch},
        }
    )


def outputs(run_dir: Path) -> dict[str, bytes]:
    """Every file the patch stage wrote (not its settings), by relative path."""
    out = run_dir / "patch"
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and "_work" not in p.parts
    }


@pytest.fixture(scope="module")
def patched(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("patch")
    photos = tmp / "photos"
    make_photos(photos)
    cfg = patch_config(photos)
    run_dir = tmp / "run"
    DownloadStage(cfg, run_dir, log=lambda *_: None).run()
    write_filter_manifests(run_dir)
    logs = []
    summary = PatchStage(cfg, run_dir, log=logs.append).run()
    return run_dir, cfg, photos, summary, logs


def test_counts_add_up(patched):
    run_dir, _, _, summary, _ = patched
    assert summary.counts == {"kept": 8, "rejected/flat": 4}
    dones = [
        json.loads(p.read_text()) for p in sorted((run_dir / "patch").rglob("*" + DONE_SUFFIX))
    ]
    assert len(dones) == len(find_manifests(run_dir / "filter", IMAGE)) == 3
    total = {}
    for d in dones:
        for k, v in d["counts"].items():
            total[k] = total.get(k, 0) + v
        c = d["counts"]
        assert c["tiles"] == c["kept"] + c["rejected_flat"]
        assert c["images"] == c["images_patched"] + c["images_without_tiles"] + c["images_failed"]
        assert sum(s["samples"] for s in d["shards"]) == c["kept"]
    assert total == {
        "images": 8,
        "images_patched": 6,
        "images_without_tiles": 1,
        "images_failed": 1,
        "tiles": 12,
        "kept": 8,
        "rejected_flat": 4,
    }
    failures = [f for d in dones for f in d["failures"]]
    assert [f["reason"] for f in failures] == ["decode_error"]
    assert any(
        "1 kept image(s) gave no patch" in n and "decode_error: 1" in n for n in summary.notes
    )
    assert any("smaller than one patch" in n for n in summary.notes)
    patch_rows = read_manifest(run_dir / "patch", PATCH).to_pylist()
    assert failures[0]["key"] not in {r["image_key"] for r in patch_rows}


def test_manifests_validate_and_rows_point_at_tars(patched):
    run_dir, *_ = patched
    report = validate(run_dir)
    assert report.ok, report.problems
    for part in find_manifests(run_dir / "patch", PATCH):
        rows = pq.read_table(part).to_pylist()
        for r in rows:
            if r["status"] == "kept":
                assert r["shard"] == part.with_suffix(".tar").name
            else:
                assert (r["status"], r["reason"], r["shard"]) == ("rejected", "flat", None)
                assert r["flat_fraction"] > 0.5


def test_every_patch_is_the_512_crop_it_claims_with_its_lineage(patched):
    run_dir, _, photos, _, _ = patched
    rows = {r["key"]: r for r in read_manifest(run_dir / "patch", PATCH).to_pylist()}
    parents = {r["key"]: r for r in read_manifest(run_dir / "filter", IMAGE).to_pylist()}
    seen = set()
    for tar_path in sorted((run_dir / "patch").rglob("*.tar")):
        with tarfile.open(tar_path) as tf:
            names = tf.getnames()
            assert names == sorted(names)
            for name in names:
                key, ext = name.split(".", 1)
                data = tf.extractfile(name).read()
                row = rows[key]
                if ext == "json":
                    meta = json.loads(data)
                    parent = parents[row["image_key"]]
                    assert meta == {
                        "key": key,
                        "image_key": parent["key"],
                        "url": parent["url"],
                        "source": "local",
                        "x": row["x"],
                        "y": row["y"],
                        "size": SIZE,
                        "flat_fraction": row["flat_fraction"],
                        "format": "png",
                        "score_niqe": parent["score_niqe"],
                        "score_brisque": parent["score_brisque"],
                    }
                    assert row["score_niqe"] == parent["score_niqe"]
                    continue
                assert ext == "png"
                patch = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
                assert patch.shape == (SIZE, SIZE, 3)
                src = photos / parents[row["image_key"]]["url"].rsplit("/", 1)[1]
                image = decode_image(src.read_bytes(), max_pixels=10**8).rgb
                y, x = row["y"], row["x"]
                assert np.array_equal(patch, image[y : y + SIZE, x : x + SIZE])
                seen.add(key)
    assert seen == {k for k, r in rows.items() if r["status"] == "kept"}


def test_index_lists_every_tar_with_its_sample_count(patched):
    run_dir, *_ = patched
    index = json.loads((run_dir / "patch" / INDEX).read_text())
    tars = sorted(
        p.relative_to(run_dir / "patch").as_posix() for p in (run_dir / "patch").rglob("*.tar")
    )
    assert [s["path"] for s in index["shards"]] == tars
    for s in index["shards"]:
        with tarfile.open(run_dir / "patch" / s["path"]) as tf:
            assert len({n.split(".", 1)[0] for n in tf.getnames()}) == s["samples"] <= 2
    assert index["samples"] == 8 and (index["format"], index["size"]) == ("png", SIZE)
    assert len(tars) > len(find_manifests(run_dir / "filter", IMAGE))  # parts hold several shards


def test_a_second_clean_run_is_byte_identical(patched, tmp_path):
    run_dir, cfg, *_ = patched
    other = tmp_path / "run"
    for stage in ("download", "filter"):
        shutil.copytree(run_dir / stage, other / stage)
    PatchStage(cfg, other, log=lambda *_: None).run()
    assert outputs(other) == outputs(run_dir)


def test_resume_redoes_only_unfinished_parts(patched, tmp_path):
    run_dir, cfg, *_ = patched
    resumed = tmp_path / "run"
    shutil.copytree(run_dir, resumed)
    local = resumed / "patch" / "local"
    # Part 00000: its outputs deleted, the marker left behind.
    for p in local.glob("00000-*"):
        p.unlink()
    # Part 00001: killed mid-write: no marker, a temp file and a truncated shard.
    (local / ("00001" + DONE_SUFFIX)).unlink()
    (local / ".00001-001.tar.tmp-99999").write_bytes(b"partial")
    (local / "00001-000.tar").write_bytes((local / "00001-000.tar").read_bytes()[:1000])
    untouched = local / "00002-000.tar"
    mtime = untouched.stat().st_mtime_ns
    logs = []
    PatchStage(cfg, resumed, log=logs.append).run()
    assert any("3 manifest part(s), 2 to cut" in line for line in logs)
    assert outputs(resumed) == outputs(run_dir)
    assert untouched.stat().st_mtime_ns == mtime
    assert not list(local.glob(".*"))

    logs.clear()
    PatchStage(cfg, resumed, log=logs.append).run()
    assert any("0 to cut" in line for line in logs)


def test_other_settings_in_the_same_folder_are_refused(patched, tmp_path):
    _, _, photos, *_ = patched
    run_dir = patched[0]
    other = patch_config(photos, max_flat_fraction=0.25)
    with pytest.raises(RunDirError, match="other settings"):
        PatchStage(other, run_dir, log=lambda *_: None).run()


def test_tar_members_are_reproducible(patched):
    run_dir, *_ = patched
    tar_path = next((run_dir / "patch").rglob("*.tar"))
    with tarfile.open(tar_path) as tf:
        for m in tf.getmembers():
            assert (m.mtime, m.uname, m.mode) == (0, "bigdata", 0o444)


def test_a_part_without_kept_patches_leaves_a_manifest_and_no_tar(patched, tmp_path):
    run_dir, cfg, *_ = patched
    part = run_dir / "filter" / "local" / "00001.parquet"
    dest = tmp_path / "flat" / "local"
    everything_flat = cfg.patch.model_copy(update={"flat_threshold": 1e9})
    done = patch_part(str(part), str(dest), everything_flat, cfg.score.max_pixels)
    assert done["shards"] == [{"tar": None, "manifest": "00001-000.parquet", "samples": 0}]
    assert done["counts"]["tiles"] == done["counts"]["rejected_flat"] == 8
    assert sorted(p.name for p in dest.iterdir()) == ["00001-000.parquet", "00001" + DONE_SUFFIX]
    assert validate(tmp_path / "flat").ok


def test_a_failing_part_fails_the_stage_and_is_redone_later(patched, tmp_path):
    run_dir, cfg, *_ = patched
    broken = tmp_path / "run"
    shutil.copytree(run_dir, broken)
    local = broken / "patch" / "local"
    for stem in ("00000", "00001"):
        (local / (stem + DONE_SUFFIX)).unlink()
    tar = broken / "download" / "local" / "00001.tar"
    tar.rename(tar.with_suffix(".away"))
    with pytest.raises(
        PatchStageError,
        match="(?s)1 part.*filter/local/00001.parquet: FileNotFoundError.*00001.tar",
    ):
        PatchStage(cfg, broken, log=lambda *_: None).run()
    assert (local / ("00000" + DONE_SUFFIX)).is_file()  # the other part finished
    tar.with_suffix(".away").rename(tar)
    PatchStage(cfg, broken, log=lambda *_: None).run()
    assert outputs(broken) == outputs(run_dir)


def test_a_changed_filter_part_is_redone(patched, tmp_path):
    """The filter rewrites its parts on every run: new thresholds must not leave stale patches."""
    run_dir, cfg, *_ = patched
    changed = tmp_path / "run"
    shutil.copytree(run_dir, changed)
    part = changed / "filter" / "local" / "00001.parquet"
    rows = pq.read_table(part).to_pylist()
    dropped = next(r for r in rows if r["url"].endswith("/full1.png"))
    dropped |= dict(status="rejected", reason="niqe_above_max", shard=None)
    write_manifest(rows, part, IMAGE)
    logs = []
    summary = PatchStage(cfg, changed, log=logs.append).run()
    assert any("3 manifest part(s), 1 to cut" in line for line in logs)
    assert summary.counts == {"kept": 6, "rejected/flat": 4}
    patch_rows = read_manifest(changed / "patch", PATCH).to_pylist()
    assert dropped["key"] not in {r["image_key"] for r in patch_rows}
    index = json.loads((changed / "patch" / INDEX).read_text())
    assert index["samples"] == 6
    assert validate(changed).ok
