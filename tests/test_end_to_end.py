"""Whole runs: odd images through every stage, determinism, and resume after a kill."""

from __future__ import annotations

import io
import json
import os
import signal
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from curation.config import PipelineConfig
from curation.run import run_pipeline
from manifests import read_manifest, validate
from tests.demo_run import curate_run, snapshot
from tests.images import encode, png_16bit, textured


def _exif_rotated_jpeg(arr: np.ndarray) -> bytes:
    """A JPEG stored sideways with EXIF orientation 6 (display = rotate 90 degrees clockwise)."""
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=92, exif=exif)
    return buf.getvalue()


def test_odd_images_are_handled_the_same_way_in_every_stage(tmp_path):
    root = tmp_path / "odd"
    root.mkdir()
    (root / "gray.jpg").write_bytes(encode(textured(600, 560, 1), mode="L"))
    (root / "cmyk.jpg").write_bytes(encode(textured(600, 560, 2), mode="CMYK"))
    (root / "deep.png").write_bytes(png_16bit(textured(600, 560, 3)))
    (root / "alpha.png").write_bytes(encode(textured(600, 560, 4), "PNG", mode="RGBA"))
    (root / "rotated.jpg").write_bytes(_exif_rotated_jpeg(textured(700, 540, 5)))  # stored 700x540
    (root / "small.jpg").write_bytes(encode(textured(400, 300, 6)))  # kept, but no 512 tile fits
    cfg = PipelineConfig.model_validate(
        {
            "name": "odd",
            "sources": [{"name": "odd", "kind": "folder", "path": [str(root)]}],
            "download": {"min_side": 256},
            "score": {"metrics": ["niqe", "brisque"], "workers": 1},
            "filter": {"min_side": 256},
        }
    )
    run_pipeline(
        cfg, tmp_path / "run", ["download", "score", "filter", "patch"], log=lambda *_: None
    )
    assert validate(tmp_path / "run").ok
    images = {
        r["url"].rsplit("/", 1)[1]: r
        for r in read_manifest(tmp_path / "run" / "filter", "image").to_pylist()
    }
    assert {r["status"] for r in images.values()} == {"kept"}
    info = {name: json.loads(r["decode_info"]) for name, r in images.items()}
    assert info["gray.jpg"]["orig_mode"] == "L" and info["cmyk.jpg"]["orig_mode"] == "CMYK"
    assert info["deep.png"]["bit_depth"] == 16 and info["alpha.png"]["had_alpha"] is True
    assert info["rotated.jpg"]["exif_rotated"] is True
    # the upright size is what every stage after download uses
    assert (images["rotated.jpg"]["width"], images["rotated.jpg"]["height"]) == (540, 700)
    patches = read_manifest(tmp_path / "run" / "patch", "patch").to_pylist()
    by_image = {}
    for p in patches:
        by_image.setdefault(p["image_key"], []).append(p)
    assert images["small.jpg"]["key"] not in by_image  # smaller than a patch: no tile
    for name in ("gray.jpg", "cmyk.jpg", "deep.png", "alpha.png", "rotated.jpg"):
        assert len(by_image[images[name]["key"]]) == 1  # one 512 tile, kept or flat
    rotated = by_image[images["rotated.jpg"]["key"]][0]
    assert rotated["x"] == 14 and rotated["y"] == 94  # centred on the upright 540x700 image


@pytest.mark.parametrize("kill_when", ["score/_work/settings.json", "patch"])
def test_killed_run_resumes_to_the_same_result(tmp_path, clean_demo_run, kill_when):
    out = tmp_path / "run"
    proc = curate_run(out)
    deadline = time.time() + 300
    while not (out / kill_when).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before the kill point"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # no partial file is visible under a final name
    for tar in out.rglob("*.tar"):
        with tarfile.open(tar) as tf:
            tf.getmembers()
    again = curate_run(out)
    assert again.wait(timeout=600) == 0, again.stderr.read()
    assert validate(out).ok
    # the same result as an uninterrupted run: also two clean runs agree (determinism)
    assert snapshot(out) == snapshot(clean_demo_run)
