#!/usr/bin/env python
"""Calibrate the filter thresholds (T_NIQE, T_BRISQUE, T_NIMA) on real photos and degraded copies.

    .venv/bin/python tools/calibrate_thresholds.py [--photos DIR] [--size 1024]
        [--metrics niqe,brisque] [--nima-checkpoint PATH] [--out docs/calibration_scores.csv]
        [--min-clean-keep 0.9] [--threshold max_niqe=5.5 ...] [--markdown]

Every photo in ``--photos`` (default ``../shared/photos`` beside the repository) is decoded as
the pipeline decodes it (:func:`curation.decode.decode_image`), resized with area interpolation
so that its short side is ``--size`` px (1024: LAION-HR images are at least 1024 px, and NIQE
costs ~0.5 s at 1024 px but ~3 s at 2048 px on 2 threads), then copied with deterministic,
seeded degradations (OpenCV / numpy: blur, noise, JPEG, down-up scaling, low contrast,
posterisation; see ``KINDS``). Each version is scored in memory with
:class:`curation.metrics.loader.MetricSet` (``--threads`` torch threads, 2 by default: BRISQUE's
float32 sums depend on it in the last digits) and the scores are cached in ``--out``, one row
per (photo, size, kind, metric): a rerun scores only what is missing, so it is instant.

It then prints, per kind, the median and 10th / 90th percentiles of each metric, and searches a
grid of thresholds (NIQE step 0.1, BRISQUE 1, NIMA 0.05) for the combination that, applied
jointly as the filter applies them (mutual consensus: a version is kept only when every metric
passes; a version a metric could not score is rejected), rejects the largest mean fraction of
the degraded kinds whose role is ``reject`` while keeping at least ``--min-clean-keep`` of the
clean photos. Ties are broken by the larger clean keep, then by the middle of the tied region
(the largest margin on both sides). Kinds of role ``keep`` (an ordinary JPEG q90 re-encode)
and ``mild`` (light blur, 2x down-up scaling) are reported but not optimised for.

NIMA's AVA weights are not shipped; once available:
``--metrics niqe,brisque,nima --nima-checkpoint NIMA_InceptionV2_ava-b0c77c00.pth``.
See docs/calibration.md for the method, the numbers and their limits.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import os
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the network

import cv2  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable as a plain script from any folder
    sys.path.insert(0, str(REPO))

from curation.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image  # noqa: E402
from curation.metrics.registry import MetricSpec, parse_metrics  # noqa: E402

DEFAULT_PHOTOS = REPO.parent / "shared" / "photos"
DEFAULT_OUT = REPO / "docs" / "calibration_scores.csv"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"}
GRID_STEP = {"niqe": 0.1, "brisque": 1.0, "nima": 0.05}  # threshold grid per metric
FIELDS = [
    "photo",
    "size",
    "kind",
    "role",
    "width",
    "height",
    "metric",
    "score",
    "reason",
    "seconds",
]

# ---------------------------------------------------------------------------------------------
# Degradations: HxWx3 uint8 RGB -> same size uint8 RGB, deterministic given the rng.

Degrade = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def blur(sigma: float) -> Degrade:
    return lambda rgb, rng: cv2.GaussianBlur(rgb, (0, 0), sigmaX=sigma, sigmaY=sigma)


def noise(sigma: float) -> Degrade:
    """Additive white Gaussian noise, independent per pixel and channel, sigma on 0-255."""
    return lambda rgb, rng: _u8(rgb + rng.normal(0.0, sigma, rgb.shape))


def jpeg_roundtrip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """Encode with OpenCV's libjpeg (4:2:0), decode as the pipeline does (Pillow)."""
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise RuntimeError("OpenCV could not encode JPEG")
    return decode_image(buf.tobytes(), max_pixels=DEFAULT_MAX_PIXELS).rgb


def jpeg(quality: int) -> Degrade:
    return lambda rgb, rng: jpeg_roundtrip(rgb, quality)


def down_up(factor: int, jpeg_quality: int | None = None) -> Degrade:
    """Area downscale by ``factor`` (optionally saved as JPEG), bicubic upscale back."""

    def apply(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = rgb.shape[:2]
        small = cv2.resize(
            rgb, (round(w / factor), round(h / factor)), interpolation=cv2.INTER_AREA
        )
        if jpeg_quality is not None:
            small = jpeg_roundtrip(small, jpeg_quality)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)

    return apply


def low_contrast(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Washed out: contrast reduced to 25% around the image mean, then a slight blur."""
    x = rgb.astype(np.float32)
    flat = x.mean() + 0.25 * (x - x.mean())
    return cv2.GaussianBlur(_u8(flat), (0, 0), sigmaX=1.0, sigmaY=1.0)


def posterise(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat, cartoon-like: 7x7 median filter, then 4 levels per channel."""
    return (cv2.medianBlur(rgb, 7) // 64 * 64 + 32).astype(np.uint8)


@dataclass(frozen=True)
class Kind:
    """One version of every photo. ``role``: keep (should pass), mild (reported only),
    reject (should fail; the threshold search maximises their mean rejection)."""

    name: str
    role: str
    make: Degrade
    description: str


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("clean", "keep", lambda rgb, rng: rgb, "the photo, resized (area) to --size"),
        Kind("jpeg_q90", "keep", jpeg(90), "JPEG quality 90 (an ordinary web image)"),
        Kind("blur_s1", "mild", blur(1.0), "Gaussian blur sigma 1 px"),
        Kind("downup_x2", "mild", down_up(2), "area down x2, bicubic up x2"),
        Kind("blur_s2", "reject", blur(2.0), "Gaussian blur sigma 2 px"),
        Kind("blur_s4", "reject", blur(4.0), "Gaussian blur sigma 4 px"),
        Kind("noise_s15", "reject", noise(15.0), "Gaussian noise sigma 15 (0-255)"),
        Kind("noise_s30", "reject", noise(30.0), "Gaussian noise sigma 30 (0-255)"),
        Kind("jpeg_q20", "reject", jpeg(20), "JPEG quality 20"),
        Kind("jpeg_q10", "reject", jpeg(10), "JPEG quality 10"),
        Kind("downup_x4", "reject", down_up(4), "area down x4, bicubic up x4"),
        Kind("small_jpeg30_up2", "reject", down_up(2, 30), "down x2, JPEG q30, bicubic up x2"),
        Kind("low_contrast", "reject", low_contrast, "contrast 25% around the mean + blur s1"),
        Kind("posterised", "reject", posterise, "median 7x7 + 4 levels per channel"),
    )
}


def rng_for(seed: int, photo: str, kind: str) -> np.random.Generator:
    """A generator that depends only on the seed, the photo's file name and the kind."""
    return np.random.default_rng([seed, zlib.crc32(photo.encode()), zlib.crc32(kind.encode())])


def load_resized(path: Path, size: int) -> np.ndarray | None:
    """The photo decoded like the pipeline, short side resized to ``size`` (area); None when
    the photo is smaller than ``size`` (upscaling would add blur) or cannot be decoded."""
    try:
        rgb = decode_image(path.read_bytes(), max_pixels=DEFAULT_MAX_PIXELS).rgb
    except (OSError, DecodeError) as e:
        print(f"skip {path.name}: {e}", file=sys.stderr)
        return None
    h, w = rgb.shape[:2]
    if min(h, w) < size:
        print(f"skip {path.name}: {w}x{h} is below {size} px on the short side", file=sys.stderr)
        return None
    scale = size / min(h, w)
    new = (size, round(h * scale)) if w <= h else (round(w * scale), size)
    return cv2.resize(rgb, new, interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------------------------------------
# Score cache: one CSV row per (photo, size, kind, metric).

Key = tuple[str, int, str, str]


def load_cache(path: Path) -> dict[Key, dict]:
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {(r["photo"], int(r["size"]), r["kind"], r["metric"]): r for r in csv.DictReader(f)}


def save_cache(path: Path, cache: dict[Key, dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(cache[k] for k in sorted(cache))
    os.replace(tmp, path)


def score_missing(
    photos: Sequence[Path],
    kinds: Sequence[str],
    specs: Sequence[MetricSpec],
    size: int,
    cache: dict[Key, dict],
    args: argparse.Namespace,
) -> None:
    """Score every (photo, kind, metric) not in ``cache``; saves the cache after each photo."""
    metric_set = None
    for i, photo in enumerate(photos, 1):
        need = {
            k: [s.name for s in specs if (photo.name, size, k, s.name) not in cache] for k in kinds
        }
        if not any(need.values()):
            continue
        if metric_set is None:
            import torch

            from curation.metrics.loader import MetricSet

            torch.set_num_threads(args.threads)
            metric_set = MetricSet(
                [s.name for s in specs],
                weights_dir=args.weights_dir,
                nima_checkpoint=args.nima_checkpoint,
            )
        from curation.metrics.loader import ScoringError

        start = time.perf_counter()
        base = load_resized(photo, size)
        if base is None:
            continue
        for kind in kinds:
            if not need[kind]:
                continue
            rgb = KINDS[kind].make(base, rng_for(args.seed, photo.name, kind))
            for name in need[kind]:
                t0 = time.perf_counter()
                try:
                    score, reason = metric_set.score(rgb, names=[name])[name], ""
                except ScoringError as e:
                    score, reason = None, e.reason
                cache[(photo.name, size, kind, name)] = {
                    "photo": photo.name,
                    "size": size,
                    "kind": kind,
                    "role": KINDS[kind].role,
                    "width": rgb.shape[1],
                    "height": rgb.shape[0],
                    "metric": name,
                    "score": "" if score is None else f"{score:.6f}",
                    "reason": reason,
                    "seconds": f"{time.perf_counter() - t0:.3f}",
                }
        save_cache(args.out, cache)
        took = time.perf_counter() - start
        print(f"[{i}/{len(photos)}] {photo.name}: {took:.1f} s", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Analysis


@dataclass
class Scores:
    """Score matrix ``values`` (rows: photo x kind, columns: metrics; NaN: not scorable)."""

    metrics: list[MetricSpec]
    kinds: list[str]
    photos: list[str]
    kind_of_row: np.ndarray  # index into kinds
    photo_of_row: list[str]
    values: np.ndarray

    def mask(self, kind: str) -> np.ndarray:
        return self.kind_of_row == self.kinds.index(kind)

    def role_kinds(self, role: str) -> list[str]:
        return [k for k in self.kinds if KINDS[k].role == role]


def collect(
    cache: dict[Key, dict], photos: Sequence[Path], kinds: Sequence[str], specs, size: int
) -> Scores:
    """Rows with every metric attempted; a failed metric (reason set) is NaN."""
    rows, kind_idx, photo_names = [], [], []
    for ki, kind in enumerate(kinds):
        for p in photos:
            cells = [cache.get((p.name, size, kind, s.name)) for s in specs]
            if any(c is None for c in cells):
                continue
            rows.append([float(c["score"]) if c["score"] else math.nan for c in cells])
            kind_idx.append(ki)
            photo_names.append(p.name)
    values = np.array(rows, dtype=np.float64).reshape(len(rows), len(specs))
    names = sorted(set(photo_names))
    return Scores(list(specs), list(kinds), names, np.array(kind_idx), photo_names, values)


Thresholds = dict[str, float]  # metric name -> threshold (max for lower-better, min otherwise)


def passes(values: np.ndarray, spec: MetricSpec, t: float | np.ndarray) -> np.ndarray:
    """values <= t (lower-better) or >= t, NaN never passing; broadcasts t against values."""
    with np.errstate(invalid="ignore"):
        return values <= t if spec.lower_better else values >= t


def kept(s: Scores, th: Thresholds) -> np.ndarray:
    ok = np.ones(len(s.values), dtype=bool)
    for j, spec in enumerate(s.metrics):
        if th.get(spec.name) is not None:
            ok &= passes(s.values[:, j], spec, th[spec.name])
    ok &= ~np.isnan(s.values).any(axis=1)  # the pipeline never keeps a failed image
    return ok


def grid(s: Scores, j: int) -> np.ndarray:
    """Candidate thresholds for metric ``j``: from its clean median to just past every score."""
    spec = s.metrics[j]
    step = GRID_STEP.get(spec.name, 0.1)
    col = s.values[:, j]
    clean = col[s.mask("clean") & np.isfinite(col)]
    every = col[np.isfinite(col)]
    if spec.lower_better:
        lo, hi = math.floor(np.median(clean) / step), math.ceil(every.max() / step) + 1
    else:
        lo, hi = math.floor(every.min() / step) - 1, math.ceil(np.median(clean) / step)
    return np.round(np.arange(lo, hi + 1) * step, 6)


def clean_quantile(s: Scores, keep_fraction: float) -> Thresholds:
    """Thresholds fitted on the clean photos only, the way ``curate thresholds suggest`` fits
    them on a run (:func:`curation.thresholds.suggest_thresholds`: the same per-metric
    quantile for every metric, chosen so that about ``keep_fraction`` of the clean photos pass
    jointly), then rounded outwards to the grid step (never keeping fewer)."""
    import pyarrow as pa

    from curation.thresholds import suggest_thresholds

    m = s.mask("clean")
    n = int(m.sum())
    columns = {"status": ["scored"] * n, "stage": ["score"] * n}
    for j, spec in enumerate(s.metrics):
        columns[f"score_{spec.name}"] = pa.array(s.values[m, j], pa.float64())
    suggested = suggest_thresholds(pa.table(columns), None, keep_fraction)["thresholds"]
    out = {}
    for spec in s.metrics:
        step = GRID_STEP.get(spec.name, 0.1)
        if spec.lower_better:
            value = math.ceil(suggested[f"max_{spec.name}"] / step - 1e-9) * step
        else:
            value = math.floor(suggested[f"min_{spec.name}"] / step + 1e-9) * step
        out[spec.name] = round(value, 6)
    return out


def separation(s: Scores, min_clean_keep: float) -> Thresholds:
    """Grid thresholds fitted on the degraded copies too: the largest mean rejection of the
    ``reject`` kinds while keeping ``min_clean_keep`` of ``clean`` (or the most clean
    achievable); ties: more clean kept, then more of the ``mild`` kinds rejected, then the
    tied combination nearest the middle of the tied region (the largest margins)."""
    grids = [grid(s, j) for j in range(len(s.metrics))]
    pass_m = [
        passes(s.values[:, j][None, :], spec, g[:, None])
        for j, (spec, g) in enumerate(zip(s.metrics, grids, strict=True))
    ]
    shape = tuple(len(g) for g in grids)
    pad = max(0, 2 - len(pass_m))  # the inner loop is vectorised over two metrics
    pass_m += [np.ones((1, len(s.values)), dtype=bool)] * pad
    clean = s.mask("clean")
    groups = {role: [s.mask(k) for k in s.role_kinds(role)] for role in ("reject", "mild")}
    keep = np.empty(shape + (1,) * pad)
    rej = {role: np.zeros_like(keep) for role in groups}  # stays 0 for a role without kinds
    for head in itertools.product(*[range(len(p)) for p in pass_m[:-2]]):
        base = np.ones(len(s.values), dtype=bool)
        for j, h in enumerate(head):
            base &= pass_m[j][h]
        ok = pass_m[-2][:, None, :] & pass_m[-1][None, :, :] & base
        keep[head] = ok[..., clean].mean(-1)
        for role, masks in groups.items():
            if masks:
                rej[role][head] = np.mean([1 - ok[..., m].mean(-1) for m in masks], axis=0)
    keep = keep.reshape(shape)
    tied = keep >= min_clean_keep - 1e-9
    if not tied.any():
        tied = keep >= keep.max() - 1e-9
    for value in (rej["reject"].reshape(shape), keep, rej["mild"].reshape(shape)):
        tied &= value >= value[tied].max() - 1e-9
    idx = np.argwhere(tied)
    middle = np.median(idx, axis=0)
    pick = idx[np.argmin((np.abs(idx - middle) / np.array(shape)).sum(axis=1))]
    return {spec.name: float(g[i]) for spec, g, i in zip(s.metrics, grids, pick, strict=True)}


# ---------------------------------------------------------------------------------------------
# Report


def fmt_th(th: Thresholds, specs: Sequence[MetricSpec]) -> str:
    parts = [
        f"{'max' if sp.lower_better else 'min'}_{sp.name}={th[sp.name]:g}"
        for sp in specs
        if th.get(sp.name) is not None
    ]
    return " ".join(parts) or "(none)"


def table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    return "\n".join(
        "  ".join(
            x.ljust(w) if i == 0 else x.rjust(w)
            for i, (x, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [header, *rows]
    )


def stats_table(s: Scores, markdown: bool) -> str:
    header = ["kind", "role", "n", "failed"] + [f"{sp.name} median [p10, p90]" for sp in s.metrics]
    rows = []
    for kind in s.kinds:
        v = s.values[s.mask(kind)]
        cells = [kind, KINDS[kind].role, str(len(v)), str(int(np.isnan(v).any(axis=1).sum()))]
        for j in range(len(s.metrics)):
            col = v[:, j][np.isfinite(v[:, j])]
            if len(col):
                p10, med, p90 = np.percentile(col, [10, 50, 90])
                cells.append(f"{med:.2f} [{p10:.2f}, {p90:.2f}]")
            else:
                cells.append("-")
        rows.append(cells)
    return table(header, rows, markdown)


def outcome_table(s: Scores, candidates: dict[str, Thresholds], markdown: bool) -> str:
    """Per kind and candidate: % kept (role keep) or % rejected (otherwise), jointly."""
    header = ["kind", "role", "measure"] + list(candidates)
    rows = []
    oks = {name: kept(s, th) for name, th in candidates.items()}
    for kind in s.kinds:
        m, role = s.mask(kind), KINDS[kind].role
        measure = "% kept" if role == "keep" else "% rejected"
        cells = [kind, role, measure]
        for ok in oks.values():
            frac = ok[m].mean() if role == "keep" else 1 - ok[m].mean()
            cells.append(f"{100 * frac:.0f}")
        rows.append(cells)
    if not s.role_kinds("reject"):
        return table(header, rows, markdown)
    rows.append(
        ["mean of reject kinds", "", "% rejected"]
        + [f"{100 * np.mean([1 - ok[s.mask(k)].mean() for k in s.role_kinds('reject')]):.1f}"
           for ok in oks.values()]
    )  # fmt: skip
    return table(header, rows, markdown)


def report(s: Scores, args: argparse.Namespace) -> None:
    md = args.markdown
    names = [sp.name for sp in s.metrics]
    print(f"{len(s.photos)} photos at {args.size} px short side, metrics {','.join(names)}\n")
    print(stats_table(s, md) + "\n")
    candidates: dict[str, Thresholds] = {}
    if "clean" in s.kinds:
        chosen = clean_quantile(s, args.clean_keep)
        candidates["chosen"] = chosen
        for target in sorted({0.85, 0.9, 0.95, 1.0} - {args.clean_keep}):
            candidates[f"clean q {target:.0%}"] = clean_quantile(s, target)
        if s.role_kinds("reject"):
            candidates[f"separation {args.clean_keep:.0%}"] = separation(s, args.clean_keep)
        if len(names) > 1:
            for n in names:  # what each metric does alone at the chosen value
                candidates[f"{n} alone"] = {n: chosen[n]}
    if args.threshold:
        candidates["given"] = dict(args.threshold)
    if not candidates:
        return
    print("Candidates (thresholds applied jointly, as the filter applies them):")
    rows = [[name, fmt_th(th, s.metrics)] for name, th in candidates.items()]
    print(table(["candidate", "thresholds"], rows, md) + "\n")
    print(outcome_table(s, candidates, md) + "\n")
    name, th = next(iter(candidates.items()))
    for kind in [k for k in s.kinds if KINDS[k].role == "keep"]:
        rows = np.flatnonzero(s.mask(kind) & ~kept(s, th))
        print(f"{kind} versions rejected by the {name} thresholds ({fmt_th(th, s.metrics)}):")
        for r in rows:
            scores = ", ".join(f"{n}={v:.2f}" for n, v in zip(names, s.values[r], strict=True))
            print(f"  {s.photo_of_row[r]}: {scores}")
        if not len(rows):
            print("  none")


def parse_threshold(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    name = name.strip().removeprefix("max_").removeprefix("min_")
    try:
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected max_<metric>=VALUE, got {text!r}") from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of photos")
    p.add_argument("--size", type=int, default=1024, help="short side in px (default 1024)")
    p.add_argument("--metrics", default="niqe,brisque", help="comma list (default niqe,brisque)")
    p.add_argument("--nima-checkpoint", type=Path, help="NIMA_InceptionV2_ava-b0c77c00.pth")
    p.add_argument("--weights-dir", type=Path, help="folder of metric weights files")
    p.add_argument("--kinds", default=",".join(KINDS), help="comma list of versions to score")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="score cache CSV")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument(
        "--clean-keep",
        type=float,
        default=0.9,
        help="fraction of clean photos the thresholds keep jointly (default 0.9)",
    )
    p.add_argument(
        "--threshold",
        type=parse_threshold,
        action="append",
        help="also evaluate these thresholds, e.g. --threshold max_niqe=5.5 (repeatable)",
    )
    p.add_argument("--no-score", action="store_true", help="only report what is cached")
    p.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = p.parse_args(argv)
    unknown = [k for k in args.kinds.split(",") if k not in KINDS]
    if unknown:
        p.error(f"unknown kinds {unknown}; known: {', '.join(KINDS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    specs = parse_metrics(args.metrics)
    kinds = args.kinds.split(",")
    cv2.setNumThreads(args.threads)
    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not photos:
        print(f"no photos in {args.photos}", file=sys.stderr)
        return 1
    cache = load_cache(args.out)
    if not args.no_score:
        score_missing(photos, kinds, specs, args.size, cache, args)
    scores = collect(cache, photos, kinds, specs, args.size)
    if not len(scores.values):
        print(f"no scores for size {args.size} in {args.out}", file=sys.stderr)
        return 1
    report(scores, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
