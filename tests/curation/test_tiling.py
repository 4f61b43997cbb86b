"""Geometry of the 512 x 512 patch grid: counts, coverage, margins, order, views."""

from __future__ import annotations

import numpy as np
import pytest

from curation.tiling import Tile, iter_tiles, tile_grid

# (height, width): exact multiples, one pixel short / over, odd margins, real photo sizes,
# portrait and landscape strips.
SIZES = [
    (512, 512),
    (1024, 1536),
    (1023, 1025),
    (513, 2047),
    (3648, 4607),
    (5700, 3610),
    (700, 2000),
    (2000, 700),
]


def _coverage(height: int, width: int, tiles: list[Tile]) -> np.ndarray:
    """How many tiles cover each pixel."""
    count = np.zeros((height, width), np.int32)
    for tile in tiles:
        count[tile.slices] += 1
    return count


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("border", ["center", "drop"])
def test_count_is_floor_per_axis(height: int, width: int, border: str) -> None:
    tiles = tile_grid(height, width, border=border)
    assert len(tiles) == (height // 512) * (width // 512)
    assert all((t.w, t.h) == (512, 512) for t in tiles)


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("border", ["center", "drop"])
def test_tiles_do_not_overlap_and_cover_the_grid_exactly(
    height: int, width: int, border: str
) -> None:
    tiles = tile_grid(height, width, border=border)
    count = _coverage(height, width, tiles)
    rows, cols = height // 512, width // 512
    y0, x0 = min(t.y for t in tiles), min(t.x for t in tiles)
    grid = np.zeros_like(count)
    grid[y0 : y0 + rows * 512, x0 : x0 + cols * 512] = 1
    # Every pixel of the kept grid is covered exactly once, nothing outside it at all.
    np.testing.assert_array_equal(count, grid)


@pytest.mark.parametrize("height,width", SIZES)
def test_center_splits_the_margin_evenly(height: int, width: int) -> None:
    tiles = tile_grid(height, width, border="center")
    for side, starts, ends in [
        (height, [t.y for t in tiles], [t.y + t.h for t in tiles]),
        (width, [t.x for t in tiles], [t.x + t.w for t in tiles]),
    ]:
        before, after = min(starts), side - max(ends)
        # The odd pixel of an odd margin goes to the bottom / right.
        assert before == (side % 512) // 2
        assert after - before in (0, 1)


def test_center_on_a_non_square_image() -> None:
    tiles = tile_grid(700, 2000)
    assert [(t.x, t.y) for t in tiles] == [(232, 94), (744, 94), (1256, 94)]


@pytest.mark.parametrize("height,width", SIZES)
def test_drop_anchors_at_the_origin(height: int, width: int) -> None:
    tiles = tile_grid(height, width, border="drop")
    assert (tiles[0].x, tiles[0].y) == (0, 0)
    assert max(t.x + t.w for t in tiles) == (width // 512) * 512
    assert max(t.y + t.h for t in tiles) == (height // 512) * 512


def test_order_is_row_major_and_deterministic() -> None:
    tiles = tile_grid(1600, 2100)
    assert tiles == sorted(tiles, key=lambda t: (t.y, t.x))
    assert [t.y for t in tiles[:4]] == [tiles[0].y] * 4  # first row holds 4 tiles
    assert tiles == tile_grid(1600, 2100)


@pytest.mark.parametrize("height,width", [(0, 0), (511, 4000), (4000, 511), (100, 100)])
def test_images_smaller_than_a_patch_give_no_tiles(height: int, width: int) -> None:
    assert tile_grid(height, width) == []


def test_stride_leaves_gaps_between_tiles() -> None:
    tiles = tile_grid(1300, 1300, patch=256, stride=400, border="drop")
    # floor((1300 - 256) / 400) + 1 = 3 per axis.
    assert [t.x for t in tiles[:3]] == [0, 400, 800]
    assert len(tiles) == 9
    assert _coverage(1300, 1300, tiles).max() == 1


def test_other_patch_sizes() -> None:
    tiles = tile_grid(100, 130, patch=32)
    assert len(tiles) == 3 * 4
    assert (tiles[0].x, tiles[0].y) == (1, 2)  # margins 4 -> 2 + 2 and 2 -> 1 + 1


@pytest.mark.parametrize(
    "kwargs",
    [{"patch": 0}, {"stride": 511}, {"border": "pad"}],
)
def test_invalid_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        tile_grid(1024, 1024, **kwargs)


def test_negative_size_raises() -> None:
    with pytest.raises(ValueError):
        tile_grid(-1, 1024)


def test_iter_tiles_yields_views_of_the_image() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1100, 1600, 3), dtype=np.uint8)
    tiles = tile_grid(*image.shape[:2])
    views = list(iter_tiles(image, tiles))
    assert len(views) == len(tiles) == 6
    for tile, view in zip(tiles, views, strict=True):
        assert view.shape == (512, 512, 3)
        assert np.shares_memory(view, image)
        np.testing.assert_array_equal(view, image[tile.y : tile.y + 512, tile.x : tile.x + 512])


def test_iter_tiles_on_grayscale() -> None:
    image = np.arange(600 * 600, dtype=np.int32).reshape(600, 600)
    (view,) = iter_tiles(image, tile_grid(600, 600))
    assert view[0, 0] == image[44, 44]


@pytest.mark.parametrize(
    "tile", [Tile(100, 0, 512, 512), Tile(0, 300, 512, 512), Tile(-1, 0, 512, 512)]
)
def test_iter_tiles_rejects_a_tile_outside_the_image(tile: Tile) -> None:
    image = np.zeros((800, 600), np.uint8)  # 800 rows, 600 columns
    with pytest.raises(ValueError, match="does not fit"):
        list(iter_tiles(image, [tile]))
