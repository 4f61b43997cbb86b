"""Read and write manifest Parquet files atomically.

A manifest part is written to a temporary file and published in one step (a rename on local
disks, one upload on object stores: see manifests.storage), so a reader (or a resumed run)
never sees half a file under its final name.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from manifests.schema import (
    KINDS,
    META_KIND,
    META_VERSION,
    SCHEMA_VERSION,
    SCORE_COLUMN,
    base_schema,
)
from manifests.storage import (
    Location,
    atomic_output,
    location,
    read_parquet,
    read_parquet_schema,
    walk_files,
)


class ManifestError(ValueError):
    """A manifest file is missing, unreadable, of the wrong kind or of an unknown version."""


def conform(table: pa.Table, kind: str) -> pa.Table:
    """Order and cast ``table`` to the kind's schema; extra ``score_*`` columns are kept."""
    schema = base_schema(kind)
    missing = [f.name for f in schema if f.name not in table.column_names]
    columns = {}
    for field in schema:
        if field.name in missing:
            columns[field.name] = pa.nulls(table.num_rows, field.type)
        else:
            columns[field.name] = table[field.name].cast(field.type)
    extra = [n for n in table.column_names if n not in schema.names]
    unknown = [n for n in extra if not SCORE_COLUMN.match(n)]
    if unknown:
        raise ManifestError(f"columns not in the {kind} manifest schema: {', '.join(unknown)}")
    for name in extra:
        columns[name] = table[name]
    fields = list(schema) + [table.schema.field(n) for n in extra]
    return pa.Table.from_arrays(
        list(columns.values()), schema=pa.schema(fields, metadata=schema.metadata)
    )


def table_from_rows(rows: list[dict], kind: str) -> pa.Table:
    """Build a manifest table from row dicts; absent fields are null.

    (``pa.Table.from_pylist`` alone takes its columns from the first row only.)
    """
    schema = base_schema(kind)
    scores = sorted({k for r in rows for k in r if SCORE_COLUMN.match(k)})
    for name in scores:
        schema = schema.append(pa.field(name, pa.float64()))
    unknown = sorted({k for r in rows for k in r} - set(schema.names))
    if unknown:
        raise ManifestError(f"columns not in the {kind} manifest schema: {', '.join(unknown)}")
    return pa.Table.from_pylist(rows, schema=schema)


def write_manifest(table: pa.Table | list[dict], path: str | os.PathLike, kind: str) -> Location:
    """Write a table (or row dicts) as a ``kind`` manifest at ``path`` atomically."""
    path = location(path)
    table = table_from_rows(table, kind) if isinstance(table, list) else conform(table, kind)
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def manifest_kind(path: str | os.PathLike) -> str | None:
    """The manifest kind stamped on a Parquet file, or None for other Parquet files."""
    try:
        meta = read_parquet_schema(location(path)).metadata or {}
    except (OSError, pa.ArrowException) as exc:
        raise ManifestError(f"{path}: not a readable Parquet file ({exc})") from exc
    kind = meta.get(META_KIND)
    if kind is None:
        return None
    version = int(meta.get(META_VERSION, b"0"))
    if version > SCHEMA_VERSION:
        raise ManifestError(
            f"{path}: manifest schema version {version} is newer than this curate "
            f"understands ({SCHEMA_VERSION}); upgrade curate"
        )
    return kind.decode()


def find_manifests(root: str | os.PathLike, kind: str | None = None) -> list[Location]:
    """All manifest files under ``root`` (sorted), skipping ``_``/``.`` prefixed folders.

    Those folders hold tools' scratch files (img2dataset's raw output, temp files).
    """
    root = location(root)
    if root.is_file():
        return [root] if manifest_kind(root) in ([kind] if kind else KINDS) else []
    found = []
    for path in walk_files(root, ".parquet"):
        found_kind = manifest_kind(path)
        if found_kind is not None and (kind is None or found_kind == kind):
            found.append(path)
    return found


def iter_manifest_tables(paths: Iterable[Location]) -> Iterator[tuple[Location, pa.Table]]:
    for path in paths:
        yield path, read_parquet(path)


def read_manifest(root: str | os.PathLike, kind: str) -> pa.Table:
    """Concatenate every ``kind`` manifest part under ``root`` into one table."""
    paths = find_manifests(root, kind)
    if not paths:
        raise ManifestError(f"no {kind} manifest under {root}")
    tables = [t for _, t in iter_manifest_tables(paths)]
    return pa.concat_tables(tables, promote_options="default")
