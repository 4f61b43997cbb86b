"""Judge fetched bytes from the image header alone: format, real size, and size limits.

The download stage never decodes pixels: the score stage decodes each image once, and records
a truncated or corrupt body there. Reading the header is enough to learn the real size (what
the decoder will produce) and to refuse images that declare too many pixels before anything
allocates them.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

_EXT_BY_FORMAT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif"}


@dataclass(frozen=True)
class Probe:
    status: str  # "downloaded" | "rejected" | "failed"
    reason: str | None = None
    error: str | None = None
    ext: str | None = None  # file extension for the real format
    width: int | None = None
    height: int | None = None


def probe_image(data: bytes, *, min_side: int, max_pixels: int) -> Probe:
    """Classify image bytes by their header: kept, rejected (size) or failed (not an image)."""
    if not data:
        return Probe("failed", "empty_body", "empty response body")
    try:
        # Pillow's bomb guard uses a process-wide limit; max_pixels (config) decides instead.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt, (width, height) = im.format or "", im.size
    except Image.DecompressionBombError:
        return Probe("rejected", "too_many_pixels")
    except UnidentifiedImageError:
        head = data[:64].lstrip().lower()
        kind = "an HTML page" if head.startswith((b"<!doctype html", b"<html")) else "not an image"
        return Probe("failed", "not_an_image", f"{kind} ({len(data)} bytes)")
    except (OSError, SyntaxError, ValueError) as exc:
        return Probe("failed", "decode_error", f"unreadable image header: {exc}")
    ext = _EXT_BY_FORMAT.get(fmt)
    if ext is None:
        return Probe(
            "failed", "unsupported_format", f"image format {fmt or 'unknown'} is not supported"
        )
    if width * height > max_pixels:
        return Probe("rejected", "too_many_pixels", None, ext, width, height)
    if min(width, height) < min_side:
        return Probe("rejected", "too_small", None, ext, width, height)
    return Probe("downloaded", None, None, ext, width, height)
