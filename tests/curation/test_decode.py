"""decode_image on generated files: every mode ends as upright 8-bit RGB, bad bytes get a reason."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import ExifTags, Image, ImageFile

from curation.decode import DecodeError, TooManyPixelsError, decode_image

MAX_PIXELS = 1_000_000


def encode(im: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def encode_cv2(arr: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, arr)
    assert ok
    return buf.tobytes()


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but whose pixel data is a few bytes."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def check_rgb(decoded, height: int, width: int) -> np.ndarray:
    rgb = decoded.rgb
    assert rgb.dtype == np.uint8 and rgb.shape == (height, width, 3)
    assert rgb.flags.c_contiguous
    assert (decoded.height, decoded.width) == (height, width)
    return rgb


def test_rgb_jpeg_is_unchanged_apart_from_compression():
    src = noise(24, 32)
    decoded = decode_image(encode(Image.fromarray(src), "PNG"), max_pixels=MAX_PIXELS)
    np.testing.assert_array_equal(check_rgb(decoded, 24, 32), src)
    assert decoded.info == {
        "orig_mode": "RGB",
        "bit_depth": 8,
        "had_alpha": False,
        "exif_rotated": False,
        "format": "PNG",
    }


def test_gray_jpeg_becomes_rgb():
    gray = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (16, 1))
    decoded = decode_image(encode(Image.fromarray(gray, "L"), "JPEG"), max_pixels=MAX_PIXELS)
    rgb = check_rgb(decoded, 16, 32)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert decoded.info["orig_mode"] == "L" and decoded.info["format"] == "JPEG"


def test_cmyk_jpeg_becomes_rgb():
    red = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    decoded = decode_image(encode(red, "JPEG", quality=95), max_pixels=MAX_PIXELS)
    r, g, b = check_rgb(decoded, 16, 16).reshape(-1, 3).mean(axis=0)
    assert r > 240 and g < 15 and b < 15
    assert decoded.info["orig_mode"] == "CMYK"


def test_16bit_gray_png_is_rounded_not_truncated():
    # 5077 / 257 = 19.76: rounding gives 20, keeping the high byte (Pillow's "L") gives 19.
    values = np.array([[0, 128, 129, 5077, 65535, 65407]], dtype=np.uint16)
    decoded = decode_image(encode_cv2(values), max_pixels=MAX_PIXELS)
    rgb = check_rgb(decoded, 1, 6)
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 0, 1, 20, 255, 255])
    assert decoded.info["bit_depth"] == 16 and decoded.info["orig_mode"].startswith("I;16")


def test_16bit_rgb_png_is_rounded_and_keeps_channel_order():
    rgb16 = np.zeros((2, 3, 3), dtype=np.uint16)
    rgb16[..., 0] = 5077  # red -> 20
    rgb16[..., 2] = 65535  # blue -> 255
    decoded = decode_image(encode_cv2(rgb16[..., ::-1]), max_pixels=MAX_PIXELS)  # cv2: BGR
    rgb = check_rgb(decoded, 2, 3)
    assert (rgb[..., 0] == 20).all() and (rgb[..., 1] == 0).all() and (rgb[..., 2] == 255).all()
    assert decoded.info["bit_depth"] == 16 and decoded.info["orig_mode"] == "RGB"


def test_16bit_rgba_png_is_composited_on_white():
    bgra = np.zeros((1, 2, 4), dtype=np.uint16)  # black
    bgra[0, 0, 3] = 0  # fully transparent -> white
    bgra[0, 1, 3] = 65535  # opaque -> black
    decoded = decode_image(encode_cv2(bgra), max_pixels=MAX_PIXELS)
    np.testing.assert_array_equal(check_rgb(decoded, 1, 2)[0], [[255, 255, 255], [0, 0, 0]])
    assert decoded.info["had_alpha"] and decoded.info["bit_depth"] == 16


def test_rgba_png_is_composited_on_white():
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (0, 0, 0, 0)  # transparent black -> white
    rgba[0, 1] = (255, 0, 0, 128)  # half-transparent red -> pink
    rgba[0, 2] = (0, 0, 255, 255)  # opaque blue stays blue
    decoded = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"), max_pixels=MAX_PIXELS)
    rgb = check_rgb(decoded, 1, 3).astype(int)
    np.testing.assert_array_equal(rgb[0, 0], [255, 255, 255])
    np.testing.assert_allclose(rgb[0, 1], [255, 127, 127], atol=1)
    np.testing.assert_array_equal(rgb[0, 2], [0, 0, 255])
    assert decoded.info["had_alpha"] and decoded.info["orig_mode"] == "RGBA"


def test_palette_png_becomes_rgb():
    im = Image.new("P", (4, 2))
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    im.putpixel((0, 0), 1)
    decoded = decode_image(encode(im, "PNG"), max_pixels=MAX_PIXELS)
    rgb = check_rgb(decoded, 2, 4)
    np.testing.assert_array_equal(rgb[0, 0], [0, 255, 0])
    np.testing.assert_array_equal(rgb[1, 3], [255, 0, 0])
    assert decoded.info["orig_mode"] == "P" and not decoded.info["had_alpha"]


def test_palette_png_with_transparent_index_is_composited_on_white():
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 0, 0] + [0] * 762)
    im.putpixel((1, 0), 1)
    decoded = decode_image(encode(im, "PNG", transparency=1), max_pixels=MAX_PIXELS)
    np.testing.assert_array_equal(check_rgb(decoded, 1, 2)[0], [[255, 0, 0], [255, 255, 255]])
    assert decoded.info["had_alpha"]


def test_exif_orientation_6_is_applied():
    # Stored 40 wide x 20 high, left half red, right half blue. Orientation 6 means "turn
    # 90 degrees clockwise to display": 20 wide x 40 high, red on top.
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    data = encode(Image.fromarray(stored), "JPEG", exif=exif, quality=95)
    decoded = decode_image(data, max_pixels=MAX_PIXELS)
    rgb = check_rgb(decoded, 40, 20).astype(int)
    assert rgb[:16, :, 0].mean() > 240 and rgb[:16, :, 2].mean() < 15  # top: red
    assert rgb[24:, :, 2].mean() > 240 and rgb[24:, :, 0].mean() < 15  # bottom: blue
    assert decoded.info["exif_rotated"]


@pytest.fixture
def truncated_jpeg() -> bytes:
    data = encode(Image.fromarray(noise(128, 128)), "JPEG", quality=90)
    return data[: len(data) // 2]


def test_truncated_jpeg_is_an_error(truncated_jpeg):
    with pytest.raises(DecodeError) as err:
        decode_image(truncated_jpeg, max_pixels=MAX_PIXELS)
    assert err.value.reason == "decode_error"


def test_truncated_jpeg_is_an_error_even_if_someone_set_load_truncated(truncated_jpeg, monkeypatch):
    # pyiqa's AVA dataset module sets this process-wide flag on import.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(DecodeError):
        decode_image(truncated_jpeg, max_pixels=MAX_PIXELS)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize(
    "data",
    [b"", b"<!DOCTYPE html><html><body>404 Not Found</body></html>", b"\x89PNG\r\n\x1a\n"],
    ids=["empty", "html", "png-signature-only"],
)
def test_not_an_image_is_a_decode_error(data):
    with pytest.raises(DecodeError) as err:
        decode_image(data, max_pixels=MAX_PIXELS)
    assert err.value.reason == "decode_error"
    assert not isinstance(err.value, TooManyPixelsError)


@pytest.mark.parametrize("side", [60_000, 2_000], ids=["beyond-pillow-limit", "beyond-ours"])
def test_too_many_pixels_is_refused_from_the_header(side):
    # The pixel data is 16 bytes: decoding would fail with decode_error, so getting
    # too_many_pixels shows the refusal happened before decoding.
    with pytest.raises(TooManyPixelsError) as err:
        decode_image(png_declaring(side, side), max_pixels=MAX_PIXELS)
    assert err.value.reason == "too_many_pixels"


def test_max_pixels_is_inclusive():
    data = encode(Image.fromarray(noise(10, 10)), "PNG")
    assert decode_image(data, max_pixels=100).width == 10
    with pytest.raises(TooManyPixelsError):
        decode_image(data, max_pixels=99)
