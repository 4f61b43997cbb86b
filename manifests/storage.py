"""Where runs live: local folders or object stores (``s3://``, ``gs://``, ...), one API.

A location is a ``pathlib.Path`` for local paths (and ``file://`` URLs) and a ``UPath``
(universal_pathlib: the pathlib API over any fsspec filesystem) for everything else, so the
stages use ``/``, ``exists()``, ``iterdir()``, ``read_text()``... on either. What pathlib
alone cannot give on an object store is here:

- **Atomic publish.** Local files are written to a temp name beside the target and renamed.
  Object stores have no rename, and an fsspec file closed after an error *commits* what was
  written so far (measured on s3fs: half an object under the final name). So remote outputs
  are written to a local temp file and uploaded in one call (``put_file``: a single PUT or a
  multipart upload that only appears when complete). Either way no reader ever sees half a
  file under its final name; units of several files (a shard and its manifest) publish their
  marker last.
- **Paths with ``..``** (manifests point at shards relative to themselves): normalised here,
  since object stores have no directories to resolve them against.
- **Reading Parquet / tar** through open file objects, which works on every filesystem.
- **No listing cache**: many processes write one run folder; each listing asks the store.

Credentials are never part of a location: fsspec takes them from the environment (for S3:
``AWS_*`` variables, ``~/.aws``, instance roles; ``AWS_ENDPOINT_URL`` for S3-compatible
servers), so URLs and run cards stay free of secrets.
"""

from __future__ import annotations

import os
import posixpath
import socket
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import Any

#: A run folder, stage folder or file: local ``Path`` or remote ``UPath``.
Location = Any


class StorageError(ValueError):
    """A URL names storage this installation cannot reach (its fsspec backend is missing, or
    the protocol is unknown)."""


def location(spec: str | os.PathLike) -> Location:
    """The location named by a path or URL: ``Path`` when local, else a ``UPath``.

    ``file://`` URLs are local paths. The UPath import is deferred: it imports fsspec, which
    local runs (and ``curate --help``) do not need.
    """
    if is_remote(spec):
        return spec
    if isinstance(spec, PurePath):
        return Path(spec)
    text = os.fspath(spec)
    if "://" not in text:
        return Path(text)
    if text.startswith("file://"):
        from fsspec.implementations.local import LocalFileSystem

        return Path(LocalFileSystem._strip_protocol(text))
    from fsspec.registry import get_filesystem_class
    from upath import UPath

    try:  # fail here, in one line, not at the first read deep inside a stage
        get_filesystem_class(text.split("://", 1)[0])
    except (ImportError, ValueError) as exc:  # backend not installed / protocol unknown
        raise StorageError(f"{text}: {exc}") from None
    # No listing cache: Ray workers and other processes write the run folder while this one
    # reads it, and a cached listing would hide their files (measured with s3fs: a manifest
    # written by a rerun was "not found" by a process that had listed the folder before).
    return UPath(text, use_listings_cache=False)


def is_remote(loc: Location) -> bool:
    """True for object-store (non-local) locations."""
    return hasattr(loc, "fs") and getattr(loc, "protocol", "") not in ("", "file", "local")


def url(loc: Location) -> str:
    """The string that names ``loc`` again through :func:`location` (a path or a URL)."""
    return str(loc)


def join(base: Location, rel: str) -> Location:
    """``base / rel`` with ``.`` and ``..`` resolved (``shard`` columns are relative paths)."""
    if not is_remote(base):
        return Path(os.path.normpath(Path(base) / rel))
    return on_filesystem(base, posixpath.normpath(posixpath.join(base.path, rel)))


def on_filesystem(like: Location, fs_path: str) -> Location:
    """The location of ``fs_path`` (as ``like.fs`` lists it: no protocol) on ``like``'s store."""
    return type(like)(f"{like.protocol}://{fs_path}", **like.storage_options)


def relpath(target: Location, start: Location) -> str:
    """``target`` relative to the folder ``start`` (both on one filesystem), ``/`` separated."""
    if is_remote(target):
        return posixpath.relpath(target.path, start.path)
    return Path(os.path.relpath(target, start)).as_posix()


def temp_path(path: Path) -> Path:
    """A hidden temp name beside ``path`` to write to before renaming onto it.

    Unique per attempt: a retried task (another node, maybe the same pid on a shared file
    system) never writes into the temp file of the attempt it replaces.
    """
    return path.with_name(
        f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    )


def staging_file(dest: Location) -> Path:
    """A local file to write ``dest``'s content into, then :func:`publish` it.

    Local: a temp name beside ``dest`` (same filesystem, so publishing is a rename; a killed
    writer leaves a hidden ``.name.tmp-...`` file that the stages clean up). Remote: a file
    in the local temp folder.
    """
    if not is_remote(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        return temp_path(dest)
    fd, name = tempfile.mkstemp(prefix="curate-", suffix="-" + dest.name)
    os.close(fd)
    return Path(name)


def publish(staged: Path, dest: Location) -> None:
    """Make the complete ``staged`` file appear as ``dest`` in one step; ``staged`` is gone."""
    if not is_remote(dest):
        os.replace(staged, dest)
        return
    try:
        dest.fs.put_file(str(staged), dest.path)
    finally:
        staged.unlink(missing_ok=True)


def discard(staged: Path | None) -> None:
    """Drop a staged file that will not be published (the writer failed)."""
    if staged is not None:
        staged.unlink(missing_ok=True)


@contextmanager
def atomic_output(dest: Location) -> Iterator[Path]:
    """``with atomic_output(dest) as tmp:`` write the local file ``tmp``; on success it is
    published as ``dest``, on error nothing appears and the temp file is removed."""
    staged = staging_file(dest)
    try:
        yield staged
    except BaseException:
        discard(staged)
        raise
    publish(staged, dest)


def write_bytes_atomic(dest: Location, data: bytes) -> None:
    with atomic_output(dest) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(dest: Location, text: str) -> None:
    write_bytes_atomic(dest, text.encode())


def walk_files(root: Location, suffix: str = "", skip_scratch: bool = True) -> list[Location]:
    """Files under ``root`` ending in ``suffix``, sorted. With ``skip_scratch`` (run folders),
    ``_``/``.`` prefixed folders and ``.`` prefixed files are left out: tools' scratch
    (img2dataset's raw output, temp files). Input folders are walked whole."""

    def scratch(name: str, folder: bool) -> bool:
        return skip_scratch and name.startswith(("_", ".") if folder else ".")

    if not is_remote(root):
        found = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not scratch(d, True))
            found += [
                Path(dirpath) / n
                for n in sorted(filenames)
                if n.endswith(suffix) and not scratch(n, False)
            ]
        return found
    base = root.path.rstrip("/")
    found = []
    # One listing call for the whole tree: an object store lists prefixes, not folders.
    for name in sorted(root.fs.find(base)):
        *folders, leaf = posixpath.relpath(name, base).split("/")
        if any(scratch(f, True) for f in folders) or scratch(leaf, False):
            continue
        if leaf.endswith(suffix):
            found.append(on_filesystem(root, name))
    return found


def remove(loc: Location) -> None:
    """Delete a file if it exists."""
    if is_remote(loc):
        if loc.fs.exists(loc.path):
            loc.fs.rm_file(loc.path)
    else:
        loc.unlink(missing_ok=True)


def open_input(loc: Location | str):
    """A binary file object for reading ``loc`` (a location, a path or a URL)."""
    loc = location(loc) if isinstance(loc, str) else loc
    return loc.open("rb")


@contextmanager
def _parquet_source(loc: Location):
    """What pyarrow reads ``loc`` from: the local path itself (pyarrow opens it) or an
    open file object on a store (pyarrow cannot open a UPath)."""
    if not is_remote(loc):
        yield loc
    else:
        with loc.open("rb") as f:
            yield f


def read_parquet(loc: Location, columns: list[str] | None = None):
    import pyarrow.parquet as pq

    with _parquet_source(loc) as src:
        return pq.read_table(src, columns=columns)


def read_parquet_schema(loc: Location):
    import pyarrow.parquet as pq

    with _parquet_source(loc) as src:
        return pq.read_schema(src)


def parquet_rows(loc: Location) -> int:
    import pyarrow.parquet as pq

    with _parquet_source(loc) as src:
        return pq.read_metadata(src).num_rows
