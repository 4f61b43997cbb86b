"""Score stage throughput and memory: the metrics alone, the stage on Ray, and a plain loop.

    python benchmarks/score.py [--images 12] [--repeats 3] [--per-shard 3] [--quick]
                               [--sections cpu,stage,memory,gpu,cascade]

Real photos: the demo's (pipelines/demo/www, 1024 px on the short side) and, for 2048 px, the
originals in ../shared/photos (beside the repository) downscaled to 2048 px on the short side,
or the demo photos upscaled 2x when that folder is missing. NIQE and BRISQUE use the vendored
weights; NIMA uses a checkpoint with seeded random weights (tests/nima.py): the same network and
compute as the real AVA weights, meaningless scores. Everything runs offline.

Sections (all printed, nothing asserted):
  cpu     images/s per metric and for all three (MetricSet.score, then with JPEG decode),
          at 1024 and 2048 px, with 1 and 2 torch threads; medians over --repeats images.
  stage   DownloadStage + ScoreStage (folder source, workers auto, 1 thread per worker) against
          a plain single-process loop (decode_image + MetricSet, 2 torch threads) over the same
          files. Stage wall times include Ray start-up (first run) and actor start-up + model
          loading (every run); the steady-state rate is the marginal rate between a run of N and
          a run of 2N images in the same Ray session. Goal: stage / plain >= 0.9 on 2 cores.
  memory  peak RSS of the plain loop per metric at 1024 and 2048 px, one child process per
          measurement (2 torch threads), and of the Ray scorer actors during the stage runs.
  gpu     images/s per metric on CUDA at 1024/2048 px (square crops) and batch sizes 1 and 4;
          skipped, with a line saying so, when torch.cuda.is_available() is False.
  cascade the score stage in full and in cascade mode (score.cascade: cheapest metric first,
          the rest skipped once an image fails a threshold) on the demo photos plus a blurred
          copy of each, each followed by the filter: metric evaluations saved, stage time, and
          whether both select the same images.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from curation.offline_env import use_offline_env  # noqa: E402

use_offline_env()  # before anything imports albumentations / ray / pyiqa
from curation.config import PipelineConfig  # noqa: E402
from curation.decode import decode_image  # noqa: E402

DEMO_WWW = ROOT / "pipelines" / "demo" / "www"
SHARED_PHOTOS = ROOT.parent / "shared" / "photos"
METRICS = ["niqe", "brisque", "nima"]
SIZES = (1024, 2048)
MAX_PIXELS = 36_000_000  # the score stage's default


# ---------------------------------------------------------------------------------------------
# Inputs


def demo_photos() -> list[Path]:
    """The demo's real photos (LICENSES.csv lists them), 1024 px on the short side."""
    with open(DEMO_WWW / "LICENSES.csv", newline="") as f:
        return [DEMO_WWW / row["file"] for row in csv.DictReader(f)]


def resized_jpeg(path: Path, short: int, upscale: bool = False) -> bytes:
    with Image.open(path) as im:
        if not upscale:
            im.draft("RGB", (short * 2, short * 2))  # faster decode of 4000-6000 px JPEGs
        im = im.convert("RGB")
        w, h = im.size
        scale = short / min(w, h)
        im = im.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def photos_2048(n: int) -> tuple[list[bytes], str]:
    def short_side(path: Path) -> int:
        with Image.open(path) as im:
            return min(im.size)

    originals = sorted(p for p in SHARED_PHOTOS.glob("*.jpg") if short_side(p) >= 2048)
    if originals:
        return (
            [resized_jpeg(p, 2048) for p in originals[:n]],
            f"{SHARED_PHOTOS} downscaled to 2048 px short side (JPEG q90)",
        )
    return (
        [resized_jpeg(p, 2048, upscale=True) for p in demo_photos()[:n]],
        "demo photos upscaled 2x to 2048 px short side (../shared/photos not found)",
    )


def cycle(items: list, n: int) -> list:
    return [items[i % len(items)] for i in range(n)]


# ---------------------------------------------------------------------------------------------
# Helpers


class Timed:
    """Stands in for a pyiqa model inside a MetricSet and records how long each call takes."""

    def __init__(self, model, name: str, sink: dict[str, float], cuda: bool = False):
        self.model, self.name, self.sink, self.cuda = model, name, sink, cuda

    def __call__(self, x):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        start = time.perf_counter()
        out = self.model(x)
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        self.sink[self.name] = self.sink.get(self.name, 0.0) + time.perf_counter() - start
        return out


def timed_metric_set(ms, sink: dict[str, float], cuda: bool = False):
    ms.models = {name: Timed(m, name, sink, cuda) for name, m in ms.models.items()}
    return ms


def load_metric_set(metrics: list[str], ckpt: Path, device: str = "cpu", **kw):
    from curation.metrics.loader import MetricSet

    start = time.perf_counter()
    ms = MetricSet(metrics, device=device, nima_checkpoint=str(ckpt), **kw)
    return ms, time.perf_counter() - start


def rate(seconds: float | None) -> str:
    return f"{1 / seconds:7.2f}/s" if seconds else f"{'-':>9}"


def header(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 92 - len(title)), flush=True)


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ---------------------------------------------------------------------------------------------
# 1. Metrics on CPU


def cpu_section(sets: dict[int, list[bytes]], repeats: int, ckpt: Path) -> None:
    import torch

    header("1. metrics on CPU: images/s (median seconds per image over the timed images)")
    ms, load_s = load_metric_set(METRICS, ckpt)
    times: dict[str, float] = {}
    timed_metric_set(ms, times)
    print(f"model loading (niqe+brisque+nima, one process): {load_s:.1f} s")
    cells: dict[tuple[int, int], dict[str, float]] = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        ms.score(decode_image(sets[1024][0], max_pixels=MAX_PIXELS).rgb)  # warm-up, untimed
        for size in SIZES:
            samples: dict[str, list[float]] = {}
            for data in cycle(sets[size], repeats):
                times.clear()
                t0 = time.perf_counter()
                rgb = decode_image(data, max_pixels=MAX_PIXELS).rgb
                t1 = time.perf_counter()
                ms.score(rgb)
                t2 = time.perf_counter()
                for name, s in times.items():
                    samples.setdefault(name, []).append(s)
                samples.setdefault("decode", []).append(t1 - t0)
                samples.setdefault("all", []).append(t2 - t1)
                samples.setdefault("all+decode", []).append(t2 - t0)
            cells[size, threads] = {k: statistics.median(v) for k, v in samples.items()}
            print(
                f"  done {size}px {threads} thread(s): {len(samples['all'])} image(s), "
                f"load {load_avg()}",
                flush=True,
            )
    cols = [(size, threads) for size in SIZES for threads in (1, 2)]
    print(f"\n{'':<34}" + "".join(f"{f'{s}px {t}thr':>20}" for s, t in cols))
    labels = {
        "niqe": "niqe",
        "brisque": "brisque",
        "nima (random weights)": "nima",
        "all three (MetricSet.score)": "all",
        "JPEG decode (decode_image)": "decode",
        "all three + decode": "all+decode",
    }
    for label, key in labels.items():
        row = "".join(
            f"{rate(cells[c][key]):>11} ({cells[c][key]:5.2f}s)"
            if key in cells[c]
            else f"{'-':>20}"
            for c in cols
        )
        print(f"{label:<34}{row}")
    print(
        "per-metric figures: the model call only (input already a float tensor); 'all three'"
        " adds the uint8 -> float conversion."
    )


# ---------------------------------------------------------------------------------------------
# 2. The score stage on Ray against a plain loop


class RaySampler:
    """Peak RSS of the Ray processes (children of this driver) while a stage runs."""

    def __init__(self, interval: float = 0.25):
        self.interval, self.stop_flag = interval, threading.Event()
        self.actor_peak = 0  # largest RSS of one ShardScorer actor process
        self.total_peak = (
            0  # largest sum of RSS over every Ray process (shared pages counted twice)
        )
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.stop_flag.is_set():
            total = 0
            for p in me.children(recursive=True):
                try:
                    rss = p.memory_info().rss
                    total += rss
                    if "ShardScorer" in " ".join(p.cmdline()):
                        self.actor_peak = max(self.actor_peak, rss)
                except psutil.Error:
                    continue
            self.total_peak = max(self.total_peak, total)
            self.stop_flag.wait(self.interval)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        self.thread.join()


def stage_config(folder: Path, ckpt: Path, per_shard: int) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": "bench",
            "sources": [{"name": "local", "kind": "folder", "path": [str(folder)]}],
            "download": {"min_side": 1024, "samples_per_shard": per_shard},
            "score": {
                "metrics": METRICS,
                "nima_checkpoint": str(ckpt),
                "workers": None,
                "threads_per_worker": 1,
            },
        }
    )


def run_stage(cfg: PipelineConfig, run_dir: Path) -> tuple[float, float, dict, list[str]]:
    from curation.stages.download import DownloadStage
    from curation.stages.score import ScoreStage

    start = time.perf_counter()
    DownloadStage(cfg, run_dir, log=lambda *_: None).run()
    download_s = time.perf_counter() - start
    logs: list[str] = []
    start = time.perf_counter()
    summary = ScoreStage(cfg, run_dir, log=logs.append).run()
    return download_s, time.perf_counter() - start, summary.counts, logs


def stage_section(
    photos: list[Path], n: int, per_shard: int, ckpt: Path, tmp: Path, mem: dict
) -> None:
    import torch

    from curation.ray_runtime import ensure_ray, shutdown_ray

    header(f"2. score stage on Ray vs a plain loop: {n} images of ~1024 px, {os.cpu_count()} cores")
    folders = {}
    for count in (n, 2 * n):
        folder = tmp / f"photos{count}"
        folder.mkdir()
        for i, src in enumerate(cycle(photos, count)):
            (folder / f"{i:04d}-{src.name}").write_bytes(src.read_bytes())
        folders[count] = folder
    files = sorted(folders[n].iterdir())

    # Plain: one process, decode_image + MetricSet, torch using both cores.
    torch.set_num_threads(2)
    ms, plain_load_s = load_metric_set(METRICS, ckpt)

    def plain_pass(ms) -> float:
        start = time.perf_counter()
        for path in files:
            ms.score(decode_image(path.read_bytes(), max_pixels=MAX_PIXELS).rgb)
        return time.perf_counter() - start

    # The first pass on fresh models (end to end), the second warm; a third after the stage
    # runs brackets them, so a change of machine load between the two shows.
    plain_first_s, plain_before_s = plain_pass(ms), plain_pass(ms)
    print(
        f"plain loop done: {plain_first_s:.1f} s + {plain_before_s:.1f} s, load {load_avg()}",
        flush=True,
    )

    runs = {}
    with RaySampler() as sampler:
        # The stage would start Ray itself; starting it here first times that separately.
        start = time.perf_counter()
        ensure_ray()
        ray_init_s = time.perf_counter() - start
        for label, count in (("cold", n), ("warm", n), ("warm2x", 2 * n)):
            cfg = stage_config(folders[count], ckpt, per_shard)
            download_s, score_s, counts, logs = run_stage(cfg, tmp / f"run-{label}")
            runs[label] = (count, download_s, score_s, counts, logs)
            print(
                f"stage run '{label}' ({count} images) done: score {score_s:.1f} s, "
                f"counts {counts}, load {load_avg()}",
                flush=True,
            )
    shutdown_ray()
    torch.set_num_threads(2)
    plain_after_s = plain_pass(ms)
    del ms
    plain_s = min(plain_before_s, plain_after_s)  # the pass least disturbed by other load
    print(f"plain loop again: {plain_after_s:.1f} s, load {load_avg()}", flush=True)
    mem["ray_actor_peak"], mem["ray_total_peak"] = sampler.actor_peak, sampler.total_peak
    workers = next((line for line in runs["cold"][4] if "worker(s)" in line), "?")
    cold_s = ray_init_s + runs["cold"][2]
    warm_s, warm2_s = runs["warm"][2], runs["warm2x"][2]
    marginal_s = warm2_s - warm_s
    plain_total = plain_load_s + plain_first_s

    print(
        f"\nstage: {workers.removeprefix('[score] ')}, threads_per_worker 1, {per_shard} images/shard"
    )
    print("plain: one process, torch threads 2, decode_image + MetricSet.score per file")
    print(f"{'':<62}{'images':>7}{'seconds':>9}{'images/s':>10}")

    def line(label: str, count: int, seconds: float) -> None:
        print(f"{label:<62}{count:>7}{seconds:>9.2f}{count / seconds:>10.2f}")

    line("plain loop, models warm, before the stage runs", n, plain_before_s)
    line("plain loop, models warm, after the stage runs", n, plain_after_s)
    line("plain loop, steady state (the faster of the two above)", n, plain_s)
    line(f"plain loop, first pass incl. model loading ({plain_load_s:.1f} s)", n, plain_total)
    line(f"stage, cold: Ray start-up ({ray_init_s:.1f} s) + actors + models + scoring", n, cold_s)
    line("stage, warm Ray: actors + model loading + scoring", n, warm_s)
    line("stage, warm Ray, 2x images", 2 * n, warm2_s)
    if marginal_s > 0:
        line("stage, steady state (marginal: 2x run - 1x run)", n, marginal_s)
    print(
        f"fixed costs: ray.init {ray_init_s:.1f} s (timed alone); actors + model loading + "
        f"manifests ~{2 * warm_s - warm2_s:.1f} s (2 x warm - warm2x); first stage run after "
        f"ray.init {runs['cold'][2]:.1f} s vs warm {warm_s:.1f} s"
    )
    print(f"download stage (not in the figures above): {runs['cold'][1]:.1f} s for {n} images")
    ratios = [
        ("end to end, cold stage vs plain first pass + loading", plain_total / cold_s),
        ("end to end, warm Ray vs plain first pass + loading", plain_total / warm_s),
    ]
    if marginal_s > 0:
        ratios.append(("steady state, stage marginal vs plain steady state", plain_s / marginal_s))
    for label, value in ratios:
        print(f"ratio stage/plain, {label:<52}{value:>6.2f}")
    if marginal_s > 0:
        print("goal: steady-state ratio >= 0.9 on 2 cores")
    else:
        print("steady-state ratio not derivable: the 2x run was not slower than the 1x run (noise)")
    if max(plain_before_s, plain_after_s) > 1.25 * plain_s:
        print(
            "WARNING: the plain loop's two warm passes differ by more than 25%: other load on "
            "this machine changed during the measurement, so the ratios above are unreliable"
        )
    for label, (_, _, _, counts, _) in runs.items():
        if counts.get("scored", 0) != sum(counts.values()):
            print(f"WARNING: run '{label}' did not score every image: {counts}")


# ---------------------------------------------------------------------------------------------
# 3. Peak memory, one child process per measurement


def peak_rss_kib() -> int:
    """This process's peak RSS in KiB: VmHWM, which (unlike ru_maxrss) starts afresh at exec.

    Linux keeps ru_maxrss across fork + exec, so a child would report its parent's size.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # not Linux: best effort


def mem_child(metrics: str, ckpt: str, threads: int, paths: list[str]) -> None:
    """Runs in a child: load, score the files, print peak RSS figures (KiB) as JSON."""
    import torch

    torch.set_num_threads(threads)
    from curation.metrics.loader import MetricSet

    after_import = peak_rss_kib()
    ms = MetricSet(metrics.split(","), nima_checkpoint=ckpt)
    after_load = peak_rss_kib()
    for p in paths:
        ms.score(decode_image(Path(p).read_bytes(), max_pixels=MAX_PIXELS).rgb)
    print(json.dumps({"import": after_import, "load": after_load, "peak": peak_rss_kib()}))


def memory_section(
    sets: dict[int, list[bytes]], n_images: int, ckpt: Path, tmp: Path, mem: dict, quick: bool
):
    header(
        f"3. peak RSS of the plain loop (child process each, torch threads 2, {n_images} image(s))"
    )
    paths: dict[int, list[str]] = {}
    for size in SIZES:
        paths[size] = []
        for i, data in enumerate(sets[size][:n_images]):
            p = tmp / f"mem{size}-{i}.jpg"
            p.write_bytes(data)
            paths[size].append(str(p))
    results: dict[tuple[str, int], dict] = {}
    combos = [",".join(METRICS)] if quick else [*METRICS, ",".join(METRICS)]
    for metrics in combos:
        for size in SIZES:
            cmd = [sys.executable, __file__, "--mem-child", metrics, str(ckpt), "2", *paths[size]]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                results[metrics, size] = {"error": proc.stderr.strip().splitlines()[-1:]}
            else:
                results[metrics, size] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  done {metrics}, load {load_avg()}", flush=True)
    print(f"\n{'MiB':<24}" + "".join(f"{f'{s}px peak':>13}{'(loaded)':>10}" for s in SIZES))
    for metrics in combos:
        label = "all three" if "," in metrics else metrics
        row = ""
        for size in SIZES:
            r = results[metrics, size]
            if "error" in r:
                row += f"{'failed':>13}{'':>10}"
            else:
                row += f"{r['peak'] / 1024:>13.0f}{r['load'] / 1024:>10.0f}"
        print(f"{label:<24}{row}")
        for size in SIZES:
            if "error" in results[metrics, size]:
                print(f"  {label} {size}px failed: {results[metrics, size]['error']}")
    base = next((r["import"] for r in results.values() if "import" in r), None)
    if base:
        print(f"(python + torch + curation imported, nothing loaded: {base / 1024:.0f} MiB)")
    if mem.get("ray_actor_peak"):
        print(
            f"Ray, during the stage runs (1024 px, all three): largest scorer actor "
            f"{mem['ray_actor_peak'] / 2**20:.0f} MiB; all Ray processes together "
            f"{mem['ray_total_peak'] / 2**20:.0f} MiB (RSS sum, shared pages counted twice)"
        )
    else:
        print("Ray workers: not measured (stage section not run)")


# ---------------------------------------------------------------------------------------------
# 4. GPU


def gpu_section(sets: dict[int, list[bytes]], repeats: int, ckpt: Path) -> None:
    import torch

    header("4. metrics on CUDA")
    if not torch.cuda.is_available():
        print("gpu: skipped (torch.cuda.is_available() is False)")
        return
    print(f"device: {torch.cuda.get_device_name(0)}; square center crops so batches share a shape")
    batches = (1, 4)
    ms, load_s = load_metric_set(METRICS, ckpt, device="cuda")
    print(f"model loading on cuda: {load_s:.1f} s")
    times: dict[str, float] = {}
    timed_metric_set(ms, times, cuda=True)
    cells: dict[tuple[int, int], dict] = {}
    for size in SIZES:
        crops = []
        for data in sets[size]:
            rgb = decode_image(data, max_pixels=MAX_PIXELS).rgb
            h, w = rgb.shape[:2]
            top, left = (h - size) // 2, (w - size) // 2
            crops.append(rgb[top : top + size, left : left + size].copy())
        for batch in batches:
            ms.max_batch = batch
            images = cycle(crops, max(batch, 4) * repeats)
            ms.score_batch(images[:batch])  # warm-up (cuDNN, allocator), untimed
            torch.cuda.reset_peak_memory_stats()
            times.clear()
            start = time.perf_counter()
            results = ms.score_batch(images)
            total = time.perf_counter() - start
            failed = [r for r in results if isinstance(r, Exception)]
            cells[size, batch] = {
                **{k: v / len(images) for k, v in times.items()},
                "all": total / len(images),
                "n": len(images),
                "failed": len(failed),
                "peak": torch.cuda.max_memory_allocated() / 2**20,
            }
    cols = [(s, b) for s in SIZES for b in batches]
    print(f"{'images/s':<28}" + "".join(f"{f'{s}px batch {b}':>16}" for s, b in cols))
    for label, key in (
        ("niqe", "niqe"),
        ("brisque", "brisque"),
        ("nima (random weights)", "nima"),
        ("all three (score_batch)", "all"),
    ):
        print(f"{label:<28}" + "".join(f"{rate(cells[c].get(key)):>16}" for c in cols))
    print(f"{'peak allocated MiB':<28}" + "".join(f"{cells[c]['peak']:>16.0f}" for c in cols))
    print(
        f"{'images timed (failed)':<28}"
        + "".join(f"{str(cells[c]['n']) + ' (' + str(cells[c]['failed']) + ')':>16}" for c in cols)
    )
    print("all three: host uint8 -> device, conversion, every metric, scores back to the host")


# ---------------------------------------------------------------------------------------------


def cascade_section(photos: list[Path], per_shard: int, ckpt: Path, tmp: Path) -> None:
    """Full scoring then cascade scoring of the same images, each followed by the filter."""
    import cv2
    import pyarrow.parquet as pq

    from curation.ray_runtime import ensure_ray, shutdown_ray
    from curation.stages.filter import FilterStage
    from manifests import IMAGE, find_manifests

    header("5. cascade vs full (score stage on Ray, then the filter, same images)")
    # The demo photos and a blurred copy of each (sigma 3: fails the BRISQUE floor), so the
    # cheapest metric has something to reject; thresholds are million-ird's calibrated floors.
    folder = tmp / "cascade-photos"
    folder.mkdir()
    for src in photos:
        rgb = decode_image(src.read_bytes(), max_pixels=MAX_PIXELS).rgb
        (folder / f"{src.stem}.png").write_bytes(_png(rgb))
        (folder / f"{src.stem}-blur3.png").write_bytes(_png(cv2.GaussianBlur(rgb, (0, 0), 3)))
    thresholds = {"max_niqe": 7.0, "max_brisque": 35.0}
    results = {}
    ensure_ray()
    for mode in ("full", "cascade"):
        cfg = stage_config(folder, ckpt, per_shard)
        cfg.score.cascade = mode == "cascade"
        cfg.filter.max_niqe, cfg.filter.max_brisque = (
            thresholds["max_niqe"],
            thresholds["max_brisque"],
        )
        run_dir = tmp / f"run-{mode}"
        _, score_s, counts, _ = run_stage(cfg, run_dir)
        FilterStage(cfg, run_dir, log=lambda *_: None).run()
        rows = []
        for path in find_manifests(run_dir / "filter", IMAGE):
            rows += pq.read_table(path).to_pylist()
        kept = {r["key"] for r in rows if r["status"] == "kept"}
        computed = {m: sum(r.get(f"score_{m}") is not None for r in rows) for m in METRICS}
        results[mode] = (score_s, kept, computed, len(rows))
        print(
            f"{mode} done: score {score_s:.1f} s, {len(kept)} kept, load {load_avg()}", flush=True
        )
    shutdown_ray()
    (full_s, full_kept, full_n, rows), (cas_s, cas_kept, cas_n, _) = (
        results["full"],
        results["cascade"],
    )
    print(
        f"\n{rows} images ({len(photos)} photos + a sigma-3 blurred copy each), thresholds {thresholds}"
    )
    print(f"{'':<30}{'seconds':>9}" + "".join(f"{m:>9}" for m in METRICS) + f"{'kept':>7}")
    for name, (sec, kept, n, _) in results.items():
        print(f"{name:<30}{sec:>9.1f}" + "".join(f"{n[m]:>9}" for m in METRICS) + f"{len(kept):>7}")
    evaluations = sum(full_n.values()), sum(cas_n.values())
    print(
        f"metric evaluations: cascade {evaluations[1]} of {evaluations[0]} "
        f"({1 - evaluations[1] / evaluations[0]:.0%} saved); stage time cascade/full "
        f"{cas_s / full_s:.2f}; same selection: {full_kept == cas_kept}"
    )


def _png(rgb) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", rgb[..., ::-1])
    assert ok
    return buf.tobytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=12, help="images in the stage comparison")
    ap.add_argument("--repeats", type=int, default=3, help="timed images per CPU cell")
    ap.add_argument("--per-shard", type=int, default=3, help="download.samples_per_shard")
    ap.add_argument("--mem-images", type=int, default=1, help="images per memory measurement")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 4 images, 1 repeat")
    ap.add_argument("--sections", default="cpu,stage,memory,gpu,cascade")
    ap.add_argument("--mem-child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mem_child:
        metrics, ckpt, threads, *paths = args.mem_child
        mem_child(metrics, ckpt, int(threads), paths)
        return
    if args.quick:
        args.images, args.repeats, args.per_shard = 4, 1, 2
    sections = set(args.sections.split(","))

    from tests.nima import make_random_nima_checkpoint

    wall = time.perf_counter()
    print(
        f"cores={os.cpu_count()}  load average {load_avg()}  python {sys.version.split()[0]}  "
        f"images={args.images} repeats={args.repeats} per-shard={args.per_shard}"
    )
    print(
        "NIMA: random-weight checkpoint (tests/nima.py, make_random_nima_checkpoint): same "
        "network and compute as the real AVA weights; its scores mean nothing here."
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = make_random_nima_checkpoint(tmp / "nima.pth")
        photos = demo_photos()
        sets = {1024: [p.read_bytes() for p in photos]}
        sets[2048], how = photos_2048(max(args.repeats, args.mem_images, 4))
        print(f"1024 px: {len(photos)} demo photos ({DEMO_WWW.relative_to(ROOT)}); 2048 px: {how}")
        mem: dict = {}
        if "cpu" in sections:
            cpu_section(sets, args.repeats, ckpt)
        if "stage" in sections:
            stage_section(photos, args.images, args.per_shard, ckpt, tmp, mem)
        if "memory" in sections:
            memory_section(sets, args.mem_images, ckpt, tmp, mem, args.quick)
        if "gpu" in sections:
            gpu_section(sets, args.repeats, ckpt)
        if "cascade" in sections:
            cascade_section(photos, args.per_shard, ckpt, tmp)
    print(f"\ntotal {time.perf_counter() - wall:.0f} s, load average at the end {load_avg()}")


if __name__ == "__main__":
    main()
