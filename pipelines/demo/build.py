"""Rebuild the demo's URL list and its deliberately bad files (run from the repo root).

The photos in ``www/`` are real (see LICENSES.csv); this script adds the broken ones and writes
``urls.parquet``, a LAION-style list whose URLs point at a host the demo serves on loopback.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

HERE = Path(__file__).resolve().parent
WWW = HERE / "www"
PREFIX = "http://curate-demo.localhost/"


def main() -> None:
    photos = list(csv.DictReader(open(WWW / "LICENSES.csv")))
    first = WWW / photos[0]["file"]
    (WWW / "not-an-image.jpg").write_text("<html><body>404 - the image moved</body></html>\n")
    Image.open(first).convert("RGB").crop((0, 0, 320, 240)).save(WWW / "small.jpg", quality=90)
    data = first.read_bytes()
    (WWW / "truncated.jpg").write_bytes(data[: len(data) * 35 // 100])

    rows = []

    def row(name, caption, w, h, pwatermark=0.1, punsafe=0.01):
        url = PREFIX + name
        rows.append(
            dict(
                URL=url,
                TEXT=caption,
                WIDTH=w,
                HEIGHT=h,
                similarity=0.31,
                pwatermark=pwatermark,
                punsafe=punsafe,
                hash=int(hashlib.sha1(url.encode()).hexdigest()[:15], 16),
                LANGUAGE="en",
                SAMPLE_ID=len(rows),
            )
        )

    for p in photos:
        row(
            p["file"], f"a photo ({p['license'].split(' (')[0]})", int(p["width"]), int(p["height"])
        )
    row("missing.jpg", "gone from the server (404)", 2048, 1536)
    row("not-an-image.jpg", "an HTML page instead of a JPEG", 2048, 1536)
    row("small.jpg", "declares 2048x1536 but is 320x240", 2048, 1536)
    row("truncated.jpg", "a JPEG cut off at 35%", 1293, 1024)
    row("thumbnail.jpg", "declared too small: prefiltered, never fetched", 640, 480)
    row("watermarked.jpg", "likely watermarked: prefiltered", 2048, 1536, pwatermark=0.97)
    row(photos[0]["file"], "the same URL twice", 1293, 1024)
    pq.write_table(pa.Table.from_pylist(rows), HERE / "urls.parquet")
    print(f"wrote {len(rows)} rows to {HERE / 'urls.parquet'}")


if __name__ == "__main__":
    main()
