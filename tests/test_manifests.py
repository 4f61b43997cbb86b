from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from manifests import IMAGE, ManifestError, manifest_stats, read_manifest, validate, write_manifest
from manifests.schema import META_VERSION


def _rows():
    return [
        {
            "key": "a",
            "source": "s",
            "url": "u1",
            "stage": "download",
            "status": "downloaded",
            "shard": "00000.tar",
        },
        {
            "key": "b",
            "source": "s",
            "url": "u2",
            "stage": "download",
            "status": "prefiltered",
            "reason": "too_small_declared",
        },
        {
            "key": "c",
            "source": "s",
            "url": "u3",
            "stage": "download",
            "status": "failed",
            "reason": "http_404",
            "error": "HTTP Error 404",
        },
    ]


def test_round_trip_and_validate(tmp_path):
    (tmp_path / "00000.tar").write_bytes(b"")
    write_manifest(_rows(), tmp_path / "00000.parquet", IMAGE)
    table = read_manifest(tmp_path, IMAGE)
    assert table.num_rows == 3 and table.schema.field("key").nullable is False
    report = validate(tmp_path)
    assert report.ok, report.problems
    stats = manifest_stats(tmp_path)
    counts = {(c["status"], c["reason"]): c["count"] for c in stats["groups"]["."]["counts"]}
    assert counts == {
        ("downloaded", None): 1,
        ("prefiltered", "too_small_declared"): 1,
        ("failed", "http_404"): 1,
    }


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda r: r[1].pop("reason"), "without a reason"),
        (lambda r: r[2].pop("error"), "without a error"),
        (lambda r: r[0].update(status="weird"), "unknown status"),
        (lambda r: r[0].update(shard="99999.tar"), "does not exist"),
        (lambda r: r[1].update(key="a"), "duplicate keys"),
    ],
)
def test_validate_finds_problems(tmp_path, change, problem):
    (tmp_path / "00000.tar").write_bytes(b"")
    rows = _rows()
    change(rows)
    write_manifest(rows, tmp_path / "00000.parquet", IMAGE)
    report = validate(tmp_path)
    assert not report.ok and any(problem in p for p in report.problems), report.problems


def test_keys_unique_across_files_of_a_stage(tmp_path):
    (tmp_path / "s" / "00000.tar").parent.mkdir()
    (tmp_path / "s" / "00000.tar").write_bytes(b"")
    write_manifest(_rows()[:1], tmp_path / "s" / "00000.parquet", IMAGE)
    write_manifest(_rows()[:1], tmp_path / "s" / "00001.parquet", IMAGE)
    assert any("also in" in p for p in validate(tmp_path).problems)


def test_wrong_schema_and_newer_version_are_refused(tmp_path):
    write_manifest(_rows(), tmp_path / "m.parquet", IMAGE)
    table = pq.read_table(tmp_path / "m.parquet")
    newer = table.replace_schema_metadata({**table.schema.metadata, META_VERSION: b"99"})
    pq.write_table(newer, tmp_path / "m.parquet")
    with pytest.raises(ManifestError, match="newer"):
        read_manifest(tmp_path, IMAGE)
    with pytest.raises(ManifestError, match="not in the image manifest schema"):
        write_manifest([{**_rows()[0], "bogus": 1}], tmp_path / "x.parquet", IMAGE)
    broken = table.drop_columns(["status"]).replace_schema_metadata(table.schema.metadata)
    pq.write_table(broken, tmp_path / "m.parquet")
    assert any("missing column 'status'" in p for p in validate(tmp_path).problems)


def test_score_columns_are_allowed(tmp_path):
    rows = [{**r, "score_niqe": 3.2} for r in _rows()]
    (tmp_path / "00000.tar").write_bytes(b"")
    write_manifest(rows, tmp_path / "00000.parquet", IMAGE)
    assert validate(tmp_path).ok
    assert pa.types.is_float64(read_manifest(tmp_path, IMAGE).schema.field("score_niqe").type)


def test_other_parquet_files_are_not_manifests(tmp_path):
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    assert not validate(tmp_path).ok  # nothing to validate is a failure, not a silent pass
