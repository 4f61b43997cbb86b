"""Read a source's input rows: LAION-style Parquet URL lists and local image folders.

Rows come out normalised to the image manifest's input columns (key, source, url, caption,
meta_width, meta_height, pwatermark, punsafe, similarity, extra) whatever the input spelled.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pyarrow as pa

from curation.config import SourceConfig
from curation.keys import sample_key
from manifests.storage import (
    Location,
    is_remote,
    location,
    on_filesystem,
    read_parquet,
    relpath,
    walk_files,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
_FLOAT_COLUMNS = ("pwatermark", "punsafe", "similarity")


class InputError(ValueError):
    """An input the user gave cannot be used (missing, unreadable, wrong columns)."""


def expand_parquet_inputs(paths: list[str]) -> list[Location]:
    """Files, folders (every ``*.parquet`` inside, sorted) and globs -> sorted file list.

    Each may be a local path or a URL (``s3://bucket/laion/*.parquet``).
    """
    files: list[Location] = []
    for spec in paths:
        p = location(spec)
        if any(ch in spec for ch in "*?["):
            if is_remote(p):
                matches = [on_filesystem(p, m) for m in sorted(p.fs.glob(p.path))]
            else:
                matches = sorted(Path(m) for m in glob.glob(spec, recursive=True))
            if not matches:
                raise InputError(f"input {spec}: the pattern matches no file")
            files += matches
        elif p.is_dir():
            found = walk_files(p, ".parquet", skip_scratch=False)
            if not found:
                raise InputError(f"input {spec}: folder holds no .parquet file")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"input {spec}: no such file or folder")
    return files


def _column(table: pa.Table, wanted: str) -> str | None:
    """The table's name for ``wanted``, matched case-insensitively (LAION uses URL, some url)."""
    by_lower = {n.lower(): n for n in table.column_names}
    return by_lower.get(wanted.lower())


def read_url_list(src: SourceConfig) -> pa.Table:
    """All rows of a LAION-style source, in input order, with keys and normalised columns."""
    tables = []
    seen: set[str] = set()  # URLs across all of the source's files: a repeat is a duplicate
    for path in expand_parquet_inputs(src.path):
        try:
            table = read_parquet(path)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"input {path}: not a readable Parquet file ({exc})") from None
        url_col = _column(table, src.url_col)
        if url_col is None:
            raise InputError(
                f"input {path}: no {src.url_col!r} column (columns: {', '.join(table.column_names)}); "
                f"set sources[].url_col"
            )
        tables.append(_normalise(table, src, url_col, path, seen))
    return pa.concat_tables(tables)


def _normalise(
    table: pa.Table, src: SourceConfig, url_col: str, path: Location, seen: set[str]
) -> pa.Table:
    named = {
        url_col,
        *(
            c
            for c in (
                _column(table, n) for n in (src.caption_col or "", src.width_col, src.height_col)
            )
            if c
        ),
        *(c for c in (_column(table, n) for n in _FLOAT_COLUMNS) if c),
    }
    cap = _column(table, src.caption_col) if src.caption_col else None
    wcol, hcol = _column(table, src.width_col), _column(table, src.height_col)
    n = table.num_rows

    def as_type(col: str | None, typ: pa.DataType) -> pa.Array:
        if col is None:
            return pa.nulls(n, typ)
        try:
            return table[col].cast(typ, safe=False).combine_chunks()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise InputError(
                f"input {path}: column {col!r} cannot be read as {typ} ({exc})"
            ) from None

    urls = as_type(url_col, pa.string()).to_pylist()
    others = [c for c in table.column_names if c not in named]
    extra_rows = table.select(others).to_pylist() if others else [{}] * n
    keys, dup = [], []
    for i, url in enumerate(urls):
        first = url is not None and url not in seen
        if url is not None:
            seen.add(url)
        # Later copies of a URL (and rows without one) get a key from their position, so every
        # input row keeps its own manifest row.
        keys.append(
            sample_key(src.name, url)
            if first
            else sample_key(src.name, url or "", str(path), str(i))
        )
        dup.append(url is not None and not first)
    columns = {
        "key": pa.array(keys, pa.string()),
        "source": pa.array([src.name] * n, pa.string()),
        "url": pa.array([u if u is not None else "" for u in urls], pa.string()),
        "caption": as_type(cap, pa.string()),
        "meta_width": as_type(wcol, pa.int64()),
        "meta_height": as_type(hcol, pa.int64()),
        **{c: as_type(_column(table, c), pa.float64()) for c in _FLOAT_COLUMNS},
        "extra": pa.array(
            [json.dumps(r, default=str, sort_keys=True) if r else None for r in extra_rows],
            pa.string(),
        ),
        "_missing_url": pa.array([u is None or not u.strip() for u in urls], pa.bool_()),
        "_duplicate_url": pa.array(dup, pa.bool_()),
    }
    return pa.table(columns)


def list_image_folder(src: SourceConfig) -> tuple[list[tuple[Location, str]], int]:
    """Image files under the source's folders, sorted: (path, relative name); plus skipped count.

    Files without an image extension are not inputs; they are counted so the user hears of them.
    """
    files: list[tuple[Location, str]] = []
    skipped = 0
    for spec in src.path:
        root = location(spec)
        if not root.is_dir():
            raise InputError(f"input folder {spec}: no such folder")
        for path in walk_files(root, skip_scratch=False):
            name = path.name
            if name.lower().endswith(IMAGE_EXTENSIONS):
                files.append((path, relpath(path, root)))
            elif not name.startswith("."):
                skipped += 1
    return files, skipped
