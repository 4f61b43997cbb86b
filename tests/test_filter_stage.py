"""The filter stage on score-stage manifests written with the real manifest writer."""

from __future__ import annotations

import json
import shutil
import struct
import tarfile

import pyarrow.parquet as pq
import pytest

from curation.config import PipelineConfig
from curation.stages.filter import FilterConfigError, FilterStage
from manifests import IMAGE, read_manifest, validate, write_manifest

SHARD = "../../download/web/00000.tar"  # as the score stage writes it, from score/web/
NAN = float("nan")

#: key -> (width, height, niqe, brisque, nima, expected status, expected reason), with
#: max_niqe=5, max_brisque=30, min_nima=4.5, min_side=1024.
SCORED = {
    "good": (2000, 1500, 3.0, 10.0, 6.0, "kept", None),
    "on_every_boundary": (1024, 1024, 5.0, 30.0, 4.5, "kept", None),
    "niqe_just_above": (2000, 2000, 5.000001, 10.0, 6.0, "rejected", "niqe_above_max"),
    "two_fail": (2000, 2000, 9.0, 10.0, 4.0, "rejected", "niqe_above_max,nima_below_min"),
    "all_fail": (
        1023,
        4000,
        9.0,
        31.0,
        1.0,
        "rejected",
        "too_small,niqe_above_max,brisque_above_max,nima_below_min",
    ),
    "narrow": (4000, 1023, 3.0, 10.0, 6.0, "rejected", "too_small"),
    "nima_skipped": (2000, 2000, 3.0, 10.0, None, "rejected", "nima_not_scored"),
    "niqe_nan": (2000, 2000, NAN, 10.0, 6.0, "rejected", "niqe_not_scored"),
}


def _scored_row(key, w, h, niqe, brisque, nima):
    return {
        "key": key,
        "source": "web",
        "url": f"http://x/{key}.jpg",
        "width": w,
        "height": h,
        "format": "jpg",
        "shard": SHARD,
        "stage": "score",
        "status": "scored",
        "reason": "cascade_skipped_nima" if nima is None else None,
        "score_niqe": niqe,
        "score_brisque": brisque,
        "score_nima": nima,
    }


#: Rows the filter must carry unchanged.
OTHERS = [
    {
        "key": "broken",
        "source": "web",
        "url": "http://x/broken.jpg",
        "width": 2000,
        "height": 2000,
        "shard": SHARD,
        "stage": "score",
        "status": "failed",
        "reason": "decode_error",
        "error": "image file is truncated",
    },
    {
        "key": "huge",
        "source": "web",
        "url": "http://x/huge.jpg",
        "stage": "score",
        "status": "rejected",
        "reason": "too_many_pixels",
    },
]
PREFILTERED = [
    {
        "key": "dupe",
        "source": "web",
        "url": "http://x/good.jpg",
        "stage": "download",
        "status": "prefiltered",
        "reason": "duplicate_url",
    }
]
SCORE_COLUMNS = ("score_niqe", "score_brisque", "score_nima")


def _cfg(**filter_cfg) -> PipelineConfig:
    base = {"max_niqe": 5.0, "max_brisque": 30.0, "min_nima": 4.5, "min_side": 1024}
    return PipelineConfig.model_validate(
        {
            "name": "f",
            "sources": [{"name": "web", "kind": "laion", "path": ["unused.parquet"]}],
            "filter": {**base, **filter_cfg},
        }
    )


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as the download and score stages leave it (an empty but real tar)."""
    run = tmp_path / "run"
    (run / "download" / "web").mkdir(parents=True)
    with tarfile.open(run / "download" / "web" / "00000.tar", "w"):
        pass
    rows = [_scored_row(k, *v[:5]) for k, v in SCORED.items()] + OTHERS
    write_manifest(rows, run / "score" / "web" / "00000.parquet", IMAGE)
    prefiltered = [
        dict(r, score_niqe=None, score_brisque=None, score_nima=None) for r in PREFILTERED
    ]
    write_manifest(prefiltered, run / "score" / "web" / "prefiltered.parquet", IMAGE)
    return run


def _bits(table, column):
    """Float values as their exact bit patterns (NaN included)."""
    return [None if v is None else struct.pack("<d", v) for v in table[column].to_pylist()]


def test_every_scored_row_is_kept_or_rejected_with_every_reason(run_dir):
    logs = []
    summary = FilterStage(_cfg(), run_dir, log=logs.append).run()
    rows = {r["key"]: r for r in read_manifest(run_dir / "filter", IMAGE).to_pylist()}
    assert len(rows) == len(SCORED) + len(OTHERS) + len(PREFILTERED)
    for key, (*_, status, reason) in SCORED.items():
        assert (rows[key]["stage"], rows[key]["status"], rows[key]["reason"]) == (
            "filter",
            status,
            reason,
        ), key
    for row in OTHERS + PREFILTERED:
        out = rows[row["key"]]
        assert {k: out[k] for k in row if k != "shard"} == {
            k: v for k, v in row.items() if k != "shard"
        }
    assert sum(summary.counts.values()) == len(rows)
    assert summary.counts["kept"] == 2
    assert summary.counts["rejected/too_small"] == 1
    assert summary.counts["rejected/too_many_pixels"] == 1  # rejected earlier, carried
    assert any("2 kept, 6 rejected" in line for line in logs)
    report = validate(run_dir)
    assert report.ok, report.problems


def test_shards_point_at_the_download_tar(run_dir):
    FilterStage(_cfg(), run_dir, log=lambda *_: None).run()
    part = run_dir / "filter" / "web" / "00000.parquet"
    shards = set(pq.read_table(part)["shard"].to_pylist()) - {None}
    assert shards == {SHARD}
    assert (part.parent / SHARD).resolve() == (run_dir / "download/web/00000.tar").resolve()
    assert (run_dir / "filter" / "web" / "prefiltered.parquet").is_file()


def test_thresholds_json_records_what_was_applied(run_dir):
    FilterStage(_cfg(max_brisque=None), run_dir, log=lambda *_: None).run()
    record = json.loads((run_dir / "filter" / "thresholds.json").read_text())
    assert record["thresholds"] == {
        "max_niqe": 5.0,
        "max_brisque": None,
        "min_nima": 4.5,
        "min_side": 1024,
    }
    assert record["applied"] == ["min_side", "max_niqe", "min_nima"]
    assert (record["scored"], record["kept"], record["rejected"]) == (8, 2, 6)
    assert record["failing"] == {
        "niqe_above_max": 3,
        "nima_below_min": 2,
        "too_small": 2,
        "nima_not_scored": 1,
        "niqe_not_scored": 1,
    }
    assert sum(record["counts"].values()) == len(SCORED) + len(OTHERS) + len(PREFILTERED)


def test_rerun_with_another_threshold_changes_only_the_decision(run_dir):
    FilterStage(_cfg(), run_dir, log=lambda *_: None).run()
    part = run_dir / "filter" / "web" / "00000.parquet"
    first = pq.read_table(part)
    FilterStage(_cfg(max_niqe=None, min_side=1023), run_dir, log=lambda *_: None).run()
    second = pq.read_table(part)
    score = pq.read_table(run_dir / "score" / "web" / "00000.parquet")
    for col in SCORE_COLUMNS:
        assert _bits(second, col) == _bits(first, col) == _bits(score, col), col
    unchanged = [c for c in first.column_names if c not in ("status", "reason", *SCORE_COLUMNS)]
    assert second.select(unchanged).equals(first.select(unchanged))
    rows = {r["key"]: r for r in second.to_pylist()}
    assert rows["niqe_just_above"]["status"] == "kept"
    assert rows["two_fail"]["reason"] == "nima_below_min"
    assert rows["narrow"]["status"] == "kept"  # 1023 px now passes
    assert rows["niqe_nan"]["status"] == "kept"  # no NIQE threshold: its score is not needed
    assert rows["all_fail"]["reason"] == "brisque_above_max,nima_below_min"
    assert validate(run_dir).ok


def test_no_threshold_applies_only_the_size_floor(run_dir):
    summary = FilterStage(
        _cfg(max_niqe=None, max_brisque=None, min_nima=None), run_dir, log=lambda *_: None
    ).run()
    assert any("no quality threshold" in n for n in summary.notes)
    assert summary.counts["kept"] == len(SCORED) - 2
    assert summary.counts["rejected/too_small"] == 2


def test_missing_score_column_is_an_error_naming_the_metric(run_dir):
    part = run_dir / "score" / "web" / "00000.parquet"
    write_manifest(pq.read_table(part).drop_columns(["score_nima"]), part, IMAGE)
    with pytest.raises(FilterConfigError, match=r"filter\.min_nima.*score_nima"):
        FilterStage(_cfg(), run_dir, log=lambda *_: None).run()
    assert not (run_dir / "filter").exists()  # refused before writing anything
    summary = FilterStage(_cfg(min_nima=None), run_dir, log=lambda *_: None).run()
    assert summary.counts["kept"] == 3  # nima_skipped now passes too


def test_without_scores_the_filter_says_to_score_first(tmp_path):
    with pytest.raises(FilterConfigError, match="score stage first"):
        FilterStage(_cfg(), tmp_path / "run", log=lambda *_: None).run()


def test_a_part_gone_from_score_is_removed_from_filter(run_dir):
    FilterStage(_cfg(), run_dir, log=lambda *_: None).run()
    (run_dir / "score" / "web" / "prefiltered.parquet").unlink()
    shutil.copy(run_dir / "filter" / "thresholds.json", run_dir / "old.json")
    FilterStage(_cfg(), run_dir, log=lambda *_: None).run()
    assert not (run_dir / "filter" / "web" / "prefiltered.parquet").exists()
    old = json.loads((run_dir / "old.json").read_text())
    new = json.loads((run_dir / "filter" / "thresholds.json").read_text())
    assert sum(new["counts"].values()) == sum(old["counts"].values()) - len(PREFILTERED)
