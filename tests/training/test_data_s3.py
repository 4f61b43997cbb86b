"""The pretraining loader reads a patch run from an S3-compatible object store.

A real S3 API server (moto's, over HTTP on 127.0.0.1) holds a copy of a patch run; the loader
opens it by ``s3://`` URL through fsspec/s3fs and must build exactly the batches it builds from
the local copy.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch

from manifests import ManifestError
from tests.training.patch_run import make_patch_run
from training.data import PretrainBatches, open_patch_index, validation_set
from training.degrade import DegradeConfig

s3fs = pytest.importorskip("s3fs")

pytestmark = pytest.mark.timeout(120)
DEGRADE = DegradeConfig(crop=32)


@pytest.fixture(scope="module")
def s3(s3_endpoint, tmp_path_factory):
    """A bucket on the session's S3 server (tests/s3_server.py) holding a copy of a local
    patch run at ``<bucket>/run``: (filesystem, bucket URL, local run)."""
    from tests.s3_server import new_bucket

    bucket = new_bucket()
    local = tmp_path_factory.mktemp("s3") / "run"
    make_patch_run(local, shards=(4, 3, 5), size=64)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.put(str(local), bucket.removeprefix("s3://") + "/run", recursive=True)
    return fs, bucket, local


def test_loader_builds_the_same_batches_from_s3_as_from_disk(s3) -> None:
    fs, bucket, local = s3
    remote = open_patch_index(bucket + "/run")
    here = open_patch_index(local)
    assert remote.root == bucket + "/run/patch"
    assert [s.samples for s in remote.shards] == [s.samples for s in here.shards]
    a = PretrainBatches(remote, DEGRADE, batch=3, seed=5, streams=2, val_samples=2)
    b = PretrainBatches(here, DEGRADE, batch=3, seed=5, streams=2, val_samples=2)
    for step in (0, 1, 7):
        x, y = a.make_batch(step), b.make_batch(step)
        assert all(torch.equal(x[k], y[k]) for k in y), step
    va, vb = (validation_set(i, DEGRADE, 2, seed=5) for i in (remote, here))
    assert torch.equal(va["input"], vb["input"])


def test_newer_manifest_in_the_bucket_is_refused(s3) -> None:
    fs, bucket, local = s3
    run, newer = bucket.removeprefix("s3://") + "/run", bucket.removeprefix("s3://") + "/newer"
    name = next(p for p in fs.find(run + "/patch") if p.endswith(".parquet"))
    fs.copy(run, newer, recursive=True)
    newer_name = name.replace(run + "/", newer + "/", 1)
    with fs.open(newer_name, "rb") as f:
        table = pq.read_table(f)
    meta = dict(table.schema.metadata) | {b"curate.schema_version": b"99"}
    with fs.open(newer_name, "wb") as f:
        pq.write_table(table.replace_schema_metadata(meta), f)
    with pytest.raises(ManifestError, match="newer than this curate"):
        open_patch_index(bucket + "/newer/patch/index.json")
