"""Metric registry, offline loading and scoring, with the real pyiqa (no network)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from curation.decode import decode_image
from curation.metrics.loader import (
    VENDORED_WEIGHTS_DIR,
    MetricSet,
    MissingWeightsError,
    ScoringError,
    load_metric,
)
from curation.metrics.registry import METRICS, UnknownMetricError, parse_metrics
from curation.scoring import score_files
from tests.nima import make_random_nima_checkpoint

# pyiqa's reference rows `niqe(ours)` and `brisque(ours)` from its
# ResultsCalibra/calibration_summary.csv (copy in ../shared/iqa-weights/).
CALIBRATION_IMAGES = ("I03.bmp", "I04.bmp", "I06.bmp", "I08.bmp", "I19.bmp")
REFERENCE = {
    "niqe": [15.6538, 3.6549, 3.2342, 3.1922, 9.0722],
    "brisque": [94.6443, -0.1068, 1.0732, 5.1447, 66.8415],
}
# pyiqa's own test tolerance for these metrics.
RTOL = {"niqe": 6e-2, "brisque": 8e-2}
ATOL = 1e-2

VENDORED_SHA256 = {
    "niqe_modelparameters.mat": "2843a5881fde105ebdef9e0352a73db137d9cdc37789dee634e01f9b0463174f",
    "brisque_svm_weights.pth": "e69ee3209300741be38f0c0a5d6f08453d30966fa7a436febeef61d7b31e206e",
}


def textured(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Deterministic non-flat RGB uint8 image."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = 127 + 60 * np.sin(x / (7.0 + seed)) * np.cos(y / 11.0)
    img = base[..., None] + rng.normal(0, 20, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def calibration_dir() -> Path:
    """The calibration images the pyiqa 0.1.16 wheel installs next to the package."""
    import pyiqa

    return Path(pyiqa.__file__).resolve().parent.parent / "ResultsCalibra" / "dist_dir"


@pytest.fixture(scope="module")
def niqe_brisque() -> MetricSet:
    return MetricSet("niqe,brisque", device="cpu")


def _refuse_network(*args, **kwargs):
    raise OSError("network access attempted during an offline test")


@pytest.fixture(scope="module")
def nima_checkpoint(tmp_path_factory) -> Path:
    """A full NIMA checkpoint (backbone + head) with seeded random weights, as pyiqa reads it."""
    return make_random_nima_checkpoint(tmp_path_factory.mktemp("nima") / "nima_random.pth")


@pytest.fixture(scope="module")
def nima(nima_checkpoint) -> MetricSet:
    """NIMA loaded with every socket connection refused and the Hub offline."""
    import timm

    create_model = timm.create_model
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", _refuse_network)
        mp.setattr(socket, "create_connection", _refuse_network)
        metric_set = MetricSet("nima", device="cpu", nima_checkpoint=nima_checkpoint)
    assert timm.create_model is create_model  # the construction-time patch is undone
    return metric_set


# --- registry -----------------------------------------------------------------------------


def test_parse_metrics_keeps_order_and_drops_duplicates():
    assert [s.name for s in parse_metrics(" NIQE, brisque,nima,niqe ")] == [
        "niqe",
        "brisque",
        "nima",
    ]
    assert [s.name for s in parse_metrics(["nima"])] == ["nima"]


@pytest.mark.parametrize("value", ["niqe,musiq,foo", "", " , "])
def test_parse_metrics_rejects_unknown_or_empty(value):
    with pytest.raises(UnknownMetricError) as err:
        parse_metrics(value)
    assert "known metrics: niqe, brisque, nima" in str(err.value)
    if "foo" in value:
        assert "'musiq'" in str(err.value) and "'foo'" in str(err.value)


def test_registry_metadata():
    assert METRICS["niqe"].lower_better and METRICS["brisque"].lower_better
    assert not METRICS["nima"].lower_better
    assert METRICS["niqe"].min_side == 96
    assert METRICS["nima"].weights_file == "NIMA_InceptionV2_ava-b0c77c00.pth"


def test_registry_import_stays_light():
    code = "import sys, curation.metrics.registry; print(sorted({'torch', 'pyiqa'} & set(sys.modules)))"
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo
    )
    assert out.stdout.strip() == "[]"


def test_vendored_weights_match_provenance():
    for name, sha in VENDORED_SHA256.items():
        assert hashlib.sha256((VENDORED_WEIGHTS_DIR / name).read_bytes()).hexdigest() == sha
    assert (VENDORED_WEIGHTS_DIR / "PROVENANCE.md").is_file()


# --- NIQE / BRISQUE -----------------------------------------------------------------------


def test_niqe_brisque_match_pyiqa_calibration(niqe_brisque):
    folder = calibration_dir()
    if not folder.is_dir():
        pytest.skip(f"pyiqa's calibration images are not installed at {folder}")
    scores = [
        niqe_brisque.score(decode_image((folder / f).read_bytes(), max_pixels=10**7).rgb)
        for f in CALIBRATION_IMAGES
    ]
    for metric, reference in REFERENCE.items():
        measured = [s[metric] for s in scores]
        print(metric, "measured", np.round(measured, 4).tolist(), "reference", reference)
        np.testing.assert_allclose(measured, reference, rtol=RTOL[metric], atol=ATOL)


def test_load_metric_keeps_stdout_clean_and_hub_offline(capfd):
    load_metric("brisque", device="cpu")
    assert capfd.readouterr().out == ""  # pyiqa's "Loading pretrained model" goes to stderr
    import huggingface_hub.constants

    assert os.environ["HF_HUB_OFFLINE"] == "1" and huggingface_hub.constants.HF_HUB_OFFLINE


def test_too_small_for_niqe_is_a_typed_error(niqe_brisque):
    with pytest.raises(ScoringError) as err:
        niqe_brisque.score(textured(95, 300))
    assert err.value.reason == "niqe_input_too_small"
    assert set(niqe_brisque.score(textured(96, 100))) == {"niqe", "brisque"}


def test_flat_image_is_a_typed_error(niqe_brisque):
    with pytest.raises(ScoringError) as err:
        niqe_brisque.score(np.full((128, 128, 3), 128, np.uint8))
    assert err.value.reason in {"niqe_failed", "niqe_not_finite"}


def test_score_batch_keeps_order_and_reports_failures_per_image(niqe_brisque):
    images = [textured(128, 128, 1), textured(64, 64, 2), textured(128, 128, 3)]
    results = niqe_brisque.score_batch(images)
    assert isinstance(results[1], ScoringError) and results[1].reason == "niqe_input_too_small"
    for i in (0, 2):
        assert results[i] == niqe_brisque.score(images[i])


def test_score_files_records_scores_and_reasons(niqe_brisque, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(textured(120, 160)).save(good)
    tiny = tmp_path / "tiny.png"
    Image.fromarray(textured(50, 50)).save(tiny)
    html = tmp_path / "page.jpg"
    html.write_bytes(b"<html><body>moved</body></html>")
    missing = tmp_path / "missing.jpg"

    records = score_files([good, tiny, html, missing], niqe_brisque)
    json.dumps(records)  # JSON-ready for `curate score --json`
    by_name = {Path(r["path"]).name: r for r in records}
    assert [Path(r["path"]).name for r in records] == [
        "good.png",
        "tiny.png",
        "page.jpg",
        "missing.jpg",
    ]
    assert by_name["good.png"]["width"] == 160 and by_name["good.png"]["height"] == 120
    assert set(by_name["good.png"]["scores"]) == {"niqe", "brisque"}
    assert by_name["tiny.png"]["reason"] == "niqe_input_too_small"
    assert by_name["page.jpg"]["reason"] == "decode_error"
    assert by_name["missing.jpg"]["reason"] == "read_error"


# --- NIMA (random weights: the real AVA checkpoint is not available offline) ---------------


def test_nima_scores_are_deterministic_and_batch_invariant(nima, monkeypatch):
    images = [textured(48, 64, seed) for seed in range(3)] + [np.full((48, 64, 3), 200, np.uint8)]
    first = [nima.score(im)["nima"] for im in images]
    again = [nima.score(im)["nima"] for im in images]
    assert first == again
    assert all(1.0 <= s <= 10.0 for s in first)  # expectation of a 1..10 distribution
    assert len(set(first)) > 1

    monkeypatch.setattr(nima, "max_batch", 4)  # exercise the real batched forward on CPU
    batched = [r["nima"] for r in nima.score_batch(images)]
    np.testing.assert_allclose(batched, first, rtol=0, atol=1e-5)


def test_missing_nima_checkpoint_explains_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("CURATE_IQA_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no pyiqa download cache
    with pytest.raises(MissingWeightsError) as err:
        MetricSet("niqe,brisque,nima", device="cpu")
    message = str(err.value)
    assert "NIMA_InceptionV2_ava-b0c77c00.pth" in message
    assert str(tmp_path / "weights") in message and "CURATE_IQA_WEIGHTS" in message
    assert "--metrics niqe,brisque" in message and "--allow-download" in message

    absent = tmp_path / "nope.pth"
    with pytest.raises(MissingWeightsError, match="nope.pth"):
        load_metric("nima", device="cpu", nima_checkpoint=absent)


# --- GPU ----------------------------------------------------------------------------------


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
def test_cuda_scores_match_cpu(niqe_brisque, nima_checkpoint):
    if not _has_cuda():
        pytest.skip("needs a CUDA device")
    images = [textured(384, 512, seed) for seed in range(3)]
    cpu_nima = MetricSet("nima", device="cpu", nima_checkpoint=nima_checkpoint)
    cuda = MetricSet("niqe,brisque,nima", device="cuda", nima_checkpoint=nima_checkpoint)
    for image, on_cuda in zip(images, cuda.score_batch(images), strict=True):
        assert not isinstance(on_cuda, ScoringError), on_cuda
        on_cpu = niqe_brisque.score(image) | cpu_nima.score(image)
        for name, value in on_cpu.items():
            np.testing.assert_allclose(on_cuda[name], value, rtol=1e-3, atol=1e-2, err_msg=name)
