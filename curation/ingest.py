"""Ingest local image folders (DIV2K / Flickr2K / LSDIR style trees) into shards + manifests.

The shards look like the download stage's: one tar of ``<key>.<ext>`` + ``<key>.json`` per
shard, and a manifest part of the same name beside it. Files keep their original bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path

import webdataset as wds
from PIL import Image

from curation.config import DownloadConfig, SourceConfig
from curation.keys import sample_key
from manifests import IMAGE, write_manifest

_EXT_BY_FORMAT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif"}


def probe_image(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """(format, width, height) after a full decode; raises ValueError with a snake_case reason.

    The header is read first so an image declaring too many pixels is refused before its pixels
    are allocated; then the pixels are decoded to catch truncated files.
    """
    # Pillow's own bomb guard uses a global limit; ours (max_pixels) is the config's, so the
    # header check below decides, and Pillow's warning is silenced.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            width, height = im.size
            if width * height > max_pixels:
                raise ValueError("too_many_pixels")
            im.load()
    except Image.DecompressionBombError:
        raise ValueError("too_many_pixels") from None
    except ValueError:
        raise
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"decode_error: {exc}") from None
    return im.format or "", width, height


def ingest_folder(src: SourceConfig, files: list[tuple[Path, str]], cfg: DownloadConfig, dest: Path) -> list[Path]:
    """Write the not-yet-published shards of a folder source; returns new manifest paths."""
    new = []
    per = cfg.samples_per_shard
    for sid, start in enumerate(range(0, len(files), per)):
        name = f"{sid:05d}"
        manifest, tar = dest / f"{name}.parquet", dest / f"{name}.tar"
        if manifest.exists() and tar.exists():
            continue
        rows = []
        tmp = tar.with_name(f".{tar.name}.tmp-{os.getpid()}")
        with wds.TarWriter(str(tmp)) as sink:
            for path, rel in files[start : start + per]:
                rows.append(_ingest_one(src, path, rel, cfg, sink, name))
        os.replace(tmp, tar)
        write_manifest(rows, manifest, IMAGE)
        new.append(manifest)
    return new


def _ingest_one(src: SourceConfig, path: Path, rel: str, cfg: DownloadConfig, sink: wds.TarWriter, shard: str) -> dict:
    key = sample_key(src.name, rel)
    row = dict(key=key, source=src.name, url=path.resolve().as_uri(), stage="download", sample_key=key)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return row | dict(status="failed", error=f"read_error: {exc}")
    try:
        fmt, width, height = probe_image(data, cfg.max_image_pixels)
    except ValueError as exc:
        reason = str(exc)
        if reason == "too_many_pixels":
            return row | dict(status="rejected", reason=reason, bytes=len(data))
        return row | dict(status="failed", error=reason, bytes=len(data))
    row |= dict(width=width, height=height, bytes=len(data))
    if min(width, height) < cfg.min_side:
        return row | dict(status="rejected", reason="too_small")
    ext = _EXT_BY_FORMAT.get(fmt, Path(rel).suffix.lstrip(".").lower())
    meta = {"key": key, "url": row["url"], "source": src.name, "width": width, "height": height}
    sink.write({"__key__": key, ext: data, "json": json.dumps(meta).encode()})
    return row | dict(
        status="downloaded",
        sha256=hashlib.sha256(data).hexdigest(),
        reencoded=False,
        shard=f"{shard}.tar",
    )
