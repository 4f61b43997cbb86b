"""Small generated images for tests (real encoders, odd modes included)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def textured(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A deterministic RGB image with texture at several scales (not flat)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = 127 + 60 * np.sin(x / 17.0 + seed) * np.cos(y / 23.0)
    noise = rng.normal(0, 25, (height, width, 3))
    img = base[..., None] + noise + np.array([10, -5, 0])
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(arr: np.ndarray, fmt: str = "JPEG", mode: str | None = None, **kw) -> bytes:
    im = Image.fromarray(arr)
    if mode:
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 92} | kw if fmt == "JPEG" else kw))
    return buf.getvalue()


def png_16bit(arr: np.ndarray) -> bytes:
    gray16 = (arr.mean(axis=2) * 257).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(gray16).save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries almost no data (a decompression bomb)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
