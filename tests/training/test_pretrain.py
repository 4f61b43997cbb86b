"""Dynamic pretraining loop: it learns, resumes exactly, and its checkpoints serve both variants."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training.patch_run import make_patch_run
from training import checkpoint as ckpt_io
from training.pretrain import PretrainConfig, pretrain, variant_for_step

pytestmark = pytest.mark.timeout(300)

SMALL = dict(preset="tiny", batch=2, crop=32, workers=0, val_samples=2, progress="off")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """Ten 64 px patches in two shards: enough for streams, validation and a few epochs."""
    run = tmp_path_factory.mktemp("pretrain") / "run"
    make_patch_run(run, shards=(5, 5), size=64)
    return run


def train_records(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "train"]


def config(run: Path, out: Path, **kw) -> PretrainConfig:
    return PretrainConfig(data=str(run), out=str(out), **(SMALL | kw))


def test_tiny_model_overfits_a_handful_of_patches(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_patch_run(run, shards=(4,), size=64)
    cfg = config(run, tmp_path / "out", steps=60, batch=4, lr=2e-3, val_samples=0, log_every=10)
    summary = pretrain(cfg, log=lambda _: None)
    losses = [r["loss"] for r in train_records(tmp_path / "out")]
    assert len(losses) == 60 and summary["updates"]["L"] + summary["updates"]["S"] == 60
    first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
    assert last < 0.6 * first, (first, last)
    # Both variants were trained from the one set of weights.
    assert summary["updates"]["L"] > 10 and summary["updates"]["S"] > 10


def test_resume_after_a_crash_continues_exactly(run: Path, tmp_path: Path, monkeypatch) -> None:
    straight = tmp_path / "straight"
    pretrain(config(run, straight, steps=6, latest_every=3, log_every=1), log=lambda _: None)

    # The same run dies while building the batch of step 5 (after logging steps 1-4, with
    # latest.pt at step 3), then resumes: records past the checkpoint are replaced.
    crashed = tmp_path / "crashed"
    from training.data import PretrainBatches

    original = PretrainBatches.make_batch

    def dying(self, step):
        if step == 4:
            raise KeyboardInterrupt("simulated kill")
        return original(self, step)

    monkeypatch.setattr(PretrainBatches, "make_batch", dying)
    with pytest.raises(KeyboardInterrupt):
        pretrain(config(run, crashed, steps=6, latest_every=3, log_every=1), log=lambda _: None)
    assert [r["step"] for r in train_records(crashed)] == [1, 2, 3, 4]
    assert torch.load(crashed / "latest.pt", weights_only=True)["step"] == 3
    monkeypatch.setattr(PretrainBatches, "make_batch", original)

    summary = pretrain(
        config(run, crashed, steps=6, latest_every=3, log_every=1, resume=True), log=lambda _: None
    )
    assert summary["start_step"] == 3
    a, b = train_records(straight), train_records(crashed)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b]
    sa = torch.load(straight / "latest.pt", weights_only=True)
    sb = torch.load(crashed / "latest.pt", weights_only=True)
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
    assert sa["counts"] == sb["counts"] and sa["step"] == sb["step"] == 6


def test_checkpoint_serves_the_other_variant(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "only_s"
    summary = pretrain(config(run, out, steps=3, variants="S"), log=lambda _: None)
    assert summary["updates"] == {"L": 0, "S": 3}
    model, ckpt = ckpt_io.load_dynet(out / "latest.pt")
    assert ckpt["train_config"]["variants"] == "S" and not model.training
    x = torch.rand(1, 3, 40, 24)  # not a multiple of 8: padded and cropped back by the model
    with torch.no_grad():
        large, small = model(x, variant="L"), model(x, variant="S")
    assert large.shape == small.shape == x.shape
    assert not torch.allclose(large, small)  # L reuses the blocks more often than S


def test_variant_draw_is_seeded_and_follows_the_probability() -> None:
    draws = [variant_for_step(0, k, "LS", 0.5) for k in range(2000)]
    assert draws == [variant_for_step(0, k, "LS", 0.5) for k in range(2000)]
    assert 900 < draws.count("L") < 1100
    assert {variant_for_step(0, k, "LS", 1.0) for k in range(50)} == {"L"}
    assert {variant_for_step(3, k, "S", 0.5) for k in range(50)} == {"S"}


def test_checkpoint_of_another_architecture_or_format_is_refused(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    pretrain(config(run, out, steps=1), log=lambda _: None)
    with pytest.raises(ckpt_io.CheckpointError, match="different DyNet architecture"):
        pretrain(config(run, out, steps=2, preset="large", resume=True), log=lambda _: None)
    (tmp_path / "other.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt_io.CheckpointError, match="not a readable checkpoint"):
        pretrain(config(run, out, steps=2, resume=str(tmp_path / "other.pt")), log=lambda _: None)
    with pytest.raises(ckpt_io.CheckpointError, match="no checkpoint here"):
        pretrain(config(run, tmp_path / "fresh", steps=2, resume=True), log=lambda _: None)


def test_interrupted_save_keeps_the_previous_latest(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "latest.pt"
    ckpt_io.save_atomic({"format": ckpt_io.FORMAT, "version": 1, "step": 1}, path)

    def half_then_die(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_io.torch, "save", half_then_die)
    with pytest.raises(OSError, match="disk full"):
        ckpt_io.save_atomic({"format": ckpt_io.FORMAT, "version": 1, "step": 2}, path)
    assert ckpt_io.load(path)["step"] == 1
    assert os.listdir(tmp_path) == ["latest.pt"]  # no temp file left behind


def test_bad_settings_are_refused_before_training(tmp_path: Path) -> None:
    for kw, message in [
        ({"variants": "M"}, "variants"),
        ({"prob_large": 1.5}, "prob_large"),
        ({"crop": 30}, "multiple of mask_patch"),
        ({"preset": "huge"}, "unknown DyNet preset"),
    ]:
        with pytest.raises(ValueError, match=message):
            config(tmp_path, tmp_path / "out", steps=1, **kw)


def curate(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("curate")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=240)


def test_cli_pretrains_resumes_and_explains_bad_input(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    common = ["train", "dynet", "--data", str(run), "--out", str(out), "--preset", "tiny"]
    common += ["--batch", "2", "--crop", "32", "--workers", "0", "--val-samples", "2"]
    first = curate(*common, "--steps", "2", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["steps"] == 2
    second = curate(*common, "--steps", "3", "--resume", "--json", "--progress", "print")
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    assert summary["start_step"] == 2 and summary["steps"] == 3
    assert "resuming from step 2" in second.stderr

    (tmp_path / "empty").mkdir()
    bad = curate("train", "dynet", "--data", str(tmp_path / "empty"), "--out", str(out))
    assert bad.returncode == 2 and "no patch/index.json" in bad.stderr
    assert "Traceback" not in bad.stderr
    later = curate("train", "dynet", "--stage", "finetune", "--data", str(run))
    assert later.returncode == 1 and "not available yet" in later.stderr


def test_two_ranks_under_torchrun_train_one_model(run: Path, tmp_path: Path) -> None:
    # DDP on CPU (gloo): the same code path as multi-GPU, with the batch split across ranks.
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    with socket.socket() as sock:  # a free loopback port for the ranks' rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [str(torchrun), "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}"]
    cmd += ["-m", "curation.cli", "train", "dynet", "--data", str(run), "--out", str(out)]
    cmd += ["--preset", "tiny", "--steps", "2", "--batch", "4", "--crop", "32", "--workers", "0"]
    cmd += ["--val-samples", "2", "--progress", "off"]
    env = os.environ | {"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = ckpt_io.load(out / "latest.pt")
    assert ckpt["step"] == 2 and ckpt["data"]["world_size"] == 2 and ckpt["data"]["rank_batch"] == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])  # the bare model is saved
    assert len(train_records(out)) == 2  # rank 0 alone writes the metrics
