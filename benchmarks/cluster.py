"""The demo pipeline on 1, 2 and 3 local Ray nodes: scheduling overhead, recovery, scaling.

    python benchmarks/cluster.py [--nodes 1,2,3] [--gpu-images-per-s 25] [--no-kill]

On a 2-core machine more Ray nodes add no cores, so this is not a speed test. It measures:

- per-worker figures, Ray-free, on the demo's own downloaded shards: score seconds per image
  (one 1-thread ShardScorer, NIQE + BRISQUE as the demo runs), patch seconds per image
  (``patch_part`` in-process);
- scheduling overhead per shard on each cluster size: the stage's own Ray path on empty work
  (``patch_part`` on parts with no kept image, ``score_shard`` on shards with no key through
  the fault-tolerant actor pool), so the figure is Ray's cost per unit, not compute; the
  "cold" task figure includes starting the worker processes of every node;
- the whole demo pipeline's stage times on each cluster size (nodes share the same 2 cores);
- recovery from killed nodes: on the largest cluster, a worker node is SIGKILLed while it
  scores a shard and another while it cuts a patch part; reports the seconds from the kill
  until the driver requeues the shard, until the patch stage is done (Ray reruns the part),
  and each stage's extra wall time over the undisturbed run. Ray's default failure
  detection is used (no test-only health-check settings).

Then a table of projected stage throughput for 8 / 64 / 512 CPUs and 1 / 8 / 64 GPUs, from
the per-worker figures and the measured overhead per shard (efficiency = compute per shard /
(compute + overhead)). GPU scoring is NOT measured here (no GPU): its per-GPU rate is the
``--gpu-images-per-s`` assumption, printed as such. Projections ignore storage and network
bandwidth and the driver's manifest writes (measured and printed separately per shard).
Every node listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from curation.offline_env import use_offline_env  # noqa: E402

use_offline_env()  # before anything imports albumentations / ray / pyiqa
from curation.config import load_pipeline  # noqa: E402
from curation.local_cluster import node_runs_task  # noqa: E402
from curation.run import STAGES, run_pipeline  # noqa: E402
from manifests import IMAGE, find_manifests, write_manifest  # noqa: E402


def start_cluster(n_nodes: int, cpus_per_node: int):
    """A head without CPUs (the driver's node) plus ``n_nodes`` worker nodes; (cluster, workers, s)."""
    from curation.local_cluster import start_local_cluster

    t = time.perf_counter()
    c, workers = start_local_cluster(n_nodes, cpus_per_node)
    return c, workers, time.perf_counter() - t


def per_worker_figures(run: Path) -> dict:
    """Ray-free seconds per image for scoring (one 1-thread worker) and patching (one CPU)."""
    from curation.shard_scorer import ShardScorer
    from curation.stages.patch import patch_part

    cfg = load_pipeline("demo")
    scorer = ShardScorer(["niqe", "brisque"], max_pixels=cfg.score.max_pixels, threads=1)
    n_img, t_score = 0, 0.0
    for part in find_manifests(run / "download", IMAGE):
        rows = [r for r in pq.read_table(part).to_pylist() if r["status"] == "downloaded"]
        if rows:
            t = time.perf_counter()
            scorer.score_shard(str(part.parent / rows[0]["shard"]), [r["key"] for r in rows])
            t_score += time.perf_counter() - t
            n_img += len(rows)
    n_kept, t_patch = 0, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for part in find_manifests(run / "filter", IMAGE):
            t = time.perf_counter()
            done = patch_part(str(part), tmp, cfg.patch, cfg.score.max_pixels)
            t_patch += time.perf_counter() - t
            n_kept += done["counts"]["images"]
    # the driver's share of the score stage: one manifest part written per shard
    part = find_manifests(run / "score", IMAGE)[0]
    rows = pq.read_table(part).to_pylist()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        for i in range(20):
            write_manifest(rows, Path(tmp) / f"{i}.parquet", IMAGE)
        t_write = (time.perf_counter() - t) / 20
    return {
        "score_s_per_image": t_score / max(n_img, 1),
        "patch_s_per_image": t_patch / max(n_kept, 1),
        "images_scored": n_img,
        "images_patched": n_kept,
        "driver_write_s_per_shard": t_write,
    }


def overhead_per_shard(ray, run: Path, n_units: int = 40) -> dict:
    """Seconds of Ray machinery per shard, on empty work through each stage's own path."""
    from curation.actor_map import map_on_actors
    from curation.config import PatchConfig
    from curation.ray_runtime import alive_nodes, cpus_per_unit
    from curation.shard_scorer import ShardScorer
    from curation.stages.patch import patch_part

    nodes = alive_nodes(ray)
    cpus = cpus_per_unit(nodes)
    with tempfile.TemporaryDirectory(dir=run) as tmp:
        tmp = Path(tmp)
        empty = [
            r | {"status": "failed"}
            for r in pq.read_table(find_manifests(run / "download", IMAGE)[0]).to_pylist()
        ]
        parts = []
        for i in range(n_units):
            write_manifest(empty, tmp / "in" / f"{i:05d}.parquet", IMAGE)
            parts.append(str(tmp / "in" / f"{i:05d}.parquet"))
        task = ray.remote(patch_part).options(num_cpus=cpus, max_retries=3)
        # A first batch starts the worker processes (imports); the second is the steady state.
        t = time.perf_counter()
        ray.get([task.remote(p, str(tmp / "out"), PatchConfig(), 1 << 26) for p in parts])
        cold_s = (time.perf_counter() - t) / n_units
        t = time.perf_counter()
        ray.get([task.remote(p, str(tmp / "out"), PatchConfig(), 1 << 26) for p in parts])
        task_s = (time.perf_counter() - t) / n_units

        n_workers = sum(int(n.get("CPU", 0)) for n in nodes)
        actor = ray.remote(ShardScorer).options(num_cpus=cpus, scheduling_strategy="SPREAD")
        t = time.perf_counter()
        warm = [
            actor.remote(["niqe", "brisque"], max_pixels=1 << 26, threads=1)
            for _ in range(n_workers)
        ]
        ray.get([a.__ray_ready__.remote() for a in warm])
        start_s = time.perf_counter() - t  # import torch + pyiqa, build the models
        tar = next((run / "download").rglob("0*.tar"))
        jobs = [(str(tar), [])] * n_units
        pool = iter(warm)
        t = time.perf_counter()
        for _ in map_on_actors(
            ray,
            lambda: next(pool),
            n_workers,
            jobs,
            lambda w, j: w.score_shard.remote(*j),
            max_retries=3,
            log=lambda *_: None,
        ):
            pass
        actor_s = (time.perf_counter() - t) / n_units
    return {
        "task_s": task_s,
        "task_cold_s": cold_s,
        "actor_call_s": max(actor_s, 0.0),
        "worker_start_s": start_s,
        "workers": n_workers,
    }


def timed_run(cfg, run: Path, address: str, log) -> dict[str, float]:
    summaries = run_pipeline(cfg, run, STAGES, address=address, log=log)
    return {s.stage: s.seconds for s in summaries}


def recovery(c, workers, cfg, tmp: Path, undisturbed: dict) -> dict:
    """Kill a worker node while it scores a shard, another while it cuts a part; how long
    until the driver learns of each loss, and what each stage took over the undisturbed run."""
    run = tmp / "killed"
    lines: list[tuple[float, str]] = []
    kills: dict[str, float] = {}
    stop = threading.Event()
    alive = list(workers)

    def saboteur() -> None:
        for title in ("ray::ShardScorer.score_shard", "ray::patch_part"):
            while not stop.is_set():
                victim = next((n for n in alive if node_runs_task(n, title)), None)
                if victim is not None:
                    kills[title] = time.perf_counter()
                    c.remove_node(victim, allow_graceful=False)
                    alive.remove(victim)
                    break
                time.sleep(0.02)

    th = threading.Thread(target=saboteur, daemon=True)
    th.start()
    try:
        stages = timed_run(
            cfg,
            run,
            c.address,
            lambda *a: lines.append((time.perf_counter(), " ".join(map(str, a)))),
        )
    finally:
        stop.set()
        th.join()
    out = {f"{s}_extra_s": stages[s] - undisturbed[s] for s in ("score", "patch")}
    t_score = kills.get("ray::ShardScorer.score_shard")
    if t_score is not None:
        lost = [t for t, line in lines if "worker lost" in line and t >= t_score]
        out["score_detect_s"] = (lost[0] - t_score) if lost else float("nan")
    t_patch = kills.get("ray::patch_part")
    if t_patch is not None:
        parts = [t for t, line in lines if line.startswith("[patch] ") and " part(s): " in line]
        out["patch_done_after_kill_s"] = (parts[-1] - t_patch) if parts else float("nan")
    out["killed_during"] = sorted(t.removeprefix("ray::") for t in kills)
    return out


def scaling_table(fig: dict, overhead: dict, images_per_shard: int, gpu_rate: float) -> str:
    def eff(compute_s: float, over_s: float) -> float:
        return compute_s / (compute_s + over_s)

    s_img, p_img = fig["score_s_per_image"], fig["patch_s_per_image"]
    e_score = eff(s_img * images_per_shard, overhead["actor_call_s"])
    e_patch = eff(p_img * images_per_shard, overhead["task_s"])
    driver_cap = images_per_shard / fig["driver_write_s_per_shard"]
    out = [
        f"projected throughput, images/s (shards of {images_per_shard} images; efficiency "
        f"score {e_score:.3f}, patch {e_patch:.3f}; driver writes cap score at {driver_cap:,.0f}/s)",
        f"{'resources':<12}{'score (CPU, 1 thread/worker)':>30}{'patch':>12}",
    ]
    for cpus in (8, 64, 512):
        score = min(cpus / s_img * e_score, driver_cap)
        out.append(f"{f'{cpus} CPUs':<12}{score:>30,.1f}{cpus / p_img * e_patch:>12,.1f}")
    out.append(f"{'resources':<12}{'score (GPU) ASSUMED ' + f'{gpu_rate:g} img/s per GPU':>42}")
    for gpus in (1, 8, 64):
        e_gpu = eff(images_per_shard / gpu_rate, overhead["actor_call_s"])
        out.append(f"{f'{gpus} GPUs':<12}{min(gpus * gpu_rate * e_gpu, driver_cap):>42,.1f}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", default="1,2,3")
    ap.add_argument("--cpus-per-node", type=int, default=1)
    ap.add_argument(
        "--images-per-shard",
        type=int,
        default=1000,
        help="shard size for the projection (million-ird: 10000 per download shard)",
    )
    ap.add_argument(
        "--gpu-images-per-s",
        type=float,
        default=25.0,
        help="ASSUMED NIQE+BRISQUE images/s per GPU at 1024 px (not measured here)",
    )
    ap.add_argument("--no-kill", action="store_true")
    args = ap.parse_args()
    import ray

    cfg = load_pipeline("demo")
    quiet = lambda *_: None  # noqa: E731
    rows, overhead, fig, rec = [], None, None, None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sizes = [int(n) for n in args.nodes.split(",")]
        for n in sizes:
            c, workers, up_s = start_cluster(n, args.cpus_per_node)
            try:
                stages = timed_run(cfg, tmp / f"run{n}", c.address, quiet)
                ray.init(address=c.address, logging_level="WARNING")
                over = overhead_per_shard(ray, tmp / f"run{n}")
                ray.shutdown()
                rows.append((n, up_s, stages, over))
                if n == sizes[-1]:
                    overhead = over
                    fig = per_worker_figures(tmp / f"run{n}")
                    if not args.no_kill and n > 1:
                        rec = recovery(c, workers, cfg, tmp, stages)
            finally:
                ray.shutdown()
                c.shutdown()

    print(
        f"demo pipeline ({fig['images_scored']} images scored, {fig['images_patched']} patched), "
        f"{os.cpu_count()} cores shared by all nodes, {args.cpus_per_node} CPU per worker node, head 0 CPU"
    )
    print(
        f"{'nodes':>5}{'start s':>9}{'download':>10}{'score':>8}{'filter':>8}{'patch':>8}"
        f"{'task/shard ms':>15}{'(cold)':>8}{'actor call ms':>15}{'workers up s':>14}"
    )
    for n, up_s, st, ov in rows:
        print(
            f"{n:>5}{up_s:>9.1f}{st['download']:>10.1f}{st['score']:>8.1f}{st['filter']:>8.1f}"
            f"{st['patch']:>8.1f}{ov['task_s'] * 1e3:>15.1f}{ov['task_cold_s'] * 1e3:>8.0f}{ov['actor_call_s'] * 1e3:>15.1f}"
            f"{ov['worker_start_s']:>14.1f}"
        )
    print(
        f"per worker, Ray-free: score {fig['score_s_per_image']:.3f} s/image (1 thread, NIQE+BRISQUE), "
        f"patch {fig['patch_s_per_image']:.3f} s/image; driver writes a score manifest part "
        f"in {fig['driver_write_s_per_shard'] * 1e3:.1f} ms"
    )
    if rec:
        print(
            f"recovery, Ray's default failure detection; nodes killed while running: "
            f"{', '.join(rec['killed_during']) or 'none (the stages ended first)'}"
        )
        if "score_detect_s" in rec:
            print(
                f"  score: the lost shard was requeued {rec['score_detect_s']:.1f} s after the kill; "
                f"stage {rec['score_extra_s']:+.1f} s vs undisturbed"
            )
        if "patch_done_after_kill_s" in rec:
            print(
                f"  patch: Ray reran the lost part; stage done {rec['patch_done_after_kill_s']:.1f} s "
                f"after the kill, {rec['patch_extra_s']:+.1f} s vs undisturbed"
            )
    print(scaling_table(fig, overhead, args.images_per_shard, args.gpu_images_per_s))


if __name__ == "__main__":
    main()
