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
moto_server = pytest.importorskip("moto.server")

pytestmark = pytest.mark.timeout(120)
DEGRADE = DegradeConfig(crop=32)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3 endpoint on loopback with a bucket holding a copy of a local patch run."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        local = tmp_path_factory.mktemp("s3") / "run"
        make_patch_run(local, shards=(4, 3, 5), size=64)
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir("runs")
        fs.put(str(local), "runs/run", recursive=True)
        yield fs, local
    server.stop()


def test_loader_builds_the_same_batches_from_s3_as_from_disk(s3) -> None:
    fs, local = s3
    remote = open_patch_index("s3://runs/run")
    here = open_patch_index(local)
    assert remote.root == "s3://runs/run/patch"
    assert [s.samples for s in remote.shards] == [s.samples for s in here.shards]
    a = PretrainBatches(remote, DEGRADE, batch=3, seed=5, streams=2, val_samples=2)
    b = PretrainBatches(here, DEGRADE, batch=3, seed=5, streams=2, val_samples=2)
    for step in (0, 1, 7):
        x, y = a.make_batch(step), b.make_batch(step)
        assert all(torch.equal(x[k], y[k]) for k in y), step
    va, vb = (validation_set(i, DEGRADE, 2, seed=5) for i in (remote, here))
    assert torch.equal(va["input"], vb["input"])


def test_newer_manifest_in_the_bucket_is_refused(s3) -> None:
    fs, local = s3
    name = next(p for p in fs.find("runs/run/patch") if p.endswith(".parquet"))
    fs.copy("runs/run", "runs/newer", recursive=True)
    newer = name.replace("runs/run/", "runs/newer/", 1)
    with fs.open(newer, "rb") as f:
        table = pq.read_table(f)
    meta = dict(table.schema.metadata) | {b"curate.schema_version": b"99"}
    with fs.open(newer, "wb") as f:
        pq.write_table(table.replace_schema_metadata(meta), f)
    with pytest.raises(ManifestError, match="newer than this curate"):
        open_patch_index("s3://runs/newer/patch/index.json")
