"""The bundled demo pipeline run as a user runs it (``curate run`` in a child process), and a
snapshot of a run's results to compare two runs (local folder or object-store URL)."""

from __future__ import annotations

import subprocess
import sys

from manifests import find_manifests
from manifests.storage import location, read_parquet, relpath, walk_files


def curate_run(out: str, **kw) -> subprocess.Popen:
    """``curate run --output OUT`` (the demo) in its own process group, stderr captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "curation.cli", "run", "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the kill takes Ray and img2dataset too
        **kw,
    )


def snapshot(run_dir) -> dict:
    """Every manifest (as rows) and every patch tar (as bytes) of a run, by relative path."""
    run_dir = location(run_dir)
    snap = {}
    for path in find_manifests(run_dir):
        snap[relpath(path, run_dir)] = read_parquet(path).to_pylist()
    for tar in walk_files(run_dir / "patch", ".tar"):
        snap[relpath(tar, run_dir)] = tar.read_bytes()
    return snap
