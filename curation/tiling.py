"""Cut an image into non-overlapping square patches on a regular grid.

Million-IRD keeps an image by cutting it into 512x512 patches that do not overlap; whatever does
not fill a whole patch at the right and bottom is left out. Where that leftover margin goes is
the one real choice here, made by ``border``:

- ``"center"`` (default): the grid is centred, so the margin is split between both sides (when
  it is odd, the extra pixel goes to the bottom / right). The subject of a photo is usually near
  its centre, and anchoring at (0, 0) would always cut away the bottom-right strip only.
- ``"drop"``: the grid starts at (0, 0) and the whole margin is dropped at the bottom / right.

Both give the same number of tiles: ``floor((side - patch) / stride) + 1`` per axis (with the
default ``stride == patch`` that is ``floor(side / patch)``), and none for a side shorter than a
patch. Tiles come in row-major order (top row first, left to right), so a tile's index in the
list is a stable key for the patch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

Border = Literal["drop", "center"]
BORDERS: tuple[Border, ...] = ("drop", "center")


@dataclass(frozen=True, slots=True)
class Tile:
    """A patch rectangle in pixels: left ``x``, top ``y``, width ``w``, height ``h``."""

    x: int
    y: int
    w: int
    h: int

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(rows, cols)`` slices that cut this tile out of an ``H x W [x C]`` array."""
        return slice(self.y, self.y + self.h), slice(self.x, self.x + self.w)


def _axis_starts(side: int, patch: int, stride: int, border: Border) -> list[int]:
    """Start offsets along one axis of ``side`` pixels."""
    if side < patch:
        return []
    count = (side - patch) // stride + 1
    margin = side - ((count - 1) * stride + patch)
    # Floor division puts the odd pixel of an odd margin at the far side, deterministically.
    offset = margin // 2 if border == "center" else 0
    return [offset + i * stride for i in range(count)]


def tile_grid(
    height: int,
    width: int,
    patch: int = 512,
    *,
    stride: int | None = None,
    border: Border = "center",
) -> list[Tile]:
    """Non-overlapping ``patch x patch`` tiles of an image of ``height x width`` pixels.

    ``stride`` (pixels, default ``patch``) is the step between tile origins; it may be larger
    than ``patch`` to leave gaps but not smaller, because overlapping patches would put
    near-duplicates into a pretraining set. ``border`` places the leftover margin (see the module
    docstring). Returns tiles in row-major order; an empty list when either side is shorter than
    ``patch``.
    """
    if patch <= 0:
        raise ValueError(f"patch must be positive, got {patch}")
    stride = patch if stride is None else stride
    if stride < patch:
        raise ValueError(f"stride ({stride}) must be >= patch ({patch}): tiles may not overlap")
    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
    if height < 0 or width < 0:
        raise ValueError(f"image size must be non-negative, got {height}x{width}")
    ys = _axis_starts(height, patch, stride, border)
    xs = _axis_starts(width, patch, stride, border)
    return [Tile(x, y, patch, patch) for y in ys for x in xs]


def iter_tiles(image: np.ndarray, tiles: Iterable[Tile]) -> Iterator[np.ndarray]:
    """Yield each tile of ``image`` (``H x W`` or ``H x W x C``) as a view, in the given order.

    Views share memory with ``image``: copy one before writing to it or keeping it past the
    image. A tile that does not lie inside the image raises ``ValueError`` rather than being
    silently cut short by numpy slicing.
    """
    height, width = image.shape[:2]
    for tile in tiles:
        if tile.x < 0 or tile.y < 0 or tile.x + tile.w > width or tile.y + tile.h > height:
            raise ValueError(f"{tile} does not fit in an image of {height}x{width}")
        yield image[tile.slices]
