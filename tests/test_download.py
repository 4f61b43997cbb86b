"""The download stage run for real: img2dataset against a loopback server, row by row."""

from __future__ import annotations

import hashlib
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.config import PipelineConfig
from curation.stages.download import DownloadStage
from manifests import read_manifest, validate
from tests.http_fixture import ImageServer
from tests.images import encode, png_16bit, png_header_only, textured


def _row(url, w=400, h=400, **kw):
    return {
        "URL": url,
        "TEXT": kw.pop("text", "a caption"),
        "WIDTH": w,
        "HEIGHT": h,
        "similarity": 0.3,
        "pwatermark": kw.pop("pwatermark", 0.1),
        "punsafe": 0.0,
        "hash": 1,
        "LANGUAGE": "en",
        "custom_col": kw.pop("custom", "x"),
    }


@pytest.fixture(scope="module")
def fetched(tmp_path_factory):
    """One real download of every kind of good and bad row; yields (run_dir, expected, server)."""
    tmp = tmp_path_factory.mktemp("dl")
    with ImageServer() as srv:
        jpg = encode(textured(320, 300, 1))
        rows, expected = [], {}

        def add(row, status, reason=None):
            rows.append(row)
            expected[len(rows) - 1] = (status, reason)

        for i in range(5):
            add(_row(srv.add(f"ok{i}.jpg", encode(textured(320, 300, i)))), "downloaded")
        add(_row(srv.add("gray.jpg", encode(textured(300, 300, 7), mode="L"))), "downloaded")
        add(
            _row(srv.add("rgba.png", encode(textured(300, 300, 8), "PNG", mode="RGBA"))),
            "downloaded",
        )
        add(
            _row(srv.add("palette.png", encode(textured(300, 300, 9), "PNG", mode="P"))),
            "downloaded",
        )
        add(_row(srv.add("deep.png", png_16bit(textured(300, 300, 10)))), "downloaded")
        add(_row(f"{srv.base}/404/x.jpg"), "failed", "http_404")
        add(_row(f"{srv.base}/html/x.jpg"), "failed", "not_an_image")
        add(_row(f"{srv.base}/empty/x.jpg"), "failed", "empty_body")
        # the header is intact: kept here, the score stage's decode records the truncation
        add(_row(srv.add("trunc.jpg", jpg[: len(jpg) // 4])), "downloaded")
        add(_row(f"{srv.base}/slow/4/x.jpg"), "failed", "timeout")
        add(_row(srv.add("bomb.png", png_header_only(60000, 60000))), "rejected", "too_many_pixels")
        add(
            _row(srv.add("tiny.jpg", encode(textured(200, 150))), w=400, h=400),
            "rejected",
            "too_small",
        )
        add(_row(srv.add("thumb.jpg", jpg), w=100, h=90), "prefiltered", "too_small_declared")
        add(_row(srv.base + "/img/ok0.jpg"), "prefiltered", "duplicate_url")
        add(_row(None), "prefiltered", "missing_url")
        add(_row(srv.add("wm.jpg", jpg), pwatermark=0.99), "prefiltered", "watermark_above_max")
        add(_row(srv.base + "/img/unknown-size.jpg", w=None, h=None), "failed", "http_404")

        table = pa.Table.from_pylist(rows)
        pq.write_table(table, tmp / "urls.parquet")
        cfg = PipelineConfig.model_validate(
            {
                "name": "t",
                "sources": [{"name": "web", "kind": "laion", "path": [str(tmp / "urls.parquet")]}],
                "download": {
                    "min_side": 256,
                    "max_pwatermark": 0.8,
                    "samples_per_shard": 5,
                    "processes": 1,
                    "threads": 4,
                    "timeout_s": 1,
                    "max_image_pixels": 10_000_000,
                },
            }
        )
        run_dir = tmp / "run"
        DownloadStage(cfg, run_dir, log=lambda *_: None).run()
        yield run_dir, cfg, rows, expected, srv


def test_every_row_accounted_for(fetched):
    run_dir, _, rows, expected, _ = fetched
    manifest = read_manifest(run_dir / "download", "image").to_pylist()
    assert len(manifest) == len(rows)
    by_url = {}
    for r in manifest:
        by_url.setdefault(r["url"], []).append(r)
    for i, row in enumerate(rows):
        status, reason = expected[i]
        candidates = by_url[row["URL"] or ""]
        assert any(c["status"] == status and c["reason"] == reason for c in candidates), (
            row["URL"],
            candidates,
        )
    assert len({r["key"] for r in manifest}) == len(rows)


def test_downloaded_rows_point_at_their_bytes(fetched):
    run_dir, *_ = fetched
    manifest = read_manifest(run_dir / "download", "image").to_pylist()
    ok = [r for r in manifest if r["status"] == "downloaded"]
    assert len(ok) == 10
    for r in ok:
        name = r["url"].rsplit("/", 1)[1]
        tar = run_dir / "download" / "web" / r["shard"]
        with tarfile.open(tar) as tf:
            stored = tf.extractfile(f"{r['key']}.{r['format']}").read()
        # original bytes of every format, as served
        assert stored == fetched[4].files[name]
        assert hashlib.sha256(stored).hexdigest() == r["sha256"] and r["bytes"] == len(stored)
        assert r["width"] >= 256 and r["height"] >= 256
        assert r["caption"] == "a caption" and '"custom_col": "x"' in r["extra"]
    assert {r["format"] for r in ok} == {"jpg", "png"}
    failed = [r for r in manifest if r["status"] == "failed"]
    assert all(r["error"] for r in failed)


def test_manifests_validate(fetched):
    run_dir, *_ = fetched
    report = validate(run_dir)
    assert report.ok, report.problems
    assert report.rows == len(fetched[2])


def test_rerun_after_deleting_a_shard_redoes_only_that_shard(fetched):
    run_dir, cfg, rows, _, srv = fetched
    src_dir = run_dir / "download" / "web"
    before = _members(src_dir / "00001.tar")
    mtimes = {p.name: p.stat().st_mtime_ns for p in src_dir.glob("0000*")}
    first = pq.read_table(src_dir / "00001.parquet")
    shard1_urls = [u.replace(srv.base, "") for u in first["url"].to_pylist()]
    hits_before = dict(srv.hits)
    (src_dir / "00001.tar").unlink()
    (src_dir / "00001.parquet").unlink()

    DownloadStage(cfg, run_dir, log=lambda *_: None).run()

    after = {p.name: p.stat().st_mtime_ns for p in src_dir.glob("0000*")}
    assert set(after) == set(mtimes)
    changed = {n for n in after if after[n] != mtimes[n]}
    assert changed == {"00001.tar", "00001.parquet"}
    refetched = {u for u, n in srv.hits.items() if n > hits_before.get(u, 0)}
    assert refetched and refetched <= set(shard1_urls)
    again = pq.read_table(src_dir / "00001.parquet")
    assert again.equals(first)
    # img2dataset writes members in completion order with fresh mtimes: compare contents.
    assert _members(src_dir / "00001.tar") == before


def _members(tar_path):
    with tarfile.open(tar_path) as tf:
        return {
            m.name: tf.extractfile(m).read()
            for m in tf
            if m.isfile() and not m.name.endswith(".json")
        }


def test_changed_settings_refuse_to_mix_runs(fetched):
    from curation.stages.base import RunDirError

    run_dir, cfg, *_ = fetched
    other = cfg.model_copy(deep=True)
    other.download.min_side = 300
    with pytest.raises(RunDirError, match="min_side|download"):
        DownloadStage(other, run_dir, log=lambda *_: None).run()
