"""Flat-region detector: synthetic cases with known answers, the 50% boundary, real photos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from curation.flatness import (
    DEFAULT_CELL,
    FlatnessConfig,
    cell_gradient_variance,
    flat_fraction,
    is_flat,
)
from curation.tiling import iter_tiles, tile_grid

PATCH = 512
CELLS = PATCH // DEFAULT_CELL  # cells per side of a default patch
REPO = Path(__file__).resolve().parents[2]
# The real photos sit beside the checkout (../shared) or, on a device copy, inside it.
PHOTOS = next(
    (p for p in (REPO.parent / "shared" / "photos", REPO / "shared" / "photos") if p.is_dir()),
    REPO.parent / "shared" / "photos",
)


def _solid(value: tuple[int, int, int] = (90, 140, 200)) -> np.ndarray:
    return np.broadcast_to(np.array(value, np.uint8), (PATCH, PATCH, 3)).copy()


def _noise(sigma: float, seed: int = 0, mean: float = 128.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    gray = rng.normal(mean, sigma, (PATCH, PATCH))
    return np.repeat(np.clip(np.rint(gray), 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def _cells_patch(textured: np.ndarray, cell: int = DEFAULT_CELL, seed: int = 0) -> np.ndarray:
    """A solid grey patch whose cells where ``textured`` is True hold strong noise.

    Each textured cell keeps a 1 px ring of the background colour, so the 3x3 Sobel of a flat
    neighbour never reaches the noise: each cell's answer is known exactly.
    """
    rng = np.random.default_rng(seed)
    gray = np.full((PATCH, PATCH), 128, np.uint8)
    for row, col in zip(*np.nonzero(textured), strict=True):
        y, x = row * cell, col * cell
        gray[y + 1 : y + cell - 1, x + 1 : x + cell - 1] = rng.integers(
            0, 256, (cell - 2, cell - 2), dtype=np.uint8
        )
    return np.repeat(gray[..., None], 3, axis=2)


def _mask_with_flat_cells(n_flat: int, seed: int = 0) -> np.ndarray:
    """A CELLS x CELLS textured-cell mask with exactly ``n_flat`` flat cells, scattered."""
    rng = np.random.default_rng(seed)
    textured = np.ones(CELLS * CELLS, bool)
    textured[rng.permutation(CELLS * CELLS)[:n_flat]] = False
    return textured.reshape(CELLS, CELLS)


# --- synthetic patches with a known answer ---------------------------------------------------


@pytest.mark.parametrize("value", [(0, 0, 0), (255, 255, 255), (90, 140, 200)])
def test_solid_colour_is_all_flat(value: tuple[int, int, int]) -> None:
    patch = _solid(value)
    assert flat_fraction(patch) == 1.0
    assert is_flat(patch)


def test_smooth_gradients_are_flat() -> None:
    # A constant slope gives a constant gradient magnitude: large mean, (near) zero variance.
    y, x = np.mgrid[0:PATCH, 0:PATCH].astype(np.float64)
    ramps = {
        "horizontal": x / (PATCH - 1) * 255,
        "diagonal": (x + y) / (2 * (PATCH - 1)) * 255,
        "steep": np.clip((x - 200) * 2.0, 0, 255),  # slope 2 levels / px, saturating both ends
        "smooth_wave": 128 + 60 * np.sin(2 * np.pi * x / PATCH) * np.cos(np.pi * y / PATCH),
    }
    for name, gray in ramps.items():
        rgb = np.stack([gray, 0.8 * gray + 20, 0.5 * gray + 60], axis=2)
        patch = np.rint(rgb).astype(np.uint8)
        assert flat_fraction(patch) == 1.0, name


def test_gaussian_noise_is_not_flat() -> None:
    patch = _noise(sigma=25)
    assert flat_fraction(patch) == 0.0
    assert not is_flat(patch)


def test_noise_level_where_cells_turn_textured() -> None:
    # Module docstring: white noise of std s gives a variance of about 5.1 s^2, so the default
    # threshold of 150 sits near s = 5.4 grey levels.
    assert flat_fraction(_noise(sigma=3)) == 1.0
    assert flat_fraction(_noise(sigma=9)) == 0.0
    variance = cell_gradient_variance(_noise(sigma=8, seed=1))
    assert np.median(variance) == pytest.approx(5.1 * 8**2, rel=0.1)


def test_a_single_edge_makes_only_its_cells_textured() -> None:
    patch = _solid((30, 30, 30))
    patch[:, 256:] = 200  # a step on the boundary between cell columns 7 and 8
    variance = cell_gradient_variance(patch)
    textured_cols = np.nonzero((variance >= 150).any(axis=0))[0]
    assert textured_cols.tolist() == [256 // DEFAULT_CELL - 1, 256 // DEFAULT_CELL]
    assert flat_fraction(patch) == 1 - 2 / CELLS


def test_flat_fraction_is_the_share_of_flat_cells() -> None:
    for seed in range(3):
        textured = np.random.default_rng(seed).random((CELLS, CELLS)) < 0.4
        expected = 1 - textured.mean()
        assert flat_fraction(_cells_patch(textured, seed=seed)) == expected


@pytest.mark.parametrize("cell", [8, 16, 64])
def test_other_cell_sizes(cell: int) -> None:
    n = PATCH // cell
    textured = np.zeros((n, n), bool)
    textured[: n // 4] = True  # the top quarter
    patch = _cells_patch(textured, cell=cell)
    assert cell_gradient_variance(patch, cell).shape == (n, n)
    assert flat_fraction(patch, cell=cell) == 0.75


def test_grayscale_input_matches_rgb() -> None:
    rgb = _noise(sigma=4, seed=3)
    assert flat_fraction(rgb[..., 0]) == flat_fraction(rgb)
    np.testing.assert_array_equal(cell_gradient_variance(rgb[..., 0]), cell_gradient_variance(rgb))


def test_input_is_read_as_rgb() -> None:
    # Noise in channel 0 only: as red it weighs 0.299 in the luma (std ~9: textured); misread
    # as blue it would weigh 0.114 (std ~3.4: flat).
    rng = np.random.default_rng(0)
    patch = _solid((128, 128, 128))
    patch[..., 0] = np.clip(rng.normal(128, 30, (PATCH, PATCH)), 0, 255).astype(np.uint8)
    assert flat_fraction(patch) == 0.0


# --- the keep / drop boundary at max_flat = 0.5 ------------------------------------------------


@pytest.mark.parametrize(
    "n_flat,dropped",
    [
        (CELLS * CELLS // 2 - 1, False),
        (CELLS * CELLS // 2, False),  # exactly 50% flat is kept
        (CELLS * CELLS // 2 + 1, True),  # one cell more is dropped
    ],
)
def test_boundary_at_half_flat(n_flat: int, dropped: bool) -> None:
    patch = _cells_patch(_mask_with_flat_cells(n_flat))
    assert flat_fraction(patch) == n_flat / (CELLS * CELLS)
    assert is_flat(patch) is dropped


def test_half_flat_half_textured_halves() -> None:
    textured = np.zeros((CELLS, CELLS), bool)
    textured[:, : CELLS // 2] = True  # left half textured, right half flat
    patch = _cells_patch(textured)
    assert flat_fraction(patch) == 0.5
    assert not is_flat(patch)
    textured[0, 0] = False  # one textured cell fewer: one flat cell too many
    assert is_flat(_cells_patch(textured))


def test_max_flat_is_configurable() -> None:
    patch = _cells_patch(_mask_with_flat_cells(CELLS * CELLS // 4 + 1))  # just over 25% flat
    assert not is_flat(patch)
    assert is_flat(patch, FlatnessConfig(max_flat=0.25))
    assert not is_flat(_solid(), FlatnessConfig(max_flat=1.0))  # 1.0 keeps everything
    assert is_flat(_noise(25), FlatnessConfig(threshold=1e9))  # every cell below: all flat


def test_a_cell_at_the_threshold_is_not_flat() -> None:
    # "Below" is strict: a solid patch has variance 0 in every cell, so threshold 0 finds none.
    assert flat_fraction(_solid(), threshold=0.0) == 0.0
    assert flat_fraction(_solid(), threshold=1e-6) == 1.0


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cell": 1},
        {"cell": 0},
        {"cell": 16.0},
        {"threshold": -1.0},
        {"threshold": float("nan")},
        {"max_flat": 1.5},
        {"max_flat": -0.1},
    ],
)
def test_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        FlatnessConfig(**kwargs)


def test_config_defaults_and_patch_check() -> None:
    config = FlatnessConfig()
    assert (config.cell, config.threshold, config.max_flat) == (DEFAULT_CELL, 150.0, 0.5)
    config.check_patch(512)
    with pytest.raises(ValueError, match="divide"):
        FlatnessConfig(cell=48).check_patch(512)


def test_cell_must_divide_the_patch() -> None:
    with pytest.raises(ValueError, match="divide"):
        flat_fraction(_solid()[:500, :500])
    with pytest.raises(ValueError, match="divide"):
        flat_fraction(_solid(), cell=48)


def test_rejects_other_dtypes_and_shapes() -> None:
    with pytest.raises(TypeError):
        flat_fraction(_solid().astype(np.float32))
    with pytest.raises(ValueError):
        flat_fraction(np.zeros((PATCH, PATCH, 4), np.uint8))


# --- real photographs --------------------------------------------------------------------------


def _photo_tiles(name: str) -> list[np.ndarray]:
    path = PHOTOS / name
    if not path.exists():
        pytest.skip(f"{path} not present (real photos live in ../shared/photos)")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return list(iter_tiles(rgb, tile_grid(*rgb.shape[:2])))


def test_textured_photo_keeps_every_patch() -> None:
    # Pine cones filling the frame: texture everywhere (observed flat fractions 0.07 to 0.22).
    tiles = _photo_tiles("la-partida-eterna-3jyGw513OP8-unsplash.jpg")
    assert len(tiles) == 35
    fractions = [flat_fraction(t) for t in tiles]
    assert max(fractions) < 0.35
    assert not any(is_flat(t) for t in tiles)


def test_photo_with_flat_background_drops_the_background() -> None:
    # A duck on smooth water (3610 x 5700, 7 x 11 tiles): the corner tiles are open water, the
    # tile at the image centre is the duck's patterned body.
    tiles = _photo_tiles("dennis-buchner-WATeNJyEUkA-unsplash.jpg")
    assert len(tiles) == 77
    corner, centre = tiles[0], tiles[5 * 7 + 3]
    assert flat_fraction(corner) > 0.9
    assert is_flat(corner)
    assert flat_fraction(centre) < 0.2
    assert not is_flat(centre)
