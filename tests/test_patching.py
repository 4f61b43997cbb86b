"""Per-image patching: tile geometry, the flat drop, deterministic lossless encoding, keys."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from curation.config import PatchConfig
from curation.patching import (
    FLAT_REASON,
    cut_patches,
    encode_patch,
    flatness_config,
    patch_key,
)
from tests.images import textured

KEY = "0123456789abcdef"


def half_flat(width: int = 1100, height: int = 600, split: int = 550) -> np.ndarray:
    """Left of ``split``: a gentle grey ramp (flat); right: noisy texture."""
    img = textured(width, height, seed=3)
    ramp = (100 + np.arange(split) / 8).astype(np.uint8)
    img[:, :split] = ramp[None, :, None]
    return img


def decode_png(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)[..., ::-1]


def test_centred_grid_drops_the_flat_half_and_keeps_the_textured_one():
    img = half_flat()
    records = cut_patches(img, KEY, PatchConfig())
    # 1100 = 2 * 512 + 76 -> x from 38; 600 = 512 + 88 -> y from 44.
    assert [(r.x, r.y, r.size) for r in records] == [(38, 44, 512), (550, 44, 512)]
    flat, kept = records
    assert flat.status == "rejected" and flat.reason == FLAT_REASON and flat.data is None
    assert flat.flat_fraction == 1.0
    assert kept.status == "kept" and kept.reason is None and kept.flat_fraction == 0.0
    assert np.array_equal(decode_png(kept.data), img[44:556, 550:1062])  # lossless, RGB order


def test_drop_border_anchors_the_grid_at_the_origin():
    img = half_flat()
    records = cut_patches(img, KEY, PatchConfig(border="drop"))
    assert [(r.x, r.y) for r in records] == [(0, 0), (512, 0)]
    # The second tile holds 38 px of the ramp: one flat 32 px cell column of 16, still kept.
    assert records[0].status == "rejected"
    assert records[1].status == "kept" and records[1].flat_fraction == 1 / 16


def test_row_major_tiles_keys_and_sizes():
    img = textured(1100, 1100, seed=1)
    records = cut_patches(img, KEY, PatchConfig(size=256, flat_cell=32))
    # 1100 = 4 * 256 + 76 -> offsets 38, 294, 550, 806 on both axes.
    starts = [38, 294, 550, 806]
    assert [(r.y, r.x) for r in records] == [(y, x) for y in starts for x in starts]
    assert [r.key for r in records] == sorted(r.key for r in records)
    assert records[1].key == f"{KEY}_000038_000294"
    for r in records:
        assert r.status == "kept" and decode_png(r.data).shape == (256, 256, 3)


def test_an_image_smaller_than_a_patch_gives_no_tile():
    assert cut_patches(textured(600, 511), KEY, PatchConfig()) == []


def test_max_flat_fraction_comes_from_the_config():
    records = cut_patches(half_flat(), KEY, PatchConfig(max_flat_fraction=1.0))
    assert [r.status for r in records] == ["kept", "kept"]  # 1.0 is not above 1.0


def test_png_bytes_are_deterministic():
    img = half_flat()
    first = cut_patches(img, KEY, PatchConfig())
    second = cut_patches(img.copy(), KEY, PatchConfig())
    assert first == second
    patch = np.ascontiguousarray(img[:512, 550:1062])
    assert encode_patch(patch) == encode_patch(patch.copy())
    assert encode_patch(patch).startswith(b"\x89PNG\r\n\x1a\n")


def test_webp_is_lossless_and_jpg_decodes():
    patch = textured(512, 512, seed=4)
    assert np.array_equal(decode_png(encode_patch(patch, "webp")), patch)
    jpg = encode_patch(patch, "jpg")
    assert jpg[:2] == b"\xff\xd8" and decode_png(jpg).shape == (512, 512, 3)
    assert encode_patch(patch, "jpg") == jpg
    with pytest.raises(ValueError, match="unknown patch format"):
        encode_patch(patch, "gif")


def test_patch_key_is_zero_padded_and_bounded():
    assert patch_key("k", 0, 512) == "k_000000_000512"
    assert patch_key("k", 1024, 0) < patch_key("k", 1024, 512) < patch_key("k", 1536, 0)
    with pytest.raises(ValueError):
        patch_key("k", 10**6, 0)


def test_a_cell_that_does_not_divide_the_patch_is_refused():
    with pytest.raises(ValueError, match="must divide"):
        flatness_config(PatchConfig(size=500, flat_cell=32))
