"""The score stage for real: Ray actors, pyiqa metrics (NIMA from a random local checkpoint)."""

from __future__ import annotations

import tarfile

import pytest

from curation.config import PipelineConfig
from curation.scoring import score_files
from curation.stages.download import DownloadStage
from curation.stages.score import ScoreConfigError, ScoreStage
from manifests import read_manifest, validate
from tests.images import encode, png_16bit, textured
from tests.nima import make_random_nima_checkpoint


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("score")
    root = tmp / "photos"
    root.mkdir()
    for i in range(3):
        (root / f"tex{i}.jpg").write_bytes(encode(textured(200, 180, i)))
    (root / "gray.png").write_bytes(encode(textured(160, 160, 5), "PNG", mode="L"))
    (root / "deep.png").write_bytes(png_16bit(textured(160, 150, 6)))
    (root / "rgba.png").write_bytes(encode(textured(150, 150, 7), "PNG", mode="RGBA"))
    (root / "narrow.jpg").write_bytes(encode(textured(400, 64, 8)))  # too small for NIQE (96 px)
    data = encode(textured(200, 200, 9))
    (root / "trunc.jpg").write_bytes(data[: len(data) // 3])  # header intact, body cut
    (root / "flat.png").write_bytes(encode(textured(120, 120, 1) * 0 + 128, "PNG"))
    ckpt = make_random_nima_checkpoint(tmp / "nima.pth")
    cfg = PipelineConfig.model_validate(
        {
            "name": "s",
            "sources": [{"name": "local", "kind": "folder", "path": [str(root)]}],
            "download": {"min_side": 32, "samples_per_shard": 4},
            "score": {
                "metrics": ["niqe", "brisque", "nima"],
                "nima_checkpoint": str(ckpt),
                "workers": 2,
            },
        }
    )
    run_dir = tmp / "run"
    DownloadStage(cfg, run_dir, log=lambda *_: None).run()
    logs = []
    summary = ScoreStage(cfg, run_dir, log=logs.append).run()
    return run_dir, cfg, root, summary, logs


def test_every_downloaded_image_is_scored_or_explained(scored):
    run_dir, _, _, summary, _ = scored
    rows = {
        r["url"].rsplit("/", 1)[1]: r for r in read_manifest(run_dir / "score", "image").to_pylist()
    }
    assert len(rows) == 9
    for name in ("tex0.jpg", "tex1.jpg", "tex2.jpg", "gray.png", "deep.png", "rgba.png"):
        r = rows[name]
        assert r["status"] == "scored" and r["stage"] == "score", r
        assert all(r[f"score_{m}"] is not None for m in ("niqe", "brisque", "nima"))
    assert (
        rows["narrow.jpg"]["status"] == "failed"
        and rows["narrow.jpg"]["reason"] == "niqe_input_too_small"
    )
    assert rows["trunc.jpg"]["status"] == "failed" and rows["trunc.jpg"]["reason"] == "decode_error"
    assert rows["flat.png"]["status"] == "failed" and rows["flat.png"]["reason"].startswith(
        ("niqe_", "brisque_")
    )
    assert (
        '"orig_mode": "I;16' in rows["deep.png"]["decode_info"]
        or '"bit_depth": 16' in rows["deep.png"]["decode_info"]
    )
    assert '"had_alpha": true' in rows["rgba.png"]["decode_info"]
    assert sum(summary.counts.values()) == 9
    assert validate(run_dir).ok, validate(run_dir).problems


def test_manifest_scores_equal_curate_score(scored):
    """The same decode and metrics as `curate score` (one thread, as the workers use)."""
    import torch

    run_dir, cfg, root, _, _ = scored
    torch.set_num_threads(1)
    rows = [
        r for r in read_manifest(run_dir / "score", "image").to_pylist() if r["status"] == "scored"
    ]
    paths = [root / r["url"].rsplit("/", 1)[1] for r in rows]
    direct = score_files(
        paths, "niqe,brisque,nima", "cpu", nima_checkpoint=cfg.score.nima_checkpoint
    )
    for row, rec in zip(rows, direct, strict=True):
        for m in ("niqe", "brisque", "nima"):
            assert row[f"score_{m}"] == pytest.approx(rec["scores"][m], rel=1e-9, abs=1e-9), (
                m,
                row["url"],
            )
        assert (row["width"], row["height"]) == (rec["width"], rec["height"])


def test_shards_are_not_rescored(scored):
    run_dir, cfg, *_ = scored
    parts = sorted((run_dir / "score").rglob("*.parquet"))
    before = {p: p.stat().st_mtime_ns for p in parts}
    logs = []
    ScoreStage(cfg, run_dir, log=logs.append).run()
    assert {p: p.stat().st_mtime_ns for p in parts} == before
    assert any("0 shard(s)" in line for line in logs)


def test_score_rows_point_at_the_download_shards(scored):
    run_dir, *_ = scored
    for part in (run_dir / "score").rglob("0*.parquet"):
        for r in read_manifest(part, "image").to_pylist():
            if r["shard"]:
                with tarfile.open(part.parent / r["shard"]) as tf:
                    assert any(n.startswith(r["key"] + ".") for n in tf.getnames())


def test_all_metrics_required_without_weights(tmp_path, scored):
    run_dir, cfg, *_ = scored
    strict = cfg.model_copy(deep=True)
    strict.score.nima_checkpoint = str(tmp_path / "missing.pth")
    strict.score.require_all_metrics = True
    with pytest.raises(ScoreConfigError, match="requires all.*nima"):
        ScoreStage(strict, tmp_path / "run", log=lambda *_: None).run()


def test_missing_metric_is_said_loudly_when_allowed(tmp_path, scored):
    run_dir, cfg, *_ = scored
    lax = cfg.model_copy(deep=True)
    lax.score.nima_checkpoint = str(tmp_path / "missing.pth")
    lax.score.require_all_metrics = False
    lax.score.metrics = ["brisque", "nima"]
    logs = []
    import shutil

    shutil.copytree(run_dir / "download", tmp_path / "run" / "download")
    summary = ScoreStage(lax, tmp_path / "run", log=logs.append).run()
    assert any("NOT SCORED WITH NIMA" in n for n in summary.notes)
    assert any("WARNING" in line and "NIMA" in line for line in logs)
    rows = read_manifest(tmp_path / "run" / "score", "image")
    assert "score_nima" not in rows.column_names and "score_brisque" in rows.column_names


def _passes(row, thresholds) -> bool:
    for metric, (op, t) in thresholds.items():
        v = row[f"score_{metric}"]
        if v is None or (v > t if op == "max" else v < t):
            return False
    return True


def test_cascade_selects_exactly_what_full_scoring_selects(tmp_path, scored):
    import shutil
    import statistics

    run_dir, cfg, *_ = scored
    full = [
        r for r in read_manifest(run_dir / "score", "image").to_pylist() if r["status"] == "scored"
    ]
    median = {
        m: statistics.median(r[f"score_{m}"] for r in full) for m in ("niqe", "brisque", "nima")
    }
    thresholds = {
        "brisque": ("max", median["brisque"]),
        "nima": ("min", median["nima"]),
        "niqe": ("max", median["niqe"]),
    }
    cascading = cfg.model_copy(deep=True)
    cascading.score.cascade = True
    cascading.filter.max_brisque, cascading.filter.min_nima = median["brisque"], median["nima"]
    cascading.filter.max_niqe = median["niqe"]
    shutil.copytree(run_dir / "download", tmp_path / "run" / "download")
    ScoreStage(cascading, tmp_path / "run", log=lambda *_: None).run()
    casc = {r["key"]: r for r in read_manifest(tmp_path / "run" / "score", "image").to_pylist()}
    assert {r["key"] for r in full if _passes(r, thresholds)} == {
        k for k, r in casc.items() if r["status"] == "scored" and _passes(r, thresholds)
    }
    skipped = [r for r in casc.values() if (r["reason"] or "").startswith("cascade_skipped_")]
    assert skipped, "the thresholds reject some images: later metrics must have been skipped"
    for r in skipped:
        names = r["reason"].removeprefix("cascade_skipped_").split("_")
        assert all(r[f"score_{m}"] is None for m in names)
    # cheapest first: BRISQUE is always computed
    assert all(r["score_brisque"] is not None for r in casc.values() if r["status"] == "scored")
    assert validate(tmp_path / "run").ok


def test_embedded_ray_listens_on_loopback_only(scored):
    import ray

    assert ray.is_initialized()
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
