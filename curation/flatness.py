"""Flat-region detector for training patches (Million-IRD drops patches that are mostly flat).

A patch is cut into square cells. A cell is *flat* when the variance of the Sobel gradient
magnitude inside it is below ``threshold``: a flat cell has no edges and no texture, only a
constant or slowly varying tone (sky, walls, bokeh, smooth gradients). The patch's flat fraction
is the area of its flat cells over its area, and the patch is dropped when that fraction is
above ``max_flat`` (a patch exactly at ``max_flat`` is kept).

Measure and units, following LSDIR's public flat-region detector (``quality_evaluator.py`` in
ofsoundof/lsdir_tools: 3x3 Sobel on uint8 grayscale, magnitude, per-cell variance, flat below
150):

- grayscale: OpenCV's RGB -> gray (ITU-R BT.601 luma), uint8, 0..255 grey levels;
- gradient: ``cv2.Sobel`` with the 3x3 kernel, float32, in grey levels times the kernel gain
  (a ramp of 1 grey level per pixel reads 8, a step edge of height ``h`` reads ``4 h``);
  magnitude ``sqrt(gx^2 + gy^2)``, range 0 to about 1443;
- variance: population variance per cell, in squared magnitude units. The default threshold of
  150 is a standard deviation of about 12: white noise of std ``s`` grey levels gives a variance
  of about ``5.1 s^2``, so sensor or JPEG noise below about 5 grey levels still reads flat.

Differences from LSDIR, on purpose: LSDIR votes with 240 px cells over a whole image (partial
cells at the border count as full votes) and flags an image when the vote is >= its threshold;
here cells tile a patch exactly, each cell weighs its area, and exactly ``max_flat`` is kept.

The gradient is computed on the patch alone (OpenCV's reflect-101 border), so a patch's score
does not depend on the image around it and can be recomputed from the stored patch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

#: Default cell side in pixels: 16 x 16 = 256 cells in a 512 patch, each 1/256 of its area.
#: 32 px gives each variance 1024 samples (16 px cells: 256, strongly correlated by the 3x3
#: kernel) while an edge still marks only its own 32 px strip as textured (64 px cells let one
#: thin edge claim 1/64 of the patch). Smaller cells find more flat area: on 1387 full-resolution
#: 512 tiles of ../shared/photos, 56% / 46% / 34% were dropped with 16 / 32 / 64 px cells.
DEFAULT_CELL = 32
#: LSDIR's threshold on the per-cell variance of the Sobel magnitude (squared Sobel units).
DEFAULT_THRESHOLD = 150.0
#: Million-IRD drops a patch with more than 50% flat area.
DEFAULT_MAX_FLAT = 0.5


@dataclass(frozen=True, slots=True)
class FlatnessConfig:
    """Flat-region detector settings.

    cell: cell side in pixels, >= 2; it must divide both sides of every patch it is used on
        (``check_patch``), because a partial cell would have too few pixels for a stable
        variance and leaving it out would bias the fraction.
    threshold: a cell is flat when its gradient-magnitude variance is below this (>= 0,
        squared Sobel units on uint8 grayscale, see the module docstring).
    max_flat: a patch is dropped when its flat fraction is above this, in [0, 1].
    """

    cell: int = DEFAULT_CELL
    threshold: float = DEFAULT_THRESHOLD
    max_flat: float = DEFAULT_MAX_FLAT

    def __post_init__(self) -> None:
        # The variance of a single pixel is always 0, so a 1 px cell would call everything flat.
        if isinstance(self.cell, bool) or not isinstance(self.cell, int) or self.cell < 2:
            raise ValueError(f"cell must be an integer >= 2, got {self.cell!r}")
        if not math.isfinite(self.threshold) or self.threshold < 0:
            raise ValueError(f"threshold must be finite and >= 0, got {self.threshold!r}")
        if not 0.0 <= self.max_flat <= 1.0:
            raise ValueError(f"max_flat must be in [0, 1], got {self.max_flat!r}")

    def check_patch(self, patch: int) -> None:
        """Raise ``ValueError`` unless ``cell`` divides a ``patch``-pixel side (config time)."""
        if patch % self.cell:
            raise ValueError(f"cell ({self.cell}) must divide the patch side ({patch})")


def _to_gray(patch: np.ndarray) -> np.ndarray:
    """uint8 grayscale from an ``H x W x 3`` RGB or ``H x W`` grayscale uint8 array."""
    if patch.dtype != np.uint8:
        # The threshold is in uint8 grey levels; rescaling other dtypes here would hide bugs.
        raise TypeError(f"patch must be uint8, got {patch.dtype}")
    if patch.ndim == 2:
        return patch
    if patch.ndim == 3 and patch.shape[2] == 3:
        return cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY)
    raise ValueError(f"patch must be H x W x 3 (RGB) or H x W, got shape {patch.shape}")


def cell_gradient_variance(patch: np.ndarray, cell: int = DEFAULT_CELL) -> np.ndarray:
    """Per-cell variance of the Sobel gradient magnitude, shape ``(H // cell, W // cell)``.

    ``patch`` is ``H x W x 3`` RGB or ``H x W`` grayscale, uint8; ``cell`` must divide ``H`` and
    ``W``. Values are float32 in squared Sobel units (module docstring), >= 0.
    """
    if cell < 2:
        raise ValueError(f"cell must be >= 2, got {cell}")
    gray = _to_gray(patch)
    height, width = gray.shape
    if height % cell or width % cell:
        raise ValueError(f"cell ({cell}) must divide the patch size ({height}x{width})")
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    magnitude = cv2.magnitude(gx, gy)
    # (rows, cell, cols, cell): axes 1 and 3 run over the pixels of one cell.
    cells = magnitude.reshape(height // cell, cell, width // cell, cell)
    return cells.var(axis=(1, 3))


def flat_fraction(
    patch: np.ndarray, *, cell: int = DEFAULT_CELL, threshold: float = DEFAULT_THRESHOLD
) -> float:
    """Fraction of the patch area, in [0, 1], covered by flat cells (see module docstring).

    Cells all have the same area, so this is the share of cells whose gradient-magnitude
    variance is below ``threshold``; with 256 cells it moves in steps of 1/256.
    """
    variance = cell_gradient_variance(patch, cell)
    return float(np.count_nonzero(variance < threshold) / variance.size)


def is_flat(patch: np.ndarray, config: FlatnessConfig = FlatnessConfig()) -> bool:
    """True when the patch should be dropped: flat fraction strictly above ``config.max_flat``."""
    return bool(
        flat_fraction(patch, cell=config.cell, threshold=config.threshold) > config.max_flat
    )
