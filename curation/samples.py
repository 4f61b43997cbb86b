"""Judge one fetched image from its header and store it in a shard: shared by URL downloads
and folder ingestion, so both give the same manifest rows and the same tar layout."""

from __future__ import annotations

import hashlib
import json

from curation.config import DownloadConfig
from curation.probe import probe_image

#: Fields copied into each sample's ``.json`` beside the image.
_SAMPLE_META = ("key", "source", "url", "caption", "width", "height")


def store_sample(
    row: dict, data: bytes, cfg: DownloadConfig, sink, shard: str, sha256: str | None = None
) -> dict:
    """Fill ``row`` (an image manifest row) from the image header; write kept images to
    ``sink`` (a webdataset TarWriter) as ``<key>.<format>`` + ``<key>.json``.

    ``sha256`` may be given when already computed (img2dataset hashes what it fetched).
    """
    probe = probe_image(data, min_side=cfg.min_side, max_pixels=cfg.max_image_pixels)
    row = dict(
        row,
        stage="download",
        status=probe.status,
        reason=probe.reason,
        error=probe.error,
        width=probe.width,
        height=probe.height,
        bytes=len(data),
        format=probe.ext,
    )
    if probe.status == "downloaded":
        row.update(sha256=sha256 or hashlib.sha256(data).hexdigest(), shard=shard)
        meta = {k: row.get(k) for k in _SAMPLE_META}
        sink.write({"__key__": row["key"], probe.ext: data, "json": json.dumps(meta).encode()})
    return row
