"""Pretraining inputs: exact areas on the cell grid, each degradation, masking, seeds, the loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.degrade import (
    KINDS,
    DegradeConfig,
    build_pretraining_sample,
    cell_layout,
    degrade,
    jpeg,
    make_rng,
    masked_l1,
    random_crop,
)

pytestmark = pytest.mark.timeout(60)


def textured(size: int = 160, seed: int = 0) -> np.ndarray:
    """A smooth colour gradient plus fine texture: JPEG and noise visibly change every cell."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = np.stack([200 * xx, 200 * yy, 100 + 80 * np.sin(6 * xx + 4 * yy)], axis=-1)
    img = base + rng.normal(0, 20, base.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def only(kind: str, **kw) -> DegradeConfig:
    return DegradeConfig(kinds=(kind,), kind_weights=(1.0,), **kw)


def cells(pixels: np.ndarray, cell: int = 8) -> np.ndarray:
    """Per-cell view (gy, gx, cell, cell, ...) of a (H, W, ...) array."""
    h, w = pixels.shape[:2]
    v = pixels.reshape(h // cell, cell, w // cell, cell, *pixels.shape[2:])
    return np.moveaxis(v, 2, 1)


def test_defaults_follow_the_paper():
    cfg = DegradeConfig()
    assert (cfg.crop, cfg.mask_patch, cfg.degrade_fraction, cfg.mask_ratio) == (128, 8, 0.5, 0.3)
    assert (cfg.n_cells, cfg.n_degraded, cfg.n_masked) == (256, 128, 77)
    assert set(cfg.kinds) == set(KINDS) and len(set(cfg.kind_weights)) == 1
    assert DegradeConfig.from_dict(cfg.to_dict()) == cfg
    as_lists = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.to_dict().items()}
    assert DegradeConfig.from_dict(as_lists) == cfg


@pytest.mark.parametrize(
    "bad",
    [
        {"crop": 100},
        {"mask_ratio": 0.6},
        {"degrade_fraction": -0.1},
        {"jpeg_quality": (60, 10)},
        {"jpeg_quality": (0, 50)},
        {"impulse_prob": (0.0, 1.5)},
        {"kinds": ("blur",), "kind_weights": (1.0,)},
        {"kind_weights": (1.0, 1.0)},
        {"kind_weights": (0.0, 0.0, 0.0)},
        {"mask_fill": 2.0},
    ],
)
def test_bad_configs_are_refused(bad):
    with pytest.raises(ValueError):
        DegradeConfig(**bad)


def test_areas_are_exact_on_the_grid_and_disjoint():
    cfg = DegradeConfig()
    for i in range(5):
        s = build_pretraining_sample(textured(), cfg, make_rng(0, i, 0, 0))
        mask, degraded = s["mask"], s["degraded"]
        assert mask.shape == degraded.shape == (128, 128)
        assert mask.dtype == degraded.dtype == np.bool_
        assert not (mask & degraded).any()
        assert degraded.sum() == 128 * 64 and mask.sum() == 77 * 64
        assert degraded.mean() == 0.5 and abs(mask.mean() - 0.3) < 0.01
        for m in (mask, degraded):  # unions of whole 8x8 cells
            c = cells(m)
            assert (c.all(axis=(2, 3)) == c.any(axis=(2, 3))).all()


def test_cell_layout_counts_for_other_grids():
    cfg = DegradeConfig(crop=64, mask_patch=16, degrade_fraction=0.25, mask_ratio=0.5)
    masked, degraded = cell_layout(cfg, np.random.default_rng(0))
    assert masked.shape == (4, 4) and masked.sum() == 8 and degraded.sum() == 4
    assert not (masked & degraded).any()


def test_shapes_ranges_and_clean_remainder():
    for i, kind in enumerate(KINDS):
        s = build_pretraining_sample(textured(), only(kind, mask_fill=0.25), make_rng(1, i, 0, 0))
        inp, tgt = s["input"], s["target"]
        assert inp.shape == tgt.shape == (3, 128, 128)
        assert inp.dtype == tgt.dtype == np.float32
        assert inp.flags.c_contiguous and tgt.flags.c_contiguous
        assert inp.min() >= 0 and inp.max() <= 1 and tgt.min() >= 0 and tgt.max() <= 1
        assert s["kind"] == kind
        clean = ~(s["mask"] | s["degraded"])
        assert np.array_equal(inp[:, clean], tgt[:, clean])
        assert (inp[:, s["mask"]] == 0.25).all()


def coordinates(size: int) -> np.ndarray:
    """Pixel (y, x) holds (y, x, 0): a crop's first pixel tells where it was cut."""
    yy, xx = np.mgrid[0:size, 0:size]
    return np.stack([yy, xx, np.zeros_like(yy)], axis=-1).astype(np.uint8)


def test_target_is_a_crop_of_the_patch():
    patch = coordinates(200)
    s = build_pretraining_sample(patch, DegradeConfig(), make_rng(0, 0, 0, 0))
    tgt = np.rint(s["target"].transpose(1, 2, 0) * 255).astype(np.uint8)
    y, x = tgt[0, 0, :2]
    assert np.array_equal(tgt, patch[y : y + 128, x : x + 128])


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_changes_every_degraded_cell_and_nothing_else(kind):
    cfg = only(kind)
    patch = textured()
    for i in range(3):
        s = build_pretraining_sample(patch, cfg, make_rng(2, i, 0, 0))
        assert s["kind"] == kind
        diff = np.abs(s["input"] - s["target"]).transpose(1, 2, 0)  # HWC
        per_cell = cells(diff).mean(axis=(2, 3, 4))
        deg_cells = cells(s["degraded"]).all(axis=(2, 3))
        clean_cells = ~cells(s["mask"] | s["degraded"]).any(axis=(2, 3))
        assert (per_cell[deg_cells] > 0).all()
        assert (per_cell[clean_cells] == 0).all()
        assert per_cell[deg_cells].mean() > 1 / 255


def test_mixed_kinds_all_occur_with_default_weights():
    cfg = DegradeConfig(crop=16)
    rng = make_rng(3, 0, 0, 0)
    kinds = [build_pretraining_sample(textured(16), cfg, rng)["kind"] for _ in range(150)]
    counts = {k: kinds.count(k) for k in KINDS}
    assert all(c > 25 for c in counts.values()), counts


@pytest.mark.parametrize(
    "kind, weak, strong",
    [
        ("jpeg", {"jpeg_quality": (60, 60)}, {"jpeg_quality": (10, 10)}),
        ("gaussian", {"gaussian_sigma": (5, 5)}, {"gaussian_sigma": (50, 50)}),
        ("random", {"uniform_amplitude": (5, 5)}, {"uniform_amplitude": (50, 50)}),
        ("random", {"impulse_prob": (0.0, 0.0)}, {"impulse_prob": (0.3, 0.3)}),
    ],
)
def test_levels_set_the_strength(kind, weak, strong):
    clean = textured(128)

    def error(kw: dict) -> float:
        out = degrade(clean, kind, DegradeConfig(**kw), np.random.default_rng(0))
        assert out.dtype == np.uint8 and out.shape == clean.shape
        return float(np.abs(out.astype(float) - clean).mean())

    assert 0 < error(weak) < error(strong)


def test_jpeg_keeps_colour_order_and_grey_images():
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 200
    out = jpeg(red, 90)
    assert out.shape == red.shape and np.abs(out.astype(int) - red).max() <= 3
    grey = textured(32)[..., :1]
    assert jpeg(grey, 30).shape == grey.shape
    s = build_pretraining_sample(grey, DegradeConfig(crop=32), make_rng(0, 0, 0, 0))
    assert s["input"].shape == (1, 32, 32)


def test_unknown_kind_and_bad_patches_are_refused():
    with pytest.raises(ValueError):
        degrade(textured(16), "blur", DegradeConfig(), np.random.default_rng(0))
    with pytest.raises(ValueError):
        build_pretraining_sample(textured(64), DegradeConfig(), make_rng(0, 0, 0, 0))
    with pytest.raises(ValueError):
        build_pretraining_sample(
            textured(128).astype(np.float32), DegradeConfig(), make_rng(0, 0, 0, 0)
        )


def test_random_crop():
    patch = coordinates(40)
    rng = np.random.default_rng(0)
    corners = set()
    for _ in range(50):
        c = random_crop(patch, 32, rng)
        assert c.shape == (32, 32, 3) and c.flags.c_contiguous
        y, x = c[0, 0, :2]
        assert np.array_equal(c, patch[y : y + 32, x : x + 32])
        corners.add((y, x))
    assert len(corners) > 20
    assert np.array_equal(random_crop(patch, 40, rng), patch)
    with pytest.raises(ValueError):
        random_crop(patch, 41, rng)


def test_same_seed_step_rank_worker_rebuild_the_same_batch():
    patch, cfg = textured(), DegradeConfig()

    def batch(seed, step, rank, worker):
        rng = make_rng(seed, step, rank, worker)
        return [build_pretraining_sample(patch, cfg, rng) for _ in range(4)]

    def same(a, b):
        return all(
            x["kind"] == y["kind"]
            and all(np.array_equal(x[k], y[k]) for k in ("input", "target", "mask", "degraded"))
            for x, y in zip(a, b, strict=True)
        )

    ref = batch(7, 3, 1, 2)
    assert same(ref, batch(7, 3, 1, 2))
    for other in [(7, 3, 1, 3), (7, 3, 0, 2), (7, 4, 1, 2), (8, 3, 1, 2)]:
        assert not same(ref, batch(*other)), other
    with pytest.raises(ValueError):
        make_rng(0, -1, 0, 0)


def test_masked_l1_splits_masked_and_unmasked():
    target = torch.zeros(2, 3, 4, 4)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, :2] = True  # top half of every image
    output = torch.where(mask.unsqueeze(1), 1.0, 0.25).expand(2, 3, 4, 4).clone()
    output.requires_grad_(True)
    loss = masked_l1(output, target, mask)
    assert loss.masked.item() == pytest.approx(1.0)
    assert loss.unmasked.item() == pytest.approx(0.25)
    assert loss.total.item() == pytest.approx(0.625)
    loss.total.backward()
    assert output.grad is not None and output.grad.abs().sum() > 0

    empty = masked_l1(output.detach(), target, torch.zeros(2, 4, 4, dtype=torch.bool))
    assert empty.masked.item() == 0 and empty.unmasked.item() == pytest.approx(0.625)


def test_masked_l1_on_a_collated_batch():
    cfg = DegradeConfig(crop=32)
    rng = make_rng(0, 0, 0, 0)
    samples = [build_pretraining_sample(textured(48), cfg, rng) for _ in range(3)]
    batch = torch.utils.data.default_collate(samples)
    assert batch["input"].shape == (3, 3, 32, 32) and batch["mask"].dtype == torch.bool
    split = masked_l1(batch["input"], batch["target"], batch["mask"])
    diff = (batch["input"] - batch["target"]).abs()
    m = batch["mask"].unsqueeze(1).expand_as(diff)
    assert split.masked.item() == pytest.approx(diff[m].mean().item())
    assert split.unmasked.item() == pytest.approx(diff[~m].mean().item())
    assert split.total.item() == pytest.approx(diff.mean().item())
