"""Download stage throughput against a plain thread-pool fetch of the same loopback URLs.

    python benchmarks/download.py [--urls 500] [--threads 32] [--processes 2]

Serves ~1-3 MB JPEGs from a separate `python -m http.server` process on 127.0.0.1 (so the
server does not share a GIL with either client), then fetches every URL twice: once with a
plain ThreadPoolExecutor + urllib (the baseline: bytes fetched, nothing checked or written) and
once with the download stage (prefilter, img2dataset with size checks, shards, manifests).
Prints URLs/s, MB/s and the ratio. Goal: stage >= 0.8 x baseline.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from curation.config import PipelineConfig  # noqa: E402
from curation.stages.download import DownloadStage  # noqa: E402
from tests.images import encode, textured  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_site(
    root: Path, n_urls: int, n_distinct: int = 16
) -> tuple[list[str], list[tuple[int, int]]]:
    """n_distinct real encoded JPEGs, exposed under n_urls names (symlinks)."""
    names, sizes = [], []
    for i in range(n_distinct):
        w, h = 1400 + 40 * i, 1100 + 30 * i
        (root / f"src{i}.jpg").write_bytes(encode(textured(w, h, i), quality=95))
    for j in range(n_urls):
        i = j % n_distinct
        (root / f"img{j:05d}.jpg").symlink_to(root / f"src{i}.jpg")
        names.append(f"img{j:05d}.jpg")
        sizes.append((1400 + 40 * i, 1100 + 30 * i))
    return names, sizes


def plain_fetch(urls: list[str], threads: int) -> tuple[float, int]:
    def get(url: str) -> int:
        with urllib.request.urlopen(url, timeout=30) as r:
            return len(r.read())

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(get, urls))
    return time.perf_counter() - start, total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--urls", type=int, default=500)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--per-shard", type=int, default=100)
    args = ap.parse_args()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        site = tmp / "site"
        site.mkdir()
        names, sizes = make_site(site, args.urls)
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "http.server",
                str(port),
                "--bind",
                "127.0.0.1",
                "--directory",
                str(site),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}/"
            for _ in range(50):
                try:
                    urllib.request.urlopen(base + names[0], timeout=1).read()
                    break
                except OSError:
                    time.sleep(0.1)
            urls = [base + n for n in names]
            pq.write_table(
                pa.table(
                    {
                        "URL": urls,
                        "TEXT": ["x"] * len(urls),
                        "WIDTH": [w for w, _ in sizes],
                        "HEIGHT": [h for _, h in sizes],
                    }
                ),
                tmp / "urls.parquet",
            )
            base_s, nbytes = plain_fetch(urls, args.threads)
            cfg = PipelineConfig.model_validate(
                {
                    "name": "bench",
                    "sources": [
                        {"name": "bench", "kind": "laion", "path": [str(tmp / "urls.parquet")]}
                    ],
                    "download": {
                        "min_side": 1024,
                        "samples_per_shard": args.per_shard,
                        "processes": args.processes,
                        "threads": args.threads,
                    },
                }
            )
            start = time.perf_counter()
            summary = DownloadStage(cfg, tmp / "run", log=lambda *_: None).run()
            stage_s = time.perf_counter() - start
            # img2dataset's own time, from its per-shard stats, to separate fixed start-up cost.
            ok = summary.counts.get("downloaded", 0)
        finally:
            server.terminate()
            server.wait()

    mb = nbytes / 1e6
    print(
        f"{args.urls} URLs, {mb:.0f} MB, threads={args.threads}, processes={args.processes}, cores={os.cpu_count()}"
    )
    print(f"{'':<28}{'seconds':>9}{'URLs/s':>9}{'MB/s':>8}")
    print(
        f"{'plain thread-pool fetch':<28}{base_s:>9.2f}{args.urls / base_s:>9.1f}{mb / base_s:>8.1f}"
    )
    print(
        f"{'curate download stage':<28}{stage_s:>9.2f}{args.urls / stage_s:>9.1f}{mb / stage_s:>8.1f}"
    )
    print(
        f"ratio (stage / plain, URLs/s): {base_s / stage_s:.2f}   downloaded={ok}/{args.urls}  (goal >= 0.8)"
    )


if __name__ == "__main__":
    main()
