"""Shared fixtures. Nothing here reaches beyond 127.0.0.1."""

from __future__ import annotations

from curation.offline_env import use_offline_env

# Before any test imports img2dataset / ray / pyiqa: they phone home by default.
use_offline_env()

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEMO_WWW = REPO / "pipelines" / "demo" / "www"


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if any("gpu" in item.keywords for item in items) and not _has_cuda():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def demo_photos() -> list[Path]:
    """The real bundled photos (1024 px short side), sorted."""
    return sorted(
        p for p in DEMO_WWW.iterdir() if p.suffix in (".jpg", ".png") and p.stat().st_size > 100_000
    )


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API server on 127.0.0.1 for the whole session (see tests/s3_server.py)."""
    from tests.s3_server import s3_server

    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    """A fresh, empty bucket on the session's S3 server: its ``s3://`` URL."""
    from tests.s3_server import new_bucket

    return new_bucket()


@pytest.fixture(scope="session")
def clean_demo_run(tmp_path_factory) -> Path:
    """One uninterrupted ``curate run`` of the demo into a local folder: the reference that
    killed-and-resumed runs (local or on an object store) must reproduce exactly."""
    from tests.demo_run import curate_run

    out = tmp_path_factory.mktemp("clean") / "run"
    proc = curate_run(out)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    return out
