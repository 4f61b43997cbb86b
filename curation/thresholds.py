"""Suggest filter thresholds from a run's score distribution (``curate thresholds suggest``).

The DyNet paper does not publish its thresholds, only that an image is kept when every metric
agrees (mutual consensus). Given the fraction of scored images to keep, this proposes one
threshold per metric so that about that fraction passes all of them jointly.

Method: every metric gets the same per-metric keep quantile ``q``: the threshold of a
lower-better metric (NIQE, BRISQUE) is ``max_<metric>`` = the score of its ``q``-th best image,
that of a higher-better one (NIMA) is ``min_<metric>``. The joint pass count grows with ``q``,
so ``q`` is found by bisection on the image rank (``q = k / n``) as the smallest one keeping at
least the wanted count jointly. Between rank ``k - 1`` and ``k``, the metrics' thresholds are
then raised one at a time (in the order given) and the step closest to the wanted count wins:
without tied scores each step adds at most one image, so the joint count is within half an
image of the target. Thresholds are observed scores and pass on equality, as in the filter, so
filtering with them keeps exactly the count reported.

Images whose score is missing (a cascade skipped the metric) or NaN never pass, as in the
filter; they count in the population, so a keep fraction above the share of fully scored
images cannot be reached.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.metrics.registry import get_spec
from manifests import IMAGE, read_manifest
from manifests.storage import location


class ThresholdError(ValueError):
    """No suggestion can be made (no scored image, no such score column, bad keep fraction)."""


def read_scores(path: str | os.PathLike) -> pa.Table:
    """The image manifests of a run's score stage (``<path>/score``), or of ``path`` itself
    (a stage folder, e.g. ``<run>/filter``, or one manifest file)."""
    path = location(path)
    root = path / "score" if (path / "score").is_dir() else path
    return read_manifest(root, IMAGE)


def _population(table: pa.Table, min_side: int | None) -> tuple[pa.Table, int]:
    """The scored images (``scored``, or ``kept`` / ``rejected`` by the filter stage), and how
    many of them were left out for being below ``min_side``."""
    mask = pc.or_(pc.equal(table["status"], "scored"), pc.equal(table["stage"], "filter"))
    scored = table.filter(pc.fill_null(mask, False))
    if min_side is None:
        return scored, 0
    side = pc.min_element_wise(scored["width"], scored["height"], skip_nulls=False)
    big = scored.filter(pc.fill_null(pc.greater_equal(side, min_side), False))
    return big, scored.num_rows - big.num_rows


def suggest_thresholds(
    table: pa.Table,
    metrics: Sequence[str] | None,
    keep_fraction: float,
    min_side: int | None = None,
) -> dict:
    """Thresholds under which about ``keep_fraction`` of the scored images pass every metric.

    Args:
        table: image manifest rows (e.g. :func:`read_scores`); only scored images count.
        metrics: metric names (``score_<name>`` columns); None: every score column present.
        keep_fraction: wanted joint pass fraction, in (0, 1].
        min_side: when given, images whose decoded min side is below it are left out of the
            population first (the filter's ``min_side`` rejects them whatever their scores).

    Returns a dict: ``images`` (population), ``keep_fraction``, ``thresholds`` (``max_<m>`` /
    ``min_<m>`` -> score), ``alone`` (per threshold: ``count``, ``fraction`` kept by it alone,
    and ``quantile`` of that metric's scores), ``joint`` (``count``, ``fraction``),
    ``not_scored`` (per metric: images without a usable score), ``left_out_below_min_side``.
    """
    if not 0 < keep_fraction <= 1:
        raise ThresholdError(f"keep fraction must be in (0, 1], got {keep_fraction}")
    if metrics is None:
        metrics = [c.removeprefix("score_") for c in table.column_names if c.startswith("score_")]
    metrics = [get_spec(m).name for m in dict.fromkeys(metrics)]
    if not metrics:
        raise ThresholdError("no score column (score_<metric>) to suggest thresholds from")
    for m in metrics:
        if f"score_{m}" not in table.column_names:
            raise ThresholdError(f"no score_{m} column: this run was not scored with {m}")
    pop, left_out = _population(table, min_side)
    n = pop.num_rows
    if n == 0:
        raise ThresholdError(
            "no scored image to suggest thresholds from"
            + (f" ({left_out} below min_side {min_side})" if left_out else "")
        )

    # "badness": lower is better for every metric; NaN for a missing score (never passes).
    lower = [get_spec(m).lower_better for m in metrics]
    bad = [
        np.asarray(pc.fill_null(pop[f"score_{m}"], math.nan), dtype=np.float64) * (1 if lo else -1)
        for m, lo in zip(metrics, lower, strict=True)
    ]
    ordered = [np.sort(b[~np.isnan(b)]) for b in bad]
    for m, o in zip(metrics, ordered, strict=True):
        if not len(o):
            raise ThresholdError(f"no scored image has a usable score_{m}")

    def cut(i: int, rank: int) -> float:
        """Badness threshold passing the ``rank`` best scores of metric ``i``."""
        o = ordered[i]
        return float(o[rank - 1]) if rank else float(np.nextafter(o[0], -np.inf))

    def ranks(k: int) -> list[int]:  # the same quantile k / n for every metric
        return [-(-k * len(o) // n) for o in ordered]

    def joint(rs: list[int]) -> int:
        ok = np.ones(n, dtype=bool)
        for i, r in enumerate(rs):
            ok &= bad[i] <= cut(i, r)
        return int(ok.sum())

    target = keep_fraction * n
    lo_k, hi_k = 0, n  # smallest k with joint(ranks(k)) >= target, by bisection
    while lo_k < hi_k:
        mid = (lo_k + hi_k) // 2
        if joint(ranks(mid)) >= target:
            hi_k = mid
        else:
            lo_k = mid + 1
    chain = [ranks(lo_k)]
    if lo_k > 0:  # from rank k - 1 to k, one metric at a time
        chain = [ranks(lo_k - 1)]
        for i, r in enumerate(ranks(lo_k)):
            chain.append(chain[-1][:i] + [r] + chain[-1][i + 1 :])
    best = min(chain, key=lambda rs: abs(joint(rs) - target))
    kept = joint(best)

    thresholds, alone, not_scored = {}, {}, {}
    for i, (m, lo) in enumerate(zip(metrics, lower, strict=True)):
        name = f"{'max' if lo else 'min'}_{m}"
        c = cut(i, best[i])
        thresholds[name] = c if lo else -c
        count = int((bad[i] <= c).sum())
        alone[name] = {
            "count": count,
            "fraction": count / n,
            "quantile": best[i] / len(ordered[i]),
        }
        not_scored[m] = int(np.isnan(bad[i]).sum())
    return {
        "images": n,
        "keep_fraction": keep_fraction,
        "thresholds": thresholds,
        "alone": alone,
        "joint": {"count": kept, "fraction": kept / n},
        "not_scored": not_scored,
        "left_out_below_min_side": left_out,
        "min_side": min_side,
    }


def format_suggestion(s: dict) -> str:
    """A table of :func:`suggest_thresholds` output and the ``--set`` flags that apply it."""
    lines = [
        f"Thresholds keeping about {s['keep_fraction']:.1%} of {s['images']} scored image(s)"
        " jointly (mutual consensus):"
    ]
    if s["left_out_below_min_side"]:
        lines.append(
            f"  ({s['left_out_below_min_side']} image(s) below min_side {s['min_side']} left out)"
        )
    lines.append(f"  {'threshold':<16} {'value':>12}  {'keeps alone':>20}")
    for name, value in s["thresholds"].items():
        a = s["alone"][name]
        lines.append(f"  {name:<16} {value:>12.6g}  {a['count']:>10} ({a['fraction']:>7.2%})")
    j = s["joint"]
    lines.append(f"  {'all jointly':<16} {'':>12}  {j['count']:>10} ({j['fraction']:>7.2%})")
    missing = {m: c for m, c in s["not_scored"].items() if c}
    if missing:
        listed = ", ".join(f"{m}: {c}" for m, c in missing.items())
        lines.append(f"  without a usable score (never kept): {listed}")
    sets = " ".join(f"--set filter.{k}={float(v)!r}" for k, v in s["thresholds"].items())
    lines.append(f"Apply with: {sets}")
    return "\n".join(lines)
