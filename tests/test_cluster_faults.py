"""Fault tolerance on more than one node: a real Ray cluster on 127.0.0.1 (a head, 3 workers) loses a
worker node while it scores and another while it cuts patches; the run completes with every input
accounted for exactly once and the same manifests and patch tar bytes as an undisturbed run.

The head node has no CPU, so all work runs on the worker nodes. A node is killed (SIGKILL of
its raylet and object store, like a machine lost) at the moment one of its worker processes
is running a stage's task, seen from its process title (``ray::patch_part``), after at least
one of the stage's outputs exists: a kill in the middle of the stage, never before or after.
"""

from __future__ import annotations

import ipaddress
import json
import tarfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.config import PipelineConfig
from curation.local_cluster import node_runs_task
from curation.run import run_pipeline
from manifests import IMAGE, PATCH, find_manifests, validate
from tests.demo_run import snapshot
from tests.http_fixture import ImageServer
from tests.images import encode, textured

pytestmark = pytest.mark.timeout(420)

psutil = pytest.importorskip("psutil")

N_IMAGES = 8
W, H = 768, 512
TILES = (W // 128) * (H // 128)
SOURCE = "web"
STAGES = ["download", "score", "filter", "patch"]
DOWNLOAD_DELAY_S = 1.5
#: GCS declares a node dead after ~2 s of missed health checks (Ray's default: ~15 s).
FAST_FAILURE_DETECTION = {"health_check_period_ms": 500, "health_check_failure_threshold": 4}


def _half_flat(seed: int) -> np.ndarray:
    img = textured(W, H, seed)
    img[:, :256] = (90 + np.arange(256) / 8).astype(np.uint8)[None, :, None]  # a flat band
    return img


def _write_inputs(root: Path, server: ImageServer) -> Path:
    """N_IMAGES JPEGs on a loopback server, each answered after DOWNLOAD_DELAY_S so that the
    download lasts long enough to lose a node in it, plus a URL list naming them."""
    root.mkdir(parents=True)
    urls = []
    for i in range(N_IMAGES):
        arr = _half_flat(i) if i % 2 else textured(W, H, i)
        urls.append(server.add(f"img{i:02d}.jpg", encode(arr), delay=DOWNLOAD_DELAY_S))
    urls.append(f"{server.base}/img/missing.jpg")  # a 404: failed, still counted
    table = pa.table(
        {
            "URL": urls,
            "TEXT": [f"photo {i}" for i in range(len(urls))],
            "WIDTH": [W] * len(urls),
            "HEIGHT": [H] * len(urls),
        }
    )
    pq.write_table(table, root / "urls.parquet")
    return root


def _config(inputs: Path) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": "cluster-faults",
            "sources": [{"name": SOURCE, "kind": "laion", "path": [str(inputs / "urls.parquet")]}],
            # One image per download shard: many small units of work, so a kill lands mid-stage.
            "download": {"min_side": 512, "samples_per_shard": 1, "processes": 1, "threads": 4},
            "score": {"metrics": ["niqe", "brisque"], "workers": 2},
            "filter": {"min_side": 512},
            # 128 px tiles: 24 per image, so cutting lasts long enough to be interrupted.
            "patch": {"size": 128, "samples_per_shard": 16},
        }
    )


class _Saboteur(threading.Thread):
    """Kills worker nodes in the middle of stages: for each ``(glob, title)`` of the plan, the
    first node that runs a task titled ``title`` once the stage has written an output matching
    ``glob``. Records what it did, or why it could not."""

    def __init__(self, cluster, nodes: list, plan: list[tuple[str, str]], run_dir: Path):
        super().__init__(daemon=True)
        self.cluster, self.nodes, self.plan, self.run_dir = cluster, list(nodes), plan, run_dir
        self.kills: list[dict] = []
        self.error: str | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        for glob, title in self.plan:
            victim = None
            while victim is None and not self.stop.is_set():
                if any(self.run_dir.glob(glob)):
                    victim = next((n for n in self.nodes if node_runs_task(n, title)), None)
                if victim is None:
                    time.sleep(0.02)
            if victim is None:
                self.error = f"the run ended before a kill during {title} ({glob})"
                return
            done = len(list(self.run_dir.glob(glob)))
            self.cluster.remove_node(victim, allow_graceful=False)
            self.nodes.remove(victim)
            self.kills.append({"task": title, "outputs_before_kill": done})


def _keys(folder: Path, kind: str) -> Counter:
    return Counter(
        k for p in find_manifests(folder, kind) for k in pq.read_table(p)["key"].to_pylist()
    )


def _tar_keys(tars: list[Path], ext: str) -> Counter:
    keys: Counter = Counter()
    for tar in tars:
        with tarfile.open(tar) as tf:
            keys.update(m.name.rsplit(".", 1)[0] for m in tf.getmembers() if m.name.endswith(ext))
    return keys


def _check_accounting(run: Path) -> None:
    """Every input once per stage folder; every kept patch once in the manifests and tars."""
    inputs = N_IMAGES + 1
    for stage in ("download", "score", "filter"):
        keys = _keys(run / stage / SOURCE, IMAGE)
        assert len(keys) == inputs and set(keys.values()) == {1}, (stage, keys)
    rows = [
        r
        for p in find_manifests(run / "download" / SOURCE, IMAGE)
        for r in pq.read_table(p).to_pylist()
    ]
    downloaded = Counter(r["key"] for r in rows if r["status"] == "downloaded")
    assert len(downloaded) == N_IMAGES
    assert _tar_keys(sorted((run / "download" / SOURCE).glob("*.tar")), ".jpg") == downloaded

    patches = [
        r for p in find_manifests(run / "patch", PATCH) for r in pq.read_table(p).to_pylist()
    ]
    keys = Counter(r["key"] for r in patches)
    assert set(keys.values()) == {1}, "a patch row appears twice"
    assert len(patches) == N_IMAGES * TILES
    kept = Counter(r["key"] for r in patches if r["status"] == "kept")
    assert 0 < len(kept) < len(patches)  # the flat bands were rejected
    assert _tar_keys(sorted((run / "patch").rglob("*.tar")), ".png") == kept
    index = json.loads((run / "patch" / "index.json").read_text())
    assert index["samples"] == len(kept)
    # no temp file of a killed attempt is left in the run's outputs
    assert not [p for p in run.rglob(".*.tmp-*") if "_work" not in p.parts]
    assert validate(run).ok


def _assert_loopback_only() -> None:
    """Every socket that this process's descendants (Ray nodes, agents, workers) listen on
    is on 127.0.0.1."""
    pids = {p.pid for p in psutil.Process().children(recursive=True)}
    assert pids
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            ip = ipaddress.ip_address(conn.laddr.ip)
            ip = getattr(ip, "ipv4_mapped", None) or ip  # ::ffff:127.0.0.1
            assert ip.is_loopback, conn


@pytest.fixture(scope="module")
def cluster():
    from curation.local_cluster import start_local_cluster

    c, workers = start_local_cluster(3, 1, system_config=FAST_FAILURE_DETECTION)
    assert c.address.startswith("127.0.0.1:")
    _assert_loopback_only()
    yield c, workers
    c.shutdown()


@pytest.mark.slow
def test_a_run_survives_losing_worker_nodes_with_exact_accounting(tmp_path, cluster):
    c, workers = cluster
    with ImageServer() as server:
        _run_and_lose_nodes(tmp_path, c, workers, _config(_write_inputs(tmp_path / "in", server)))


def _run_and_lose_nodes(tmp_path: Path, c, workers: list, cfg: PipelineConfig) -> None:
    clean = tmp_path / "clean"
    t = time.time()
    sums = run_pipeline(cfg, clean, STAGES, address=c.address, log=lambda *_: None)
    print(f"clean run {time.time() - t:.1f} s", {s.stage: round(s.seconds, 1) for s in sums})
    _check_accounting(clean)

    hurt = tmp_path / "hurt"
    log: list[str] = []

    def logged(*a) -> None:
        log.append(" ".join(map(str, a)))

    # 1. The download (img2dataset's Ray distributor, one task per shard) loses a node while
    # it fetches; then a fresh node joins (nodes can only be added from the main thread).
    raw = f"download/{SOURCE}/_work/img2dataset/*_stats.json"
    kills = _sabotaged(c, workers, [(raw, "ray::ray_download")], hurt)
    with kills:
        run_pipeline(cfg, hurt, ["download"], address=c.address, log=logged)
    workers.append(c.add_node(num_cpus=1))
    c.wait_for_nodes()
    # 2. The other stages lose a node while scoring and another while cutting patches.
    plan = [
        (f"score/{SOURCE}/0*.parquet", "ray::ShardScorer.score_shard"),
        (f"patch/{SOURCE}/*.done.json", "ray::patch_part"),
    ]
    start = time.time()
    with _sabotaged(c, workers, plan, hurt) as more:
        sums = run_pipeline(cfg, hurt, STAGES[1:], address=c.address, log=logged)
    took = time.time() - start
    download_kill, score_kill, patch_kill = kills.kills + more.kills
    for kill in (download_kill, score_kill, patch_kill):  # each killed mid-stage
        assert 0 < kill["outputs_before_kill"] < N_IMAGES, kill
    # the score stage saw its worker die and redid that shard elsewhere
    assert any("worker lost" in line and "requeued" in line for line in log), log

    _assert_loopback_only()  # the worker processes the runs started too
    _check_accounting(hurt)
    assert snapshot(hurt) == snapshot(clean)
    print(
        f"disturbed run after the download: {took:.1f} s",
        {s.stage: round(s.seconds, 1) for s in sums},
    )


class _sabotaged:  # noqa: N801 - used as a context manager, named like one
    """Runs a _Saboteur during the ``with`` block; on exit checks it did every kill planned."""

    def __init__(self, cluster, workers: list, plan: list[tuple[str, str]], run_dir: Path):
        self.saboteur = _Saboteur(cluster, workers, plan, run_dir)
        self.workers, self.plan = workers, plan

    @property
    def kills(self) -> list[dict]:
        return self.saboteur.kills

    def __enter__(self):
        self.saboteur.start()
        return self

    def __exit__(self, *exc) -> None:
        self.saboteur.stop.set()
        self.saboteur.join(timeout=60)
        for node in [n for n in list(self.workers) if n not in self.saboteur.nodes]:
            self.workers.remove(node)  # killed: later stages and sabotages must not pick it
        if exc[0] is None:
            assert self.saboteur.error is None, self.saboteur.error
            assert len(self.saboteur.kills) == len(self.plan)


def test_workers_are_sized_from_the_nodes_the_cluster_reports():
    from curation.ray_runtime import cpus_per_unit, fit_count

    small = [{"CPU": 0.0}, {"CPU": 2.0}, {"CPU": 2.0}]  # a head without CPUs, two 2-core nodes
    big = [{"CPU": 16.0, "GPU": 2.0}, {"CPU": 64.0}]
    assert cpus_per_unit(small) == 0.5 and cpus_per_unit(small, 2) == 1.0
    assert cpus_per_unit(big) == 1.0 and cpus_per_unit([]) == 1.0
    assert fit_count({"CPU": 1}, small) == 4
    assert fit_count({"CPU": 3}, small) == 0  # 4 CPUs in all, but no node has 3
    assert fit_count({"CPU": 1}, big) == 80
    assert fit_count({"GPU": 1, "CPU": 1}, big) == 2
    assert fit_count({"GPU": 0.5, "CPU": 4}, big) == 4
