"""Download stage throughput against a plain thread-pool fetch of the same loopback URLs.

    python benchmarks/download.py [--urls 500] [--threads 32] [--processes 2]

Serves ~1-3 MB JPEGs from a separate `python -m http.server` process on 127.0.0.1 (so the
server does not share a GIL with either client), then fetches every URL twice: once with a
plain ThreadPoolExecutor + urllib writing each body to a file (the baseline) and once with the
download stage (prefilter, img2dataset in a child process, header checks, shards, manifests).
The stage pays a fixed start-up cost (img2dataset's worker processes import torch, ~3 s each);
the marginal rate, from a second run with more URLs, shows the steady state.
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


def plain_fetch(urls: list[str], threads: int, out: Path) -> tuple[float, int]:
    """The baseline: fetch every URL with a thread pool and write each body to its own file."""
    out.mkdir()

    def get(url: str) -> int:
        with urllib.request.urlopen(url, timeout=30) as r:
            data = r.read()
        (out / url.rsplit("/", 1)[1]).write_bytes(data)
        return len(data)

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(get, urls))
    return time.perf_counter() - start, total


def measure(n_urls: int, args: argparse.Namespace) -> tuple[float, float, float, int]:
    """(plain seconds, stage seconds, MB, images downloaded) for n_urls loopback URLs."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        site = tmp / "site"
        site.mkdir()
        names, sizes = make_site(site, n_urls)
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
            base_s, nbytes = plain_fetch(urls, args.threads, tmp / "plain")
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
        finally:
            server.terminate()
            server.wait()
    return base_s, stage_s, nbytes / 1e6, summary.counts.get("downloaded", 0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--urls", type=int, default=500)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--per-shard", type=int, default=1000)
    ap.add_argument("--no-marginal", action="store_true", help="skip the second, 3x larger run")
    args = ap.parse_args()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

    runs = [(args.urls, *measure(args.urls, args))]
    if not args.no_marginal:
        runs.append((3 * args.urls, *measure(3 * args.urls, args)))
    print(
        f"threads={args.threads}, processes={args.processes}, cores={os.cpu_count()}, ~1.8 MB JPEGs on loopback"
    )
    print(f"{'':<34}{'URLs':>6}{'seconds':>9}{'URLs/s':>9}{'MB/s':>8}")
    for n, base_s, stage_s, mb, ok in runs:
        print(
            f"{'plain thread-pool fetch + write':<34}{n:>6}{base_s:>9.2f}{n / base_s:>9.1f}{mb / base_s:>8.1f}"
        )
        print(
            f"{'curate download stage':<34}{n:>6}{stage_s:>9.2f}{n / stage_s:>9.1f}{mb / stage_s:>8.1f}"
        )
        print(f"  ratio stage/plain {base_s / stage_s:.2f}   downloaded {ok}/{n}   (goal >= 0.8)")
    if len(runs) == 2:
        (n1, b1, s1, m1, _), (n2, b2, s2, m2, _) = runs
        plain_rate, stage_rate = (n2 - n1) / (b2 - b1), (n2 - n1) / (s2 - s1)
        print(
            f"marginal (steady state, {n2 - n1} extra URLs): plain {plain_rate:.1f} URLs/s, "
            f"stage {stage_rate:.1f} URLs/s, ratio {stage_rate / plain_rate:.2f}; "
            f"stage fixed start-up ~{s1 - n1 / stage_rate:.1f} s"
        )


if __name__ == "__main__":
    main()
