"""The real `curate` command, run as a user would, into temp folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

CURATE = [sys.executable, "-m", "curation.cli"]


def curate(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CURATE, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_help_does_not_import_heavy_modules():
    code = (
        "import sys\n"
        "from curation.cli import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'ray', 'pyiqa', 'img2dataset', 'webdataset') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "HEAVY []" in out
    assert "run" in out and "manifest" in out


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "run"
    proc = curate("run", "--output", out)  # the demo, every stage
    assert proc.returncode == 0, proc.stderr
    assert "downloaded" in proc.stdout and "patch:" in proc.stdout
    return out


def test_demo_download_validates_and_counts_add_up(demo_run):
    proc = curate("manifest", "validate", demo_run)
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout
    stats = json.loads(curate("manifest", "stats", demo_run, "--json").stdout)
    group = stats["groups"]["download"]
    counts = {(c["status"], c["reason"]): c["count"] for c in group["counts"]}
    assert group["rows"] == pq.read_metadata(Path("pipelines/demo/urls.parquet")).num_rows == 18
    assert counts[("downloaded", None)] == 12  # 11 photos + the truncated JPEG (header intact)
    assert counts[("failed", "http_404")] == 1
    assert counts[("rejected", "too_small")] == 1
    assert counts[("prefiltered", "duplicate_url")] == 1
    assert (demo_run / "config.yaml").is_file() and (demo_run / "run.json").is_file()


def test_demo_end_to_end_gives_512_patches_with_lineage(demo_run):
    import io
    import tarfile

    from PIL import Image

    from manifests import read_manifest

    patches = read_manifest(demo_run / "patch", "patch").to_pylist()
    kept = [p for p in patches if p["status"] == "kept"]
    assert kept and all(p["size"] == 512 for p in kept)
    assert {p["reason"] for p in patches if p["status"] != "kept"} <= {"flat"}
    images = {r["key"]: r for r in read_manifest(demo_run / "filter", "image").to_pylist()}
    assert all(images[p["image_key"]]["status"] == "kept" for p in patches)
    index = json.loads((demo_run / "patch" / "index.json").read_text())
    assert sum(s["samples"] for s in index["shards"]) == len(kept)
    for shard in index["shards"]:
        with tarfile.open(demo_run / "patch" / shard["path"]) as tf:
            pngs = [m for m in tf if m.name.endswith(".png")]
            assert len(pngs) == shard["samples"]
            for m in pngs:
                assert Image.open(io.BytesIO(tf.extractfile(m).read())).size == (512, 512)
    card = (demo_run / "RUNCARD.md").read_text()
    assert "NOT SCORED WITH NIMA" in card and "## Resolved config" in card


def test_rerun_resumes_without_refetching(demo_run):
    proc = curate("run", "--stage", "download", "--output", demo_run)
    assert proc.returncode == 0, proc.stderr
    assert "published 0 new shard" in proc.stdout


def test_other_settings_in_same_output_are_refused(demo_run):
    proc = curate(
        "run", "--stage", "download", "--output", demo_run, "--set", "download.min_side=512"
    )
    assert proc.returncode == 2
    assert "other settings" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--input", "/nonexistent/urls.parquet"], "no such file"),
        (["run", "--stage", "bogus"], "unknown stage"),
        (["run", "--set", "download.min_sid=3"], "unknown key"),
        (["run", "--set", "score.metrics=[niqe,musiq2]"], "unknown metric"),
        (["run", "--pipeline", "nope"], "unknown pipeline"),
        (["run", "--stage", "filter"], "score"),
        (["run", "--stage", "patch"], "filter"),
        (["manifest", "stats", "/nonexistent"], "no such file"),
    ],
)
def test_user_mistakes_get_one_line(tmp_path, args, message):
    proc = curate(*args, "--output", tmp_path / "o") if args[0] == "run" else curate(*args)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_parquet_without_url_column(tmp_path):
    pq.write_table(pa.table({"link": ["http://127.0.0.1:9/x.jpg"]}), tmp_path / "u.parquet")
    proc = curate(
        "run", "--stage", "download", "--input", tmp_path / "u.parquet", "--output", tmp_path / "o"
    )
    assert proc.returncode == 2
    assert "no 'URL' column" in proc.stderr and "link" in proc.stderr


def test_not_a_parquet_file(tmp_path):
    (tmp_path / "u.parquet").write_text("URL\nhttp://x\n")
    proc = curate(
        "run", "--stage", "download", "--input", tmp_path / "u.parquet", "--output", tmp_path / "o"
    )
    assert proc.returncode == 2 and "not a readable Parquet" in proc.stderr


def test_validate_reports_invalid(tmp_path):
    proc = curate("manifest", "validate", tmp_path)
    assert proc.returncode == 1 and "no manifest" in proc.stderr


def test_million_ird_refuses_to_start_without_all_metrics(tmp_path):
    pq.write_table(pa.table({"URL": ["http://127.0.0.1:9/x.jpg"]}), tmp_path / "u.parquet")
    proc = curate(
        "run",
        "--pipeline",
        "million-ird",
        "--input",
        tmp_path / "u.parquet",
        "--output",
        tmp_path / "o",
    )
    assert proc.returncode == 2, proc.stderr
    assert "requires all of niqe, brisque, nima" in proc.stderr and "--metrics" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o" / "download").exists()  # refused before any download


def test_score_command(tmp_path):
    from tests.images import encode, textured

    (tmp_path / "a.jpg").write_bytes(encode(textured(200, 200)))
    (tmp_path / "b.jpg").write_text("<html>")
    proc = curate(
        "score", "--metrics", "niqe,brisque", "--json", tmp_path / "a.jpg", tmp_path / "b.jpg"
    )
    assert proc.returncode == 1  # one file could not be scored
    recs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert set(recs[0]["scores"]) == {"niqe", "brisque"} and recs[1]["reason"] == "decode_error"
    proc = curate("score", "--metrics", "nima", tmp_path / "a.jpg")
    assert (
        proc.returncode == 2
        and "NIMA_InceptionV2_ava" in proc.stderr
        and "--metrics" in proc.stderr
    )


def test_model_info_prints_the_paper_figures():
    proc = curate("model", "info", "--preset", "large", "--size", "224")
    assert proc.returncode == 0, proc.stderr
    assert "16.61 M parameters" in proc.stdout
    assert "DyNet-L reuse [4, 6, 6, 8]: 242.2 GFLOPs" in proc.stdout
    assert "DyNet-S reuse [2, 3, 3, 4]: 166.2 GFLOPs" in proc.stdout
