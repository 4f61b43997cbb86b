"""A small patch run folder, written the way the patch stage writes one, without running it.

``<run>/patch/<source>/<part>-NNN.tar`` (``<key>.png`` + ``<key>.json`` per sample, via
webdataset's TarWriter, mtime 0), a patch manifest ``<part>-NNN.parquet`` beside each tar (kept
rows pointing at it, plus one rejected ``flat`` row without a shard, as the stage leaves them) and
``<run>/patch/index.json`` = {format, size, samples, shards: [{path, samples}]} with paths
relative to ``<run>/patch/``, sorted (the format of `curation.stages.patch.PatchStage`).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import webdataset as wds

from manifests import PATCH, write_manifest

SOURCE = "gen"


def smooth_patch(size: int, seed: int) -> np.ndarray:
    """A smooth random RGB image (a coarse random grid upscaled bicubically) plus mild grain."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(30, 225, (6, 6, 3)).astype(np.float32)
    img = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 2, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode_png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    assert ok
    return buf.tobytes()


def patch_key(shard: int, i: int) -> str:
    return f"{shard:04d}{i:04d}aa_{(i // 2) * 512}_{(i % 2) * 512}"


def make_patch_run(
    run: Path,
    shards: tuple[int, ...] = (4, 4, 4),
    size: int = 512,
    seed: int = 0,
    parts: int = 2,
    corrupt: frozenset[int] = frozenset(),
    images: list[np.ndarray] | None = None,
) -> dict:
    """Write a patch run with ``shards[i]`` samples in shard i (spread over ``parts`` parts).

    Returns the index dict. Sample images are ``images[g % len(images)]`` (RGB uint8,
    ``size`` px square) when given, else `smooth_patch(size, seed * 1000 + g)`, ``g`` being the
    global sample number; the samples in ``corrupt`` get a PNG cut short (undecodable).
    """
    patch = run / "patch"
    dest = patch / SOURCE
    dest.mkdir(parents=True, exist_ok=True)
    entries, g = [], 0
    for s, n in enumerate(shards):
        part, sub = s % parts, s // parts
        stem = f"{part:05d}-{sub:03d}"
        rows = []
        with wds.TarWriter(str(dest / f"{stem}.tar"), mtime=0) as sink:
            for i in range(n):
                key = patch_key(s, i)
                meta = {"key": key, "image_key": key[:10], "x": 0, "y": 0, "size": size}
                rgb = images[g % len(images)] if images else smooth_patch(size, seed * 1000 + g)
                data = encode_png(rgb)
                if g in corrupt:
                    data = data[:100]
                sink.write({"__key__": key, "png": data, "json": json.dumps(meta).encode()})
                rows.append(_row(key, size, "kept", f"{stem}.tar"))
                g += 1
        rows.append(_row(patch_key(s, n) + "f", size, "rejected", None, reason="flat"))
        write_manifest(rows, dest / f"{stem}.parquet", PATCH)
        entries.append({"path": f"{SOURCE}/{stem}.tar", "samples": n})
    entries.sort(key=lambda e: e["path"])
    index = {"format": "png", "size": size, "samples": g, "shards": entries}
    (patch / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return index


def _row(key: str, size: int, status: str, shard: str | None, reason: str | None = None) -> dict:
    return {
        "key": key,
        "image_key": key[:10],
        "url": f"file:///{key[:10]}.png",
        "source": SOURCE,
        "x": 0,
        "y": 0,
        "size": size,
        "flat_fraction": 0.9 if reason else 0.1,
        "shard": shard,
        "stage": "patch",
        "status": status,
        "reason": reason,
        "score_niqe": 4.0,
    }
