"""Pretraining loader: run checks, batch contents, the stream split, bad samples, reproducibility."""

from __future__ import annotations

import itertools
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from manifests import ManifestError
from tests.training.patch_run import make_patch_run
from training.data import (
    PatchDataError,
    PretrainBatches,
    ShardReader,
    StreamLayout,
    decode_rgb,
    make_loader,
    open_patch_index,
    validation_set,
)
from training.degrade import DegradeConfig, build_pretraining_sample, make_rng

pytestmark = pytest.mark.timeout(60)

CROP = 32
DEGRADE = DegradeConfig(crop=CROP)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """Three shards of 4, 3 and 5 patches (12 in all) in two parts."""
    run = tmp_path_factory.mktemp("data") / "run"
    make_patch_run(run, shards=(4, 3, 5))
    return run


def batches(run: Path, **kw) -> PretrainBatches:
    args = dict(degrade=DEGRADE, batch=3, seed=7, val_samples=2) | kw
    return PretrainBatches(open_patch_index(run), **args)


def test_index_is_read_from_run_patch_folder_or_file(run: Path) -> None:
    for where in (run, run / "patch", run / "patch" / "index.json"):
        index = open_patch_index(where)
        # Shards are listed sorted by path: 00000-000 (4), 00000-001 (5), 00001-000 (3).
        assert index.samples == 12 and [s.samples for s in index.shards] == [4, 5, 3]
        assert index.size == 512 and index.format == "png"
    assert index.locate(0) == (0, 0) and index.locate(4) == (1, 0) and index.locate(11) == (2, 2)


def test_batch_shapes_and_ranges(run: Path) -> None:
    ds = batches(run)
    b = ds[0]
    assert b["input"].shape == b["target"].shape == (3, 3, CROP, CROP)
    assert b["input"].dtype == b["target"].dtype == torch.float32
    assert (
        b["mask"].shape == b["degraded"].shape == (3, CROP, CROP) and b["mask"].dtype == torch.bool
    )
    for name in ("input", "target"):
        assert 0.0 <= b[name].min() and b[name].max() <= 1.0
    # Exact areas from the cell grid; masked pixels are black; clean cells equal the target.
    cell_px = DEGRADE.mask_patch**2
    assert (b["mask"].flatten(1).sum(1) == DEGRADE.n_masked * cell_px).all()
    assert (b["degraded"].flatten(1).sum(1) == DEGRADE.n_degraded * cell_px).all()
    assert (b["input"].permute(0, 2, 3, 1)[b["mask"]] == 0).all()
    clean = ~(b["mask"] | b["degraded"])
    assert torch.equal(
        b["input"].permute(0, 2, 3, 1)[clean], b["target"].permute(0, 2, 3, 1)[clean]
    )
    assert int(b["skipped"]) == 0 and ((0 <= b["index"]) & (b["index"] < 10)).all()


def test_batch_is_a_pure_function_of_seed_step_rank_worker(run: Path) -> None:
    ds = batches(run, streams=2, world_size=2, rank=1)
    step = 5  # stream (worker) 5 % 2 = 1 on rank 1
    got = ds.make_batch(step)
    # By hand: the step's sample numbers, then every crop/degradation from make_rng(...).
    rng = make_rng(7, step, 1, 1)
    reader = ShardReader(ds.index)
    for b, g in enumerate(ds.sample_numbers(step)):
        sample = build_pretraining_sample(decode_rgb(reader.read(int(g))[1]), DEGRADE, rng)
        assert np.array_equal(got["input"][b].numpy(), sample["input"])
        assert np.array_equal(got["mask"][b].numpy(), sample["mask"])
    again = batches(run, streams=2, world_size=2, rank=1).make_batch(step)
    assert all(torch.equal(got[k], again[k]) for k in got)
    for other in (
        ds.make_batch(step + 2),
        batches(run, seed=8, streams=2, world_size=2, rank=1)[5],
    ):
        assert not torch.equal(got["input"], other["input"])


def test_loader_workers_give_the_in_process_batches_from_any_step(run: Path) -> None:
    # The resume property: a loader started at step 3 with 2 workers yields exactly the batches
    # 3, 4, 5, 6 that the dataset builds in this process (workers serve steps in order).
    ds = batches(run, streams=2)
    loader = make_loader(ds, start_step=3, workers=2)
    it = iter(loader)
    got = [next(it) for _ in range(4)]
    del it
    for step, b in zip(range(3, 7), got, strict=True):
        expected = ds.make_batch(step)
        assert all(torch.equal(b[k], expected[k]) for k in expected), step


def test_streams_split_every_training_sample_once_per_epoch(run: Path) -> None:
    layout = StreamLayout(train=10, world_size=2, streams=2)
    ranges = [layout.range(r, w) for r in range(2) for w in range(2)]
    assert ranges[0][0] == 0 and ranges[-1][1] == 10
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))  # contiguous, disjoint

    seen: list[int] = []
    index = open_patch_index(run)
    for rank in range(2):
        ds = PretrainBatches(index, DEGRADE, 1, 7, rank, 2, 2, val_samples=2)
        for w in range(2):
            start, stop = ds.stream_range(w)
            # The stream's batches are steps w, w + streams, ...; one epoch = a permutation.
            epoch = [int(ds.sample_numbers(j * 2 + w)[0]) for j in range(stop - start)]
            assert sorted(epoch) == list(range(start, stop))
            nxt = [
                int(ds.sample_numbers(j * 2 + w)[0])
                for j in range(stop - start, 2 * (stop - start))
            ]
            assert sorted(nxt) == list(range(start, stop))
            seen += epoch
    assert sorted(seen) == list(range(10))  # every training patch, once, across ranks x workers
    assert {index.locate(g)[0] for g in seen} == {0, 1, 2}  # every shard is read
    assert not set(seen) & {10, 11}  # the validation patches never train


def test_validation_set_is_the_held_out_tail_and_fixed(run: Path) -> None:
    index = open_patch_index(run)
    a = validation_set(index, DEGRADE, 2, seed=7)
    b = validation_set(index, DEGRADE, 2, seed=7)
    assert a["input"].shape == (2, 3, CROP, CROP) and torch.equal(a["input"], b["input"])
    # The held-out patches are the last two of the last shard.
    reader = ShardReader(index)
    keys = [reader.read(g)[0] for g in (10, 11)]
    assert keys == [m[0] for m in reader.members(2)[1:]]


def test_corrupted_sample_is_skipped_and_counted(tmp_path: Path, caplog) -> None:
    make_patch_run(tmp_path / "run", shards=(3, 3), corrupt=frozenset({1}))
    ds = PretrainBatches(open_patch_index(tmp_path / "run"), DEGRADE, 2, 3, val_samples=0)
    skipped, used = 0, set()
    with caplog.at_level(logging.WARNING, logger="training.data"):
        for step in range(6):  # two epochs of 6 patches at batch 2: sample 1 is drawn twice
            b = ds.make_batch(step)
            skipped += int(b["skipped"])
            used |= set(b["index"].tolist())
            assert b["input"].shape[0] == 2
    assert skipped >= 2 and 1 not in used and used == {0, 2, 3, 4, 5}
    assert "skipping bad sample" in caplog.text


def test_missing_index_or_shards_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(PatchDataError, match="no patch/index.json"):
        open_patch_index(tmp_path / "empty")
    run = tmp_path / "run"
    make_patch_run(run, shards=(2,))
    index_path = run / "patch" / "index.json"
    index = json.loads(index_path.read_text())
    index_path.write_text(json.dumps(index | {"samples": 0, "shards": []}))
    with pytest.raises(PatchDataError, match="lists no shard"):
        open_patch_index(run)
    index_path.write_text(
        json.dumps(index | {"shards": [{"path": "gen/00000-000.tar", "samples": 3}]})
    )
    with pytest.raises(PatchDataError, match="stale"):
        open_patch_index(run)
    index_path.write_text(json.dumps(index))
    (run / "patch" / "gen" / "00000-000.tar").unlink()
    with pytest.raises(PatchDataError, match="does not exist"):
        open_patch_index(run)
    with pytest.raises(PatchDataError, match="pipe:"):
        open_patch_index("pipe:cat run/patch/index.json")


def test_newer_manifest_version_surfaces_as_manifest_error(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_patch_run(run, shards=(2,))
    path = next((run / "patch").rglob("*.parquet"))
    table = pq.read_table(path)
    meta = dict(table.schema.metadata) | {b"curate.schema_version": b"99"}
    pq.write_table(table.replace_schema_metadata(meta), path)
    with pytest.raises(ManifestError, match="newer than this curate"):
        open_patch_index(run)


def test_crop_larger_than_patches_and_too_few_patches_are_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_patch_run(run, shards=(3,), size=64)
    index = open_patch_index(run)
    with pytest.raises(PatchDataError, match="larger than the 64 px"):
        PretrainBatches(index, DegradeConfig(crop=128), 2, 0)
    with pytest.raises(PatchDataError, match="too few"):
        PretrainBatches(index, DEGRADE, 2, 0, streams=2, val_samples=2)
    shutil.rmtree(run)
