"""Counts per stage / status / reason over the manifests of a run."""

from __future__ import annotations

import os
from collections import Counter

from manifests.io import find_manifests, manifest_kind
from manifests.storage import location, read_parquet
from manifests.validate import _group_of

#: Stage folders of a run, in pipeline order (others sort after them, by name).
_STAGE_FOLDERS = ("download", "score", "filter", "patch")


def manifest_stats(root: str | os.PathLike) -> dict:
    """Per top-level folder (one stage's output) under ``root`` (a path or a URL): kind, rows,
    and counts by stage/status/reason.

    Returns ``{"groups": {folder: {"kind", "files", "rows", "counts": [...]}}}`` where each
    count is ``{"stage", "status", "reason", "count"}``, sorted for stable output.
    """
    root = location(root)
    groups: dict[str, dict] = {}
    counters: dict[str, Counter] = {}
    for path in find_manifests(root):
        group = _group_of(path, root)
        info = groups.setdefault(group, {"kind": manifest_kind(path), "files": 0, "rows": 0})
        table = read_parquet(path, columns=["stage", "status", "reason"])
        info["files"] += 1
        info["rows"] += table.num_rows
        counter = counters.setdefault(group, Counter())
        for row in table.to_pylist():
            counter[(row["stage"], row["status"], row["reason"] or "")] += 1
    for group, counter in counters.items():
        groups[group]["counts"] = [
            {"stage": s, "status": st, "reason": r or None, "count": n}
            for (s, st, r), n in sorted(counter.items())
        ]
    order = {name: i for i, name in enumerate(_STAGE_FOLDERS)}
    ranked = sorted(groups.items(), key=lambda item: (order.get(item[0], len(order)), item[0]))
    return {"root": str(root), "groups": dict(ranked)}


def format_stats(stats: dict) -> str:
    """A plain-text table of :func:`manifest_stats` output."""
    lines = []
    for group, info in stats["groups"].items():
        lines.append(
            f"{group}  ({info['kind']} manifest, {info['files']} files, {info['rows']} rows)"
        )
        for c in info["counts"]:
            reason = c["reason"] or ""
            lines.append(f"  {c['stage']:<10} {c['status']:<12} {reason:<28} {c['count']:>8}")
    return "\n".join(lines) if lines else f"no manifests under {stats['root']}"
