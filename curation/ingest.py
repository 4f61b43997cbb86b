"""Ingest local image folders (DIV2K / Flickr2K / LSDIR style trees) into shards + manifests.

The shards look like the download stage's: ``<key>.<format>`` + ``<key>.json`` per image, one
manifest part of the same name beside each tar. Files keep their original bytes and, like
downloads, are judged from their header; the score stage decodes them.
"""

from __future__ import annotations

import webdataset as wds

from curation.config import DownloadConfig, SourceConfig
from curation.keys import sample_key
from curation.samples import store_sample
from manifests import IMAGE, write_manifest
from manifests.storage import Location, atomic_output, is_remote


def ingest_folder(
    src: SourceConfig, files: list[tuple[Location, str]], cfg: DownloadConfig, dest: Location
) -> list[Location]:
    """Write the not-yet-published shards of a folder source; returns new manifest paths."""
    new = []
    per = cfg.samples_per_shard
    for sid, start in enumerate(range(0, len(files), per)):
        name = f"{sid:05d}"
        manifest, tar = dest / f"{name}.parquet", dest / f"{name}.tar"
        if manifest.exists() and tar.exists():
            continue
        # The tar first, its manifest last: the manifest is the shard's done marker.
        with atomic_output(tar) as tmp, wds.TarWriter(str(tmp), mtime=0) as sink:
            # fixed mtime: reproducible tars
            rows = [
                _ingest_one(src, path, rel, cfg, sink, tar.name)
                for path, rel in files[start : start + per]
            ]
        write_manifest(rows, manifest, IMAGE)
        new.append(manifest)
    return new


def _ingest_one(
    src: SourceConfig,
    path: Location,
    rel: str,
    cfg: DownloadConfig,
    sink: wds.TarWriter,
    shard: str,
) -> dict:
    key = sample_key(src.name, rel)
    url = str(path) if is_remote(path) else path.resolve().as_uri()
    row = dict(key=key, source=src.name, url=url, stage="download")
    try:
        data = path.read_bytes()
    except OSError as exc:
        return row | dict(status="failed", reason="read_error", error=str(exc))
    return store_sample(row, data, cfg, sink, shard)
