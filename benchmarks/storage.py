"""The demo pipeline into a local folder vs into an S3 bucket: time and requests per stage.

    python benchmarks/storage.py [--stages download,score,filter,patch]

The bucket is on a real S3 API server (moto's) on 127.0.0.1, so network latency and bandwidth
are those of loopback and the server is a Python process on the same 2 cores: the time ratio
is an upper bound of curate's own overhead on object stores here, not a forecast for AWS.
What carries over to any store is the **request count** per stage (by kind: GET, PUT, HEAD,
LIST, DELETE, multipart), per image and per shard: it is what a store bills and what its
latency multiplies. Every request, from this process, Ray workers and img2dataset's child, is
counted at the server.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from curation.offline_env import use_offline_env  # noqa: E402

use_offline_env()  # before anything imports albumentations / ray / pyiqa
from curation.config import load_pipeline  # noqa: E402
from curation.run import STAGES, stage_class  # noqa: E402
from tests.demo_run import snapshot  # noqa: E402
from tests.s3_server import new_bucket, s3_server  # noqa: E402

_REQUEST = re.compile(r'"([A-Z]+) (/[^ ]*) HTTP')
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # werkzeug colours the lines of non-200 answers


class RequestCounter(logging.Handler):
    """Counts the S3 requests the server logs (werkzeug's access log), by kind."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        m = _REQUEST.search(_COLOUR.sub("", record.getMessage()))
        if not m:
            return
        method, path = m.groups()
        query = path.partition("?")[2]
        if method == "GET" and "list-type" in query:
            kind = "LIST"
        elif "uploadId" in query or "uploads" in query:
            kind = "MULTIPART"
        else:
            kind = method
        self.counts[kind] += 1


def run_stages(out, stages: list[str], counter: RequestCounter) -> tuple[dict, dict]:
    """Run the demo's ``stages`` into ``out``: (seconds, requests) per stage."""
    from curation.ray_runtime import shutdown_ray

    cfg = load_pipeline("demo")
    seconds, requests = {}, {}
    for name in stages:
        counter.counts.clear()
        t = time.perf_counter()
        stage_class(name)(cfg, out, log=lambda *_: None).run()
        seconds[name] = time.perf_counter() - t
        requests[name] = dict(counter.counts)
    shutdown_ray()  # each run starts its own Ray, as `curate run` does
    return seconds, requests


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", default=",".join(STAGES))
    args = ap.parse_args()
    stages = args.stages.split(",")

    counter = RequestCounter()
    logging.getLogger("werkzeug").addHandler(counter)
    logging.getLogger("werkzeug").setLevel(logging.INFO)
    logging.getLogger("werkzeug").propagate = False  # counted, not printed
    with tempfile.TemporaryDirectory() as tmp, s3_server():
        bucket = new_bucket()
        # The bucket first: a second run gains from warm caches (imports, files), so the ratio
        # below is, if anything, an overestimate of the object store's cost.
        remote, requests = run_stages(bucket + "/run", stages, counter)
        local, _ = run_stages(Path(tmp) / "run", stages, counter)
        same = snapshot(Path(tmp) / "run") == snapshot(bucket + "/run")

    images, shards = 12, 2  # the demo: 12 downloaded images in 2 download shards
    print(
        f"demo pipeline, local folder vs S3 bucket (moto on 127.0.0.1); outputs identical: {same}"
    )
    print(f"{'stage':<9} {'local s':>8} {'S3 s':>7} {'ratio':>6}  requests (per image; per shard)")
    for name in stages:
        req = requests[name]
        total = sum(req.values())
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(req.items()))
        print(
            f"{name:<9} {local[name]:>8.1f} {remote[name]:>7.1f} {remote[name] / local[name]:>6.2f}"
            f"  {total} ({total / images:.1f}; {total / shards:.1f}): {kinds}"
        )


if __name__ == "__main__":
    main()
