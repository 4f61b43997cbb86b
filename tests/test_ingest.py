"""Local folder ingestion (DIV2K / LSDIR style trees) into the same shard + manifest format."""

from __future__ import annotations

import tarfile

from curation.config import PipelineConfig
from curation.stages.download import DownloadStage
from manifests import read_manifest, validate
from tests.images import encode, png_16bit, png_header_only, textured


def test_folder_tree_ingests_with_every_file_accounted(tmp_path):
    root = tmp_path / "DIV2K_train_HR"
    (root / "sub").mkdir(parents=True)
    (root / "0001.png").write_bytes(encode(textured(300, 280, 1), "PNG"))
    (root / "0002.jpg").write_bytes(encode(textured(300, 280, 2)))
    (root / "sub" / "0003.png").write_bytes(png_16bit(textured(300, 300, 3)))
    (root / "sub" / "0004.png").write_bytes(encode(textured(300, 300, 4), "PNG", mode="RGBA"))
    (root / "small.jpg").write_bytes(encode(textured(100, 80)))
    data = encode(textured(300, 300, 5))
    (root / "trunc.jpg").write_bytes(data[: len(data) // 3])
    (root / "fake.jpg").write_text("not an image")
    (root / "bomb.png").write_bytes(png_header_only(50000, 50000))
    (root / "README.txt").write_text("ignored: not an image")
    cfg = PipelineConfig.model_validate(
        {
            "name": "f",
            "sources": [{"name": "div2k", "kind": "folder", "path": [str(root)]}],
            "download": {"min_side": 256, "samples_per_shard": 3, "max_image_pixels": 10_000_000},
        }
    )
    run_dir = tmp_path / "run"
    logs = []
    DownloadStage(cfg, run_dir, log=logs.append).run()
    assert any("ignored 1 file" in line for line in logs)
    rows = {
        r["url"].rsplit("/", 1)[1]: r
        for r in read_manifest(run_dir / "download", "image").to_pylist()
    }
    assert len(rows) == 8
    for name in ("0001.png", "0002.jpg", "0003.png", "0004.png"):
        assert rows[name]["status"] == "downloaded"
    assert rows["small.jpg"]["reason"] == "too_small"
    assert rows["bomb.png"]["reason"] == "too_many_pixels"
    assert rows["trunc.jpg"]["status"] == "downloaded"  # header intact: the score stage decodes it
    assert rows["fake.jpg"]["status"] == "failed" and rows["fake.jpg"]["reason"] == "not_an_image"
    assert validate(run_dir).ok
    # original bytes are kept, under the manifest key, with the real format's extension
    r = rows["0001.png"]
    with tarfile.open(run_dir / "download" / "div2k" / r["shard"]) as tf:
        assert tf.extractfile(f"{r['key']}.png").read() == (root / "0001.png").read_bytes()
