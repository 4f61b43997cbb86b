"""The filter stage: keep or reject every scored image by mutual consensus of thresholds.

Reads the score stage's image manifests (``<run>/score/``) and writes ``<run>/filter/`` with
the same relative layout, every row carried over. A ``scored`` row becomes ``kept`` when it
passes every check, else ``rejected`` with every failing check in its reason, comma-separated
in a fixed order: ``too_small`` (decoded ``min(width, height) < filter.min_side``), then one
check per threshold set in :class:`~curation.config.FilterConfig` (``max_niqe``,
``max_brisque``, ``min_nima``, in that order): ``niqe_above_max``, ``nima_below_min``, ...
A score equal to its threshold passes. A scored row without a usable score for a set threshold
(null, e.g. skipped by the cascade, or NaN) fails with ``<metric>_not_scored``; one without a
decoded size fails with ``size_unknown``. Other rows (failed, prefiltered, rejected earlier)
are carried unchanged.

The filter never rescores and is cheap (pyarrow only, no Ray), so every run rewrites every
part: changing a threshold and rerunning the filter just works. ``thresholds.json`` records
the thresholds applied and the counts.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from curation.config import FilterConfig, PipelineConfig
from curation.stages.base import StageSummary, write_json_atomic
from manifests import IMAGE, find_manifests, write_manifest
from manifests.storage import (
    Location,
    location,
    read_parquet,
    read_parquet_schema,
    relpath,
    remove,
    url,
)

_THRESHOLD_FIELD = re.compile(r"^(max|min)_([a-z0-9_]+)$")


class FilterConfigError(ValueError):
    """The filter cannot run on these scores (no scores yet, a thresholded metric missing)."""


@dataclass(frozen=True)
class Threshold:
    """One quality check: ``score_<metric>`` must be ``<= value`` (max) or ``>= value`` (min)."""

    metric: str
    op: str  # "max" | "min"
    value: float

    @property
    def field(self) -> str:
        return f"{self.op}_{self.metric}"

    @property
    def column(self) -> str:
        return f"score_{self.metric}"

    @property
    def reason(self) -> str:
        return f"{self.metric}_{'above_max' if self.op == 'max' else 'below_min'}"


def filter_thresholds(fc: FilterConfig) -> list[Threshold]:
    """The score thresholds set in ``fc`` (``max_<metric>`` / ``min_<metric>`` fields that are
    not None), in the config's field order, which is also the order of reasons."""
    out = []
    for name in type(fc).model_fields:
        m = _THRESHOLD_FIELD.match(name)
        value = getattr(fc, name)
        if m and name != "min_side" and value is not None:
            out.append(Threshold(metric=m.group(2), op=m.group(1), value=float(value)))
    return out


def judge(table: pa.Table, thresholds: list[Threshold], min_side: int) -> pa.Table:
    """``table`` with ``stage`` / ``status`` / ``reason`` set on its ``scored`` rows.

    Each check yields a boolean "fails" column; the failing checks of a row form a bit code,
    and each distinct code is turned into its reason string once (few codes, many rows).
    """
    n = table.num_rows
    # (name, fails) in reason order: the size first, then each threshold in config order.
    side = pc.min_element_wise(table["width"], table["height"], skip_nulls=False)
    checks = [
        ("size_unknown", pc.is_null(side)),
        ("too_small", pc.fill_null(pc.less(side, min_side), False)),
    ]
    for t in thresholds:  # a part without scored rows may lack the column: all null then
        col = table[t.column] if t.column in table.column_names else pa.nulls(n, pa.float64())
        beyond = pc.greater(col, t.value) if t.op == "max" else pc.less(col, t.value)
        checks.append((t.reason, pc.fill_null(beyond, False)))  # NaN compares False
        checks.append((f"{t.metric}_not_scored", pc.is_null(col, nan_is_null=True)))
    code = pc.cast(checks[0][1], pa.int64())
    for bit, (_, fails) in enumerate(checks[1:], start=1):
        code = pc.add(code, pc.multiply(pc.cast(fails, pa.int64()), 1 << bit))
    codes = pc.unique(code)
    reasons = [
        ",".join(name for bit, (name, _) in enumerate(checks) if (c >> bit) & 1) or None
        for c in codes.to_pylist()
    ]
    reason = pc.take(pa.array(reasons, pa.string()), pc.index_in(code, codes))

    scored = pc.equal(table["status"], "scored")
    rejected = pc.is_valid(reason)
    status = pc.if_else(scored, pc.if_else(rejected, "rejected", "kept"), table["status"])
    stage = pc.if_else(scored, pa.scalar("filter"), table["stage"])
    new_reason = pc.if_else(scored, reason, table["reason"])
    for name, col in (("stage", stage), ("status", status), ("reason", new_reason)):
        table = table.set_column(table.schema.get_field_index(name), name, col)
    return table


def rebase_shards(table: pa.Table, src_dir: Location, dest_dir: Location) -> pa.Table:
    """Rewrite the ``shard`` column (relative to ``src_dir``) relative to ``dest_dir``."""
    rel = relpath(src_dir, dest_dir)
    col = table["shard"]
    uniques = pc.unique(col)
    moved = pa.array(
        [os.path.normpath(os.path.join(rel, s)) if s else s for s in uniques.to_pylist()],
        pa.string(),
    )
    new = pc.take(moved, pc.index_in(col, uniques))
    return table.set_column(table.schema.get_field_index("shard"), "shard", new)


class FilterStage:
    name = "filter"

    def __init__(
        self, cfg: PipelineConfig, run_dir: Location, address: str | None = None, log=print
    ):
        self.cfg, self.run_dir, self.address, self.log = cfg, location(run_dir), address, log
        self.inp, self.out = self.run_dir / "score", self.run_dir / "filter"

    def run(self) -> StageSummary:
        start = time.perf_counter()
        summary = StageSummary(self.name)
        fc = self.cfg.filter
        thresholds = filter_thresholds(fc)
        if not self.inp.is_dir():
            raise FilterConfigError(f"{self.inp} does not exist: run the score stage first")
        parts = find_manifests(self.inp, IMAGE)
        if not parts:
            raise FilterConfigError(
                f"no image manifest under {self.inp}: run the score stage first"
            )
        self._check_columns(parts, thresholds)
        if not thresholds:
            note = f"no quality threshold set (filter.max_niqe, ...): only filter.min_side={fc.min_side} applies"
            summary.notes.append(note)
            self.log(f"[filter] WARNING: {note}")

        counts: Counter = Counter()  # every row: "status" or "status/reason"
        decided: Counter = Counter()  # rows judged here: kept / rejected
        checks: Counter = Counter()  # per check alone; a rejected row may fail several
        written: set[str] = set()
        for part in parts:
            dest = self.out / relpath(part, self.inp)
            table = read_parquet(part)
            table = rebase_shards(judge(table, thresholds, fc.min_side), part.parent, dest.parent)
            write_manifest(table, dest, IMAGE)
            written.add(url(dest))
            groups = table.group_by(["stage", "status", "reason"]).aggregate([([], "count_all")])
            for g in groups.to_pylist():
                n = g["count_all"]
                counts[g["status"] + (f"/{g['reason']}" if g["reason"] else "")] += n
                if g["stage"] == "filter":
                    decided[g["status"]] += n
                    for check in g["reason"].split(",") if g["reason"] else []:
                        checks[check] += n
        for stale in find_manifests(self.out, IMAGE):
            if url(stale) in written:
                continue
            remove(stale)  # its score part is gone: keeping it would count its rows twice
            self.log(f"[filter] removed {stale}: no such part under {self.inp} any more")

        kept, rejected = decided["kept"], decided["rejected"]
        record = {
            "input": str(self.inp),
            "thresholds": fc.model_dump(),  # None: not applied
            "applied": ["min_side"] + [t.field for t in thresholds],
            "scored": kept + rejected,
            "kept": kept,
            "rejected": rejected,
            "failing": dict(sorted(checks.items())),
            "counts": dict(sorted(counts.items())),
        }
        write_json_atomic(self.out / "thresholds.json", record)
        applied = ", ".join(f"{t.field}={t.value:g}" for t in thresholds) or "no score threshold"
        self.log(
            f"[filter] {len(parts)} part(s): {kept + rejected} scored image(s) -> {kept} kept, "
            f"{rejected} rejected ({applied}, min_side={fc.min_side})"
        )
        summary.counts = dict(counts)
        summary.seconds = time.perf_counter() - start
        return summary

    def _check_columns(self, parts: list[Location], thresholds: list[Threshold]) -> None:
        """Refuse before writing anything when a set threshold has no score column."""
        for part in parts:
            names = read_parquet_schema(part).names
            absent = [t for t in thresholds if t.column not in names]
            if not absent:
                continue
            status = read_parquet(part, columns=["status"])["status"]
            if not pc.any(pc.equal(status, "scored")).as_py():
                continue  # nothing to judge in this part
            have = [n.removeprefix("score_") for n in names if n.startswith("score_")]
            t = absent[0]
            raise FilterConfigError(
                f"filter.{t.field} is set but {part} has no {t.column} column (scored with "
                f"{', '.join(have) or 'no metric'}): score with {t.metric} or unset filter.{t.field}"
            )
