"""Cut one decoded image into training patches: tile, measure flatness, encode the kept ones.

Pure per-image logic (no Ray, no I/O); the patch stage runs it over shards.

Geometry comes from :mod:`curation.tiling`: non-overlapping ``size x size`` tiles on a regular
grid, in row-major order. The remainder that does not fill a whole tile is left out, never
padded or resized: with ``border="center"`` (default) the grid is centred so the margin is
split between both sides (the odd pixel goes to the bottom / right); with ``border="drop"`` the
grid starts at (0, 0) and the whole margin is cut at the bottom / right. A side shorter than
``size`` gives no tile at all.

Each tile's flat fraction comes from :mod:`curation.flatness`; a tile is rejected with reason
``flat`` when that fraction is strictly above ``max_flat_fraction`` (Million-IRD drops patches
with more than 50% flat area). Kept tiles are encoded with fixed encoder parameters, so the
same pixels always give the same bytes (with the same OpenCV build): PNG (lossless, default),
WebP (lossless) or JPEG (quality 95, lossy; for space-bound experiments only).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from curation.config import PatchConfig
from curation.flatness import FlatnessConfig, flat_fraction
from curation.tiling import iter_tiles, tile_grid

#: Reason of a rejected (mostly flat) patch in the patch manifest.
FLAT_REASON = "flat"
#: Digits of the zero-padded y / x offsets in a patch key: sides up to 999,999 px.
COORD_DIGITS = 6

#: zlib level 3: on real photos as small as level 1 and faster; 6-9 save ~5% for 2-9x the time.
PNG_COMPRESSION = 3
JPEG_QUALITY = 95
#: OpenCV's WebP quality above 100 means lossless.
WEBP_LOSSLESS = 101

_ENCODE_PARAMS: dict[str, tuple[str, list[int]]] = {
    "png": (".png", [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION]),
    "jpg": (".jpg", [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY, cv2.IMWRITE_JPEG_OPTIMIZE, 0]),
    "webp": (".webp", [cv2.IMWRITE_WEBP_QUALITY, WEBP_LOSSLESS]),
}


@dataclass(frozen=True, slots=True)
class PatchRecord:
    """One tile of an image and what became of it.

    key: ``<image key>_<y>_<x>``, offsets zero-padded (:func:`patch_key`).
    x, y: top-left corner in the decoded, upright image, pixels; size: side in pixels.
    flat_fraction: share of the tile's area in flat cells, in [0, 1].
    status: ``kept`` or ``rejected`` (then reason ``flat``); data: encoded bytes, kept only.
    """

    key: str
    x: int
    y: int
    size: int
    flat_fraction: float
    status: str
    reason: str | None = None
    data: bytes | None = None


def flatness_config(cfg: PatchConfig) -> FlatnessConfig:
    """The flat detector settings of a patch config; raises ValueError if they do not fit.

    The cell must divide the patch side, so this doubles as the config-time check.
    """
    flat = FlatnessConfig(
        cell=cfg.flat_cell, threshold=cfg.flat_threshold, max_flat=cfg.max_flat_fraction
    )
    flat.check_patch(cfg.size)
    return flat


def patch_key(image_key: str, y: int, x: int) -> str:
    """``<image key>_<y>_<x>`` with 6-digit offsets: sorts like row-major tile order."""
    if not 0 <= y < 10**COORD_DIGITS or not 0 <= x < 10**COORD_DIGITS:
        raise ValueError(f"tile offset ({y}, {x}) does not fit in {COORD_DIGITS} digits")
    return f"{image_key}_{y:0{COORD_DIGITS}d}_{x:0{COORD_DIGITS}d}"


def encode_patch(rgb: np.ndarray, fmt: str = "png") -> bytes:
    """Encode an ``H x W x 3`` RGB uint8 array as ``fmt`` (png, jpg, webp), deterministically."""
    if fmt not in _ENCODE_PARAMS:
        raise ValueError(f"unknown patch format {fmt!r}: use one of {', '.join(_ENCODE_PARAMS)}")
    ext, params = _ENCODE_PARAMS[fmt]
    bgr = np.ascontiguousarray(rgb[..., ::-1])  # OpenCV stores BGR
    ok, buf = cv2.imencode(ext, bgr, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {rgb.shape} patch as {fmt}")
    return buf.tobytes()


def cut_patches(
    rgb: np.ndarray, image_key: str, cfg: PatchConfig, flat: FlatnessConfig | None = None
) -> list[PatchRecord]:
    """Every tile of ``rgb`` (``H x W x 3`` uint8 RGB, upright), in row-major order.

    Rejected tiles are not encoded (their ``data`` is None). ``flat`` may be passed to skip
    rebuilding it per image; by default it comes from ``cfg``.
    """
    flat = flat or flatness_config(cfg)
    tiles = tile_grid(rgb.shape[0], rgb.shape[1], cfg.size, border=cfg.border)
    records = []
    for tile, pixels in zip(tiles, iter_tiles(rgb, tiles), strict=True):
        fraction = flat_fraction(pixels, cell=flat.cell, threshold=flat.threshold)
        common = dict(
            key=patch_key(image_key, tile.y, tile.x),
            x=tile.x,
            y=tile.y,
            size=cfg.size,
            flat_fraction=fraction,
        )
        if fraction > flat.max_flat:
            records.append(PatchRecord(**common, status="rejected", reason=FLAT_REASON))
        else:
            records.append(
                PatchRecord(**common, status="kept", data=encode_patch(pixels, cfg.format))
            )
    return records
