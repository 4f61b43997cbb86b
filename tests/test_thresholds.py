"""Threshold suggestions on synthetic score distributions, checked against the filter stage."""

from __future__ import annotations

import tarfile

import numpy as np
import pyarrow as pa
import pytest

from curation.config import PipelineConfig
from curation.stages.filter import FilterStage
from curation.thresholds import ThresholdError, format_suggestion, read_scores, suggest_thresholds
from manifests import IMAGE, read_manifest, write_manifest

N = 997


def _scores(n: int = N, seed: int = 0) -> dict[str, np.ndarray]:
    """NIQE and BRISQUE correlated (as on real photos), NIMA independent of both."""
    rng = np.random.default_rng(seed)
    niqe = rng.normal(5.0, 1.0, n)
    return {
        "niqe": niqe,
        "brisque": 6.0 * niqe + rng.normal(0.0, 8.0, n),
        "nima": rng.normal(5.0, 0.8, n),
    }


def _table(scores: dict[str, np.ndarray], status: str = "scored") -> pa.Table:
    n = len(next(iter(scores.values())))
    return pa.table(
        {
            "key": [f"k{i}" for i in range(n)],
            "stage": ["score"] * n,
            "status": [status] * n,
            "width": [2048] * n,
            "height": [1536] * n,
            **{f"score_{m}": v for m, v in scores.items()},
        }
    )


def _joint(scores: dict[str, np.ndarray], thresholds: dict[str, float]) -> int:
    ok = np.ones(len(scores["niqe"]), dtype=bool)
    for name, value in thresholds.items():
        op, metric = name.split("_", 1)
        ok &= scores[metric] <= value if op == "max" else scores[metric] >= value
    return int(ok.sum())


@pytest.mark.parametrize("keep", [0.01, 0.1, 0.3, 0.5, 0.77, 0.95, 1.0])
def test_joint_pass_fraction_hits_the_keep_fraction(keep):
    scores = _scores()
    s = suggest_thresholds(_table(scores), ["niqe", "brisque", "nima"], keep)
    assert s["images"] == N
    assert abs(s["joint"]["fraction"] - keep) <= 1 / N
    assert s["joint"]["count"] == _joint(scores, s["thresholds"])  # equality passes
    for name, a in s["alone"].items():
        assert a["count"] == _joint(scores, {name: s["thresholds"][name]})
        assert a["count"] >= s["joint"]["count"]


def test_direction_follows_the_registry():
    scores = _scores()
    s = suggest_thresholds(_table(scores), None, 0.5)
    assert list(s["thresholds"]) == ["max_niqe", "max_brisque", "min_nima"]
    looser = suggest_thresholds(_table(scores), None, 0.8)["thresholds"]
    assert looser["max_niqe"] > s["thresholds"]["max_niqe"]
    assert looser["min_nima"] < s["thresholds"]["min_nima"]
    # NIMA alone: the best quarter is the highest quarter.
    nima = suggest_thresholds(_table(scores), ["nima"], 0.25)
    cut = nima["thresholds"]["min_nima"]
    assert nima["joint"]["count"] == round(0.25 * N)
    assert scores["nima"][scores["nima"] >= cut].min() > scores["nima"][scores["nima"] < cut].max()


def test_missing_scores_never_pass_and_are_reported():
    scores = _scores()
    nima = [None] * 50 + [float("nan")] * 50 + list(scores["nima"][100:])  # null: cascade
    table = _table(scores)
    table = table.set_column(
        table.schema.get_field_index("score_nima"), "score_nima", pa.array(nima)
    )
    s = suggest_thresholds(table, None, 1.0)
    assert s["not_scored"]["nima"] == 100
    assert s["joint"]["count"] == N - 100  # the most that can pass
    assert "nima: 100" in format_suggestion(s)


def test_errors():
    with pytest.raises(ThresholdError, match="no scored image"):
        suggest_thresholds(_table(_scores(), status="failed"), None, 0.5)
    with pytest.raises(ThresholdError, match="no scored image"):
        suggest_thresholds(_table(_scores(0)), None, 0.5)
    with pytest.raises(ThresholdError, match="keep fraction"):
        suggest_thresholds(_table(_scores()), None, 0.0)
    with pytest.raises(ThresholdError, match="score_nima"):
        suggest_thresholds(_table({"niqe": _scores()["niqe"]}), ["niqe", "nima"], 0.5)


def test_filtering_with_the_suggestion_keeps_what_it_said(tmp_path):
    """read_scores -> suggest -> the filter stage with the printed values keeps that count."""
    scores = _scores(300, seed=1)
    run = tmp_path / "run"
    (run / "download" / "web").mkdir(parents=True)
    with tarfile.open(run / "download" / "web" / "00000.tar", "w"):
        pass
    rows = _table(scores).to_pylist()
    for i, r in enumerate(rows):
        r.update(source="web", url=f"http://x/{i}.jpg", shard="../../download/web/00000.tar")
        r["width"] = 1000 if i < 30 else r["width"]  # below min_side 1024: left out
    write_manifest(rows, run / "score" / "web" / "00000.parquet", IMAGE)

    s = suggest_thresholds(read_scores(run), None, 0.4, min_side=1024)
    assert (s["images"], s["left_out_below_min_side"]) == (270, 30)
    assert abs(s["joint"]["count"] - 0.4 * 270) <= 1
    text = format_suggestion(s)
    sets = dict(a.removeprefix("filter.").split("=") for a in text.split("--set ")[1:])
    cfg = PipelineConfig.model_validate(
        {
            "name": "t",
            "sources": [{"name": "web", "kind": "laion", "path": ["unused.parquet"]}],
            "filter": {k: float(v) for k, v in sets.items()},
        }
    )
    summary = FilterStage(cfg, run, log=lambda *_: None).run()
    assert summary.counts["kept"] == s["joint"]["count"]
    again = suggest_thresholds(read_scores(run / "filter"), None, 0.4, min_side=1024)
    assert again["thresholds"] == s["thresholds"]  # filter output reads back the same
    assert len(read_manifest(run / "filter", IMAGE)) == 300
