"""Decode image bytes once, the same way for every stage.

Every stage (scoring, filtering, tiling) sees the same pixels for the same bytes: EXIF
orientation applied, any mode turned into 8-bit RGB, transparency flattened onto white.
Pillow decodes (and so validates) every file; 16-bit colour PNG/TIFF, which Pillow truncates
to 8 bits, is decoded a second time by OpenCV at full depth.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
from PIL import ExifTags, Image, ImageFile

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 50_000_000
"""A shared default for ``max_pixels``: ~8K x 6K, about 150 MB as RGB uint8."""

# Formats we accept from the web. Restricting Pillow's list keeps rarely used, riskier
# decoders out of the way (EPS, for one, runs Ghostscript).
_FORMATS = tuple(
    f
    for f in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")
    if f in Image.registered_extensions().values()  # AVIF only where Pillow has it
)

# EXIF orientation -> the transpose that displays the image upright; the table of
# PIL.ImageOps.exif_transpose, applied here to the final RGB array so that the 16-bit
# path (decoded by OpenCV, which ignores EXIF in IMREAD_UNCHANGED) is turned the same way.
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_GRAY16_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


class DecodeError(Exception):
    """The bytes are not an image we can decode. ``reason`` is a snake_case drop reason."""

    reason = "decode_error"


class TooManyPixelsError(DecodeError):
    """The header declares more pixels than allowed; refused before decoding the pixels."""

    reason = "too_many_pixels"


class DecodeInfo(TypedDict):
    """What decoding did, for stages to record.

    orig_mode: Pillow mode of the source (``"RGB"``, ``"L"``, ``"CMYK"``, ``"P"``, ``"I;16"``...).
    bit_depth: bits per sample of the source (1, 8, 16 or 32); the output is always 8.
    had_alpha: the source had an alpha channel or a transparent colour.
    exif_rotated: an EXIF orientation other than 1 was applied.
    format: Pillow format name (``"JPEG"``, ``"PNG"``, ``"MPO"``...).
    """

    orig_mode: str
    bit_depth: int
    had_alpha: bool
    exif_rotated: bool
    format: str


@dataclass(frozen=True)
class DecodedImage:
    """An upright RGB image: ``rgb`` is HxWx3 uint8, C-contiguous."""

    rgb: np.ndarray
    info: DecodeInfo

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


def decode_image(data: bytes, *, max_pixels: int) -> DecodedImage:
    """Decode ``data`` into an upright 8-bit RGB array.

    Args:
        data: the encoded file (JPEG, PNG, WebP, GIF (first frame), BMP, TIFF, AVIF).
        max_pixels: largest width x height accepted; checked on the header, before the
            pixels are decoded.

    Conversions: EXIF orientation applied; gray, palette, CMYK (naive, ICC profiles are not
    applied) and 1-bit to RGB; 16-bit to 8-bit by rounding (v8 = round(v16 / 257)); alpha
    composited on white.

    Why white: transparent web images (logos, product cut-outs, icons) are drawn to be seen
    on a white page. Dropping alpha instead exposes whatever colour the transparent pixels
    happen to store (often black or garbage), which invents hard edges and flat areas that
    mislead the quality metrics and end up in training patches.

    Raises:
        TooManyPixelsError: reason ``too_many_pixels``.
        DecodeError: reason ``decode_error`` for empty, non-image, corrupt or truncated data.
    """
    _keep_truncated_images_fatal()
    if not data:
        raise DecodeError("empty file")
    try:
        with warnings.catch_warnings():
            # Pillow warns above Image.MAX_IMAGE_PIXELS; we apply our own limit just below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=_FORMATS)  # lazy: reads the header only
    except Image.DecompressionBombError as e:
        # Pillow refuses more than 2 * Image.MAX_IMAGE_PIXELS (~179 M) at open time.
        raise TooManyPixelsError(str(e)) from e
    except Exception as e:  # Pillow raises many types on garbage (OSError, SyntaxError, ...)
        raise DecodeError(f"not a supported image: {type(e).__name__}: {e}") from e

    with im:
        width, height = im.size
        if width * height > max_pixels:
            raise TooManyPixelsError(
                f"{width}x{height} = {width * height} pixels > max_pixels={max_pixels}"
            )
        try:
            im.load()  # decodes the pixels; truncated or corrupt data raise here
            rgb, info = _to_rgb8(im, data)
        except DecodeError:
            raise
        except Image.DecompressionBombError as e:  # a frame/layer larger than the header says
            raise TooManyPixelsError(str(e)) from e
        except Exception as e:
            raise DecodeError(f"cannot decode {im.format} image: {type(e).__name__}: {e}") from e
        method = _EXIF_TRANSPOSE.get(_exif_orientation(im))

    if method is not None:
        rgb = np.asarray(Image.fromarray(rgb).transpose(method))
    info["exif_rotated"] = method is not None
    return DecodedImage(rgb=np.ascontiguousarray(rgb), info=info)


def _keep_truncated_images_fatal() -> None:
    """Make sure truncated files raise instead of decoding as grey-filled images.

    ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is process-global and other libraries set it:
    importing pyiqa's AVA dataset module (``pyiqa.data.ava_dataset``) turns it on.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        log.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES was True; setting it back to False")
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def _to_rgb8(im: Image.Image, data: bytes) -> tuple[np.ndarray, DecodeInfo]:
    """Convert a loaded image to HxWx3 uint8 RGB (EXIF orientation not yet applied)."""
    mode = im.mode
    had_alpha = mode in _ALPHA_MODES or "transparency" in im.info
    is_16bit = mode in _GRAY16_MODES or _declares_16bit(im, data)
    bit_depth = {"1": 1, "I": 32, "F": 32}.get(mode, 16 if is_16bit else 8)

    if mode in _GRAY16_MODES:
        # 16-bit gray, which Pillow keeps at full depth ("I" also holds 16-bit data in
        # several Pillow plugins; values outside 0..65535 are clipped).
        gray = np.clip(np.asarray(im), 0, 65535)
        rgb = _16bit_to_rgb8(np.repeat(gray[..., None], 3, axis=2))
    elif is_16bit:
        # 16-bit colour: Pillow keeps only the high byte, i.e. truncates.
        rgb = _16bit_to_rgb8(_decode_16bit_colour(data))
    elif had_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    else:
        rgb = np.asarray(im.convert("RGB"))

    info: DecodeInfo = {
        "orig_mode": mode,
        "bit_depth": bit_depth,
        "had_alpha": had_alpha,
        "exif_rotated": False,
        "format": im.format or "",
    }
    return rgb, info


def _declares_16bit(im: Image.Image, data: bytes) -> bool:
    """Whether a PNG or TIFF stores 16 bits per sample (read from the header)."""
    if im.format == "PNG":
        # Signature (8) + IHDR length (4) + "IHDR" (4) + width (4) + height (4) -> bit depth.
        return len(data) > 24 and data[24] == 16
    if im.format == "TIFF":
        bits = im.tag_v2.get(258, (8,))  # BitsPerSample
        return 16 in (bits if isinstance(bits, tuple) else (bits,))
    return False


def _decode_16bit_colour(data: bytes) -> np.ndarray:
    """Decode a 16-bit PNG/TIFF at full depth with OpenCV -> HxWx{3,4} uint16, RGB(A)."""
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16:
        raise DecodeError("OpenCV could not decode the 16-bit image")
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2)
    channels = arr.shape[2]
    if channels == 2:  # gray + alpha
        return arr[..., [0, 0, 0, 1]]
    return arr[..., [2, 1, 0, 3][:channels]]  # OpenCV stores BGR(A)


def _16bit_to_rgb8(arr: np.ndarray) -> np.ndarray:
    """HxWx3 RGB or HxWx4 RGBA uint16 -> HxWx3 uint8, rounded, alpha composited on white.

    ``out = round((c * a + 65535 * (1 - a)) / 257)`` with ``a = alpha / 65535``; the same
    "over white" as the 8-bit path (``PIL.Image.alpha_composite``), at full precision.
    """
    colour = arr[..., :3].astype(np.float32)
    if arr.shape[2] == 4:
        alpha = arr[..., 3:4].astype(np.float32) / 65535.0
        colour = colour * alpha + 65535.0 * (1.0 - alpha)
    return np.rint(colour / 257.0).astype(np.uint8)


def _exif_orientation(im: Image.Image) -> int:
    """EXIF (or XMP) orientation 1-8; 1 when absent or unreadable.

    Broken EXIF blocks are common on the web and browsers show such images anyway, so an
    unreadable orientation means "as stored" rather than a decode error.
    """
    try:
        return int(im.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:
        return 1
