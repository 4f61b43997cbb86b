"""Check manifest files against the contract in :mod:`manifests.schema`."""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from manifests.io import ManifestError, find_manifests, manifest_kind
from manifests.schema import IN_SHARD, SCORE_COLUMN, STATUSES, base_schema
from manifests.storage import Location, join, location, read_parquet, relpath


@dataclass
class ValidationReport:
    files: int = 0
    rows: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.files > 0 and not self.problems


def _group_of(path: Location, root: Location) -> str:
    """The top-level folder under root a manifest file belongs to (one stage's output)."""
    parts = relpath(path, root).split("/")  # "." when root is the file itself
    return parts[0] if len(parts) > 1 else "."


def check_table(table: pa.Table, kind: str, where: str, base_dir: Location | None) -> list[str]:
    """Problems of one manifest table; ``base_dir`` resolves relative shard paths."""
    problems = []
    schema = base_schema(kind)
    for expected in schema:
        if expected.name not in table.column_names:
            problems.append(f"{where}: missing column {expected.name!r}")
            continue
        col = table[expected.name]
        if col.type != expected.type:
            problems.append(
                f"{where}: column {expected.name!r} is {col.type}, expected {expected.type}"
            )
        if not expected.nullable and col.null_count:
            problems.append(f"{where}: column {expected.name!r} has {col.null_count} nulls")
    for name in table.column_names:
        if name in schema.names:
            continue
        if not SCORE_COLUMN.match(name):
            problems.append(f"{where}: unexpected column {name!r}")
        elif not pa.types.is_floating(table[name].type):
            problems.append(f"{where}: score column {name!r} is {table[name].type}, expected float")
    if problems:
        return problems

    rows = table.select(["key", "status", "reason", "error", "shard"]).to_pylist()
    allowed = STATUSES[kind]
    missing_shards: set[str] = set()
    for row in rows:
        status = row["status"]
        if status not in allowed:
            problems.append(f"{where}: key {row['key']}: unknown status {status!r}")
            continue
        needs = allowed[status]
        if needs and not row[needs]:
            problems.append(f"{where}: key {row['key']}: status {status!r} without a {needs}")
        if status in IN_SHARD:
            if not row["shard"]:
                problems.append(f"{where}: key {row['key']}: status {status!r} without a shard")
            elif base_dir is not None and row["shard"] not in missing_shards:
                if not join(base_dir, row["shard"]).is_file():
                    missing_shards.add(row["shard"])
                    problems.append(f"{where}: shard {row['shard']} does not exist")
    return problems


def validate(root: str | os.PathLike) -> ValidationReport:
    """Validate every manifest under ``root`` (a path or a URL): schema, statuses, shards,
    unique keys."""
    root = location(root)
    report = ValidationReport()
    try:
        if not root.exists():
            report.problems.append(f"{root}: no such file or folder")
            return report
        paths = find_manifests(root)
    except (ManifestError, OSError) as exc:  # OSError: e.g. access denied on an object store
        report.problems.append(str(exc) if isinstance(exc, ManifestError) else f"{root}: {exc}")
        return report
    if not paths:
        report.problems.append(f"{root}: no manifest files found")
        return report
    keys_by_group: dict[tuple[str, str], dict[str, Location]] = defaultdict(dict)
    for path in paths:
        kind = manifest_kind(path)
        table = read_parquet(path)
        report.files += 1
        report.rows += table.num_rows
        report.problems += check_table(table, kind, str(path), path.parent)
        seen = keys_by_group[(_group_of(path, root), kind)]
        if "key" in table.column_names:
            keys = table["key"]
            if pc.count_distinct(keys).as_py() != len(keys):
                report.problems.append(f"{path}: duplicate keys within the file")
            for key in keys.to_pylist():
                if key in seen:
                    report.problems.append(f"{path}: key {key} also in {seen[key]}")
                else:
                    seen[key] = path
    return report
