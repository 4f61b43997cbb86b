"""Patch stage throughput against a plain single-process loop doing the same work.

    python benchmarks/patch.py [--photos 8] [--demo-copies 3] [--parts 4] [--sweep 1,2,8]
                               [--quick]

Real photos, two cases: the demo's (pipelines/demo/www, 1024 px on the short side, each one
copied --demo-copies times under other names so the run lasts long enough to time) and
--photos full-size originals from ../shared/photos (beside the repository; 3-6K a side, 12-24
MP), picked evenly from the sorted names. Each case builds a run folder the way
tests/test_patch_stage.py does: the download stage on a folder source (--parts download shards,
so --parts filter parts and Ray tasks), then filter-like manifests with every downloaded row
``kept``. Then, in the same process:

  plain   one process, one core (OpenCV single-threaded, as in the stage's tasks): per part,
          read each image from its download tar, decode_image, tile_grid, flat_fraction per
          tile, encode_patch (PNG) per kept tile, webdataset.TarWriter (mtime 0) and the same
          patch manifest (write_manifest); its tars and manifests are checked equal to the
          stage's. It also gives the breakdown per patch.
  stage   PatchStage.run() on Ray. "first" includes Ray start-up (Ray is shut down between the
          two cases, so each case has one); "steady" is a second run into a fresh run folder in
          the same Ray session (curation.ray_runtime keeps Ray up until shutdown_ray()).

Plain and steady runs are done twice, interleaved, and the faster of each is compared (the
machine may be shared). --sweep times the full-size case's steady stage run again with the same
images in other numbers of parts (task granularity: one part is one task on one core). Prints
images/s, tiles/s, kept patches/s and the ratio stage/plain (steady), the flat detector's cost
per 512 patch and a breakdown per patch; nothing is asserted. Goal: stage / plain >= 0.9 on 2
cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from curation.offline_env import use_offline_env  # noqa: E402

use_offline_env()  # before anything imports albumentations / ray / pyiqa
from curation.config import PipelineConfig  # noqa: E402
from curation.decode import decode_image  # noqa: E402
from curation.flatness import flat_fraction  # noqa: E402
from curation.patching import encode_patch, patch_key  # noqa: E402
from curation.ray_runtime import shutdown_ray  # noqa: E402
from curation.stages.download import DownloadStage  # noqa: E402
from curation.stages.patch import PatchStage, kept_rows  # noqa: E402
from curation.tiling import iter_tiles, tile_grid  # noqa: E402
from manifests import IMAGE, PATCH, find_manifests, write_manifest  # noqa: E402
from manifests.schema import SCORE_COLUMN  # noqa: E402
from tests.test_patch_stage import write_filter_manifests  # noqa: E402

DEMO_WWW = ROOT / "pipelines" / "demo" / "www"
SHARED_PHOTOS = ROOT.parent / "shared" / "photos"


# ---------------------------------------------------------------------------------------------
# Inputs and run folders


def demo_photos() -> list[Path]:
    """The demo's real photos (LICENSES.csv lists them), 1024 px on the short side."""
    with open(DEMO_WWW / "LICENSES.csv", newline="") as f:
        return [DEMO_WWW / row["file"] for row in csv.DictReader(f)]


def shared_photos(n: int) -> list[Path]:
    """n full-size photos from ../shared/photos, spread evenly over the sorted names."""
    if not SHARED_PHOTOS.is_dir():
        return []
    files = sorted(p for p in SHARED_PHOTOS.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    n = min(n, len(files))
    return [files[i * len(files) // n] for i in range(n)]


def make_folder(photos: list[Path], dest: Path, copies: int = 1) -> None:
    """Symlink each photo ``copies`` times under its own name (distinct keys, same pixels)."""
    dest.mkdir(parents=True)
    for c in range(copies):
        for p in photos:
            (dest / f"c{c}_{p.name}").symlink_to(p)


def pipeline(folder: Path, per_shard: int) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "name": "bench",
            "sources": [{"name": "local", "kind": "folder", "path": [str(folder)]}],
            "download": {"min_side": 512, "samples_per_shard": per_shard},
        }
    )


def build_run(
    photos: list[Path], tmp: Path, parts: int, copies: int
) -> tuple[Path, PipelineConfig]:
    folder = tmp / "photos"
    make_folder(photos, folder, copies)
    per_shard = math.ceil(len(photos) * copies / parts)
    cfg = pipeline(folder, per_shard)
    run_dir = tmp / "base"
    DownloadStage(cfg, run_dir, log=lambda *_: None).run()
    write_filter_manifests(run_dir)
    return run_dir, cfg


def fresh_run(base: Path, dest: Path) -> Path:
    """A new run folder with the base run's download shards and filter manifests, no patches."""
    for stage in ("download", "filter"):
        shutil.copytree(base / stage, dest / stage)
    return dest


# ---------------------------------------------------------------------------------------------
# The plain loop


def _score(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def plain_patch(run_dir: Path, cfg: PipelineConfig, out: Path) -> tuple[float, dict]:
    """Patch every filter part with a plain loop; (seconds, per-step timings and counts)."""
    import webdataset as wds

    pc = cfg.patch
    t = defaultdict(float)
    n = defaultdict(int)
    clock = time.perf_counter
    start = clock()
    for part in find_manifests(run_dir / "filter", IMAGE):
        dest = out / part.parent.relative_to(run_dir / "filter")
        dest.mkdir(parents=True, exist_ok=True)
        rows = kept_rows(part)
        tar_name = f"{part.stem}-000.tar"
        sink = wds.TarWriter(str(dest / tar_name), mtime=0)
        tars: dict[str, tarfile.TarFile] = {}
        out_rows = []
        for row in rows:
            t0 = clock()
            tar_path = str((part.parent / row["shard"]).resolve())
            if tar_path not in tars:
                tars[tar_path] = tarfile.open(tar_path, "r:")
            data = tars[tar_path].extractfile(f"{row['key']}.{row['format']}").read()
            t1 = clock()
            rgb = decode_image(data, max_pixels=cfg.score.max_pixels).rgb
            t2 = clock()
            t["read"] += t1 - t0
            t["decode"] += t2 - t1
            n["images"] += 1
            n["megapixels"] += rgb.shape[0] * rgb.shape[1]
            scores = {k: _score(v) for k, v in sorted(row.items()) if SCORE_COLUMN.match(k)}
            lineage = {"image_key": row["key"], "url": row["url"], "source": row["source"]}
            tiles = tile_grid(rgb.shape[0], rgb.shape[1], pc.size, border=pc.border)
            for tile, pixels in zip(tiles, iter_tiles(rgb, tiles), strict=True):
                t0 = clock()
                fraction = flat_fraction(pixels, cell=pc.flat_cell, threshold=pc.flat_threshold)
                t1 = clock()
                t["flatness"] += t1 - t0
                n["tiles"] += 1
                key = patch_key(row["key"], tile.y, tile.x)
                geometry = {"x": tile.x, "y": tile.y, "size": pc.size}
                rec = {"key": key, **lineage, **geometry, "flat_fraction": fraction}
                if fraction > pc.max_flat_fraction:
                    rec |= {"stage": "patch", "status": "rejected", "reason": "flat", **scores}
                    out_rows.append(rec)
                    continue
                png = encode_patch(pixels, pc.format)
                t2 = clock()
                meta = {"key": key, **lineage, **geometry, "format": pc.format}
                meta |= {"flat_fraction": fraction, **scores}
                js = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
                sink.write({"__key__": key, pc.format: png, "json": js})
                t3 = clock()
                t["encode"] += t2 - t1
                t["tar"] += t3 - t2
                n["kept"] += 1
                n["bytes"] += len(png)
                rec |= {"stage": "patch", "status": "kept", "reason": None, **scores}
                out_rows.append(rec | {"shard": tar_name})
            del rgb
        t0 = clock()
        sink.close()
        for tf in tars.values():
            tf.close()
        t1 = clock()
        write_manifest(out_rows, dest / f"{part.stem}-000.parquet", PATCH)
        t["tar"] += t1 - t0
        t["manifest"] += clock() - t1
    return clock() - start, {"t": dict(t), "n": dict(n)}


# ---------------------------------------------------------------------------------------------
# Checks and detail


def tar_contents(root: Path) -> dict[str, bytes]:
    """Every member of every tar under root, by member name."""
    found = {}
    for path in sorted(root.rglob("*.tar")):
        with tarfile.open(path) as tf:
            for m in tf.getmembers():
                found[m.name] = tf.extractfile(m).read()
    return found


def manifest_rows(root: Path) -> list[dict]:
    rows = [r for p in find_manifests(root, PATCH) for r in pq.read_table(p).to_pylist()]
    return sorted(rows, key=lambda r: r["key"])


def same_output(plain_out: Path, stage_out: Path) -> str:
    tars = tar_contents(plain_out) == tar_contents(stage_out)
    rows = manifest_rows(plain_out) == manifest_rows(stage_out)
    return "identical" if tars and rows else f"DIFFER (tars equal: {tars}, manifests: {rows})"


def flat_detail(run_dir: Path, cfg: PipelineConfig, max_tiles: int = 64) -> dict[str, float]:
    """Median ms per 512 tile of each step of the flat detector, on up to max_tiles tiles."""
    pc = cfg.patch
    part = find_manifests(run_dir / "filter", IMAGE)[0]
    tiles = []
    for row in kept_rows(part):
        with tarfile.open((part.parent / row["shard"]).resolve()) as tf:
            data = tf.extractfile(f"{row['key']}.{row['format']}").read()
        rgb = decode_image(data, max_pixels=cfg.score.max_pixels).rgb
        grid = tile_grid(rgb.shape[0], rgb.shape[1], pc.size, border=pc.border)
        tiles += [np.ascontiguousarray(p) for p in iter_tiles(rgb, grid)]
        if len(tiles) >= max_tiles:
            break
    tiles = tiles[:max_tiles]
    steps = defaultdict(list)
    c = pc.flat_cell
    for patch in tiles:
        t0 = time.perf_counter()
        gray = cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY)
        t1 = time.perf_counter()
        gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
        t2 = time.perf_counter()
        mag = cv2.magnitude(gx, gy)
        t3 = time.perf_counter()
        h, w = mag.shape
        mag.reshape(h // c, c, w // c, c).var(axis=(1, 3))
        t4 = time.perf_counter()
        flat_fraction(patch, cell=c, threshold=pc.flat_threshold)
        t5 = time.perf_counter()
        for name, dt in (
            ("gray", t1 - t0),
            ("sobel x2", t2 - t1),
            ("magnitude", t3 - t2),
            ("cell variance", t4 - t3),
            ("flat_fraction (all)", t5 - t4),
        ):
            steps[name].append(dt * 1e3)
        for level in (1, 3, 6):
            t0 = time.perf_counter()
            cv2.imencode(".png", patch[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, level])
            steps[f"PNG level {level}"].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in steps.items()} | {"tiles": len(tiles)}


# ---------------------------------------------------------------------------------------------
# One case


def run_case(
    name: str, photos: list[Path], copies: int, args, tmp: Path, sweep: tuple[int, ...] = ()
) -> dict:
    run_dir, cfg = build_run(photos, tmp, args.parts, copies)
    parts = len(find_manifests(run_dir / "filter", IMAGE))
    cv2.setNumThreads(1)  # like patch_part: one core
    results = {"name": name, "parts": parts, "plain": [], "steady": []}
    counter = iter(range(100))

    def plain() -> None:
        out = tmp / f"plain{next(counter)}"
        seconds, detail = plain_patch(run_dir, cfg, out)
        results["plain"].append(seconds)
        results["detail"] = detail
        results["plain_out"] = out

    def stage(kind: str) -> None:
        rd = fresh_run(run_dir, tmp / f"stage{next(counter)}")
        start = time.perf_counter()
        summary = PatchStage(cfg, rd, log=lambda *_: None).run()
        seconds = time.perf_counter() - start
        if kind == "first":
            results["first"] = seconds
            results["check"] = same_output(results["plain_out"], rd / "patch")
            results["counts"] = summary.counts
        else:
            results["steady"].append(seconds)
        shutil.rmtree(rd)

    plain()
    stage("first")
    stage("steady")
    if not args.quick:
        shutil.rmtree(results["plain_out"])
        plain()
        stage("steady")
    results["sweep"] = {}
    for parts in sweep:  # task granularity: the same images in another number of parts
        other, other_cfg = build_run(photos, tmp / f"sweep{parts}", parts, copies)
        start = time.perf_counter()
        PatchStage(other_cfg, other, log=lambda *_: None).run()
        results["sweep"][parts] = time.perf_counter() - start
        shutil.rmtree(tmp / f"sweep{parts}")
    shutdown_ray()
    results["flat"] = flat_detail(run_dir, cfg)
    shutil.rmtree(results["plain_out"])
    return results


def report(r: dict) -> None:
    n, t = r["detail"]["n"], r["detail"]["t"]
    images, tiles, kept = n["images"], n["tiles"], n.get("kept", 0)
    plain_s, steady_s = min(r["plain"]), min(r["steady"])
    print(
        f"\n== {r['name']}: {images} images, {n['megapixels'] / images / 1e6:.1f} MP each, "
        f"{tiles} tiles, {kept} kept ({kept / tiles:.0%}), {n.get('bytes', 0) / 1e6:.0f} MB PNG; "
        f"{r['parts']} parts = Ray tasks"
    )
    print(f"{'':<36}{'seconds':>9}{'images/s':>10}{'tiles/s':>9}{'kept/s':>8}")

    def line(label: str, s: float) -> None:
        print(f"{label:<36}{s:>9.2f}{images / s:>10.2f}{tiles / s:>9.1f}{kept / s:>8.1f}")

    line("plain loop (1 process, 1 core)", plain_s)
    line("stage, first (incl. Ray start-up)", r["first"])
    line("stage, steady (same Ray session)", steady_s)
    runs = (
        ", ".join(f"{s:.2f}" for s in r["plain"])
        + " / "
        + ", ".join(f"{s:.2f}" for s in r["steady"])
    )
    print(
        f"  ratio stage/plain (throughput, steady) {plain_s / steady_s:.2f}   (goal >= 0.9); "
        f"first run {plain_s / r['first']:.2f}; Ray start-up ~{r['first'] - steady_s:.1f} s"
    )
    print(f"  runs plain / steady: {runs} s; outputs plain vs stage: {r['check']}")
    print(f"  stage counts: {r['counts']}")
    total = sum(t.values())
    print("  plain loop breakdown:")
    rows = [
        ("read from shard", t["read"], images, "image"),
        ("decode", t["decode"], images, "image"),
        ("decode", t["decode"], tiles, "tile"),
        ("flatness", t["flatness"], tiles, "512 tile"),
        ("PNG encode", t.get("encode", 0.0), kept, "kept patch"),
        ("tar write", t.get("tar", 0.0), kept, "kept patch"),
        ("manifest write", t["manifest"], r["parts"], "part"),
    ]
    for label, seconds, count, unit in rows:
        per = seconds / count * 1e3 if count else float("nan")
        print(
            f"    {label:<16}{per:>9.2f} ms per {unit:<11}"
            f"{seconds:>7.2f} s  {seconds / total:>4.0%} of the loop"
        )
    if r["sweep"]:
        print(
            "  task granularity, stage steady seconds (ratio stage/plain) by number of parts: "
            + ", ".join(
                f"{p} part(s) {s:.2f} ({plain_s / s:.2f})" for p, s in sorted(r["sweep"].items())
            )
        )
    f = r["flat"]
    print(
        f"  flat detector per 512 tile (median of {f['tiles']}): "
        f"{f['flat_fraction (all)']:.2f} ms = "
        f"gray {f['gray']:.2f} + sobel x2 {f['sobel x2']:.2f} + magnitude {f['magnitude']:.2f} "
        f"+ cell variance {f['cell variance']:.2f}"
    )
    print(
        f"  PNG encode per 512 tile (median): level 1 {f['PNG level 1']:.1f} ms, "
        f"level 3 {f['PNG level 3']:.1f} ms (used), level 6 {f['PNG level 6']:.1f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=8, help="full-size photos from ../shared")
    ap.add_argument("--demo-copies", type=int, default=3, help="copies of each demo photo")
    ap.add_argument("--parts", type=int, default=4, help="filter parts (= Ray tasks) per case")
    ap.add_argument(
        "--sweep",
        default="1,2,8",
        help="other part counts to time the full-size case with (steady state; '' for none)",
    )
    ap.add_argument(
        "--quick", action="store_true", help="2 large photos, 1 copy, 1 repeat, no sweep"
    )
    args = ap.parse_args()
    if args.quick:
        args.photos, args.demo_copies, args.sweep = min(args.photos, 2), 1, ""
    sweep = sorted({int(p) for p in args.sweep.split(",") if p.strip()} - {args.parts})

    load = os.getloadavg()
    cases = [("demo photos (1024 px short side)", demo_photos(), args.demo_copies, ())]
    large = shared_photos(args.photos)
    if large:
        name = f"{len(large)} full-size photos from ../shared/photos"
        cases.append((name, large, 1, tuple(p for p in sweep if p <= len(large))))
    results = []
    with tempfile.TemporaryDirectory(prefix="curate-bench-patch-") as tmp:
        for i, (name, photos, copies, case_sweep) in enumerate(cases):
            case_tmp = Path(tmp) / f"case{i}"
            results.append(run_case(name, photos, copies, args, case_tmp, case_sweep))
            shutil.rmtree(case_tmp)
    print(
        f"cores={os.cpu_count()}, patch 512 PNG level 3, flat cell 32, "
        f"load average at start {load[0]:.2f} / end {os.getloadavg()[0]:.2f}"
    )
    if not large:
        print(f"({SHARED_PHOTOS} not found: the full-size case is skipped)")
    print(
        "stage tasks: num_cpus=0.5 on < 4 CPUs (up to 2 tasks per core); "
        "plain: OpenCV 1 thread, like the tasks"
    )
    for r in results:
        report(r)


if __name__ == "__main__":
    main()
