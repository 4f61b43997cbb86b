"""Pretraining inputs: crop a clean patch, degrade half its area, mask 30%, keep the clean target.

The paper pretrains DyNet on random 128x128 crops in which 50% of the area is degraded (JPEG
compression, Gaussian noise or random noise at varying levels) and 30% is masked MAE-style, so
80% of the input is altered; the loss is L1 to the clean crop. See /work/shared/DYNET-SPEC.md.
The paper gives no layout for the two regions; this module fixes one:

- **Grid.** The crop is cut into square cells of ``mask_patch`` px (default 8: a 128 crop has
  16 x 16 = 256 cells). Every altered region is a union of whole cells. With 8 px the cells
  coincide with JPEG's 8x8 DCT blocks (and 16 px colour MCUs never straddle a cell), since the
  crop is compressed from its own origin.
- **Layout.** One random permutation of the cells per sample: the first
  ``round(mask_ratio * cells)`` are masked, the next ``round(degrade_fraction * cells)`` are
  degraded, the rest stay clean. Masked and degraded cells are therefore disjoint and scattered,
  and their counts are exact (128 crop: 77 masked + 128 degraded + 51 clean cells).
- **Degradation.** One kind per sample, drawn with ``kind_weights``, with one level drawn
  uniformly from its range. The whole crop is degraded (JPEG: encoded and decoded once, whole,
  at one quality, so the blocks are genuine; noise: drawn for every pixel), then only the
  degraded cells are pasted into the input. Noisy values are rounded and clipped to 0..255 like
  real 8-bit images (PromptIR's fine-tuning noise is quantised the same way).
- **Masking.** Masked pixels take ``mask_fill`` (default 0.0, black) in every channel.

Clean cells of the input equal the target exactly. Everything here is pure numpy / OpenCV on
one sample; randomness comes only from the generator passed in, and `make_rng` derives it from
(seed, step, rank, worker) so any batch can be rebuilt. `masked_l1` is the torch loss that also
reports the masked and unmasked parts separately.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import cv2
import numpy as np
import torch

Kind = Literal["jpeg", "gaussian", "random"]
KINDS: tuple[str, ...] = ("jpeg", "gaussian", "random")


@dataclass(frozen=True)
class DegradeConfig:
    """How one pretraining input is built from a clean patch; the default follows the paper.

    Sizes are in pixels, fractions are of the crop's area, noise levels on the 0..255 scale.
    Ranges are ``(low, high)``, inclusive, sampled uniformly once per sample.

    crop: side of the square crop; a multiple of ``mask_patch``.
    mask_patch: side of a grid cell, for masking and degrading alike (8 = JPEG's block size).
    degrade_fraction: share of the cells degraded (0.5 in the paper).
    mask_ratio: share of the cells masked (0.3 in the paper); with ``degrade_fraction`` at most 1.
    mask_fill: value of masked pixels, in [0, 1].
    jpeg_quality: JPEG quality factor range (integers, 1..100; lower is worse).
    gaussian_sigma: standard deviation range of additive Gaussian noise.
    uniform_amplitude: "random" noise: amplitude range ``a`` of additive uniform noise in [-a, a].
    impulse_prob: "random" noise: per-pixel probability range of salt-and-pepper noise, applied
        after the uniform noise (a hit pixel becomes black or white in all channels, 50/50).
    kinds, kind_weights: the degradations and their relative weights (equal by default).
    """

    crop: int = 128
    mask_patch: int = 8
    degrade_fraction: float = 0.5
    mask_ratio: float = 0.3
    mask_fill: float = 0.0
    jpeg_quality: tuple[int, int] = (10, 60)
    gaussian_sigma: tuple[float, float] = (5.0, 50.0)
    uniform_amplitude: tuple[float, float] = (5.0, 50.0)
    impulse_prob: tuple[float, float] = (0.01, 0.1)
    kinds: tuple[str, ...] = KINDS
    kind_weights: tuple[float, ...] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if self.mask_patch < 1 or self.crop < self.mask_patch or self.crop % self.mask_patch:
            raise ValueError(
                f"crop ({self.crop}) must be a positive multiple of mask_patch ({self.mask_patch})"
            )
        for name in ("degrade_fraction", "mask_ratio", "mask_fill"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.n_masked + self.n_degraded > self.n_cells:
            raise ValueError("degrade_fraction + mask_ratio must not exceed 1")
        limits = {
            "jpeg_quality": (1, 100),
            "gaussian_sigma": (0.0, 255.0),
            "uniform_amplitude": (0.0, 255.0),
            "impulse_prob": (0.0, 1.0),
        }
        for name, (lo, hi) in limits.items():
            low, high = getattr(self, name)
            if not lo <= low <= high <= hi:
                raise ValueError(f"{name} must be (low, high) with {lo} <= low <= high <= {hi}")
        unknown = set(self.kinds) - set(KINDS)
        if not self.kinds or unknown:
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {self.kinds}")
        if len(self.kind_weights) != len(self.kinds):
            raise ValueError("kind_weights must give one weight per kind")
        if min(self.kind_weights) < 0 or sum(self.kind_weights) <= 0:
            raise ValueError("kind_weights must be non-negative with a positive sum")

    @property
    def n_cells(self) -> int:
        """Grid cells in a crop."""
        return (self.crop // self.mask_patch) ** 2

    @property
    def n_masked(self) -> int:
        """Masked cells per crop: ``mask_ratio`` of the cells, rounded half up."""
        return _round_half_up(self.mask_ratio * self.n_cells)

    @property
    def n_degraded(self) -> int:
        """Degraded cells per crop: ``degrade_fraction`` of the cells, rounded half up."""
        return _round_half_up(self.degrade_fraction * self.n_cells)

    def to_dict(self) -> dict[str, Any]:
        """Plain-types form, for checkpoints and run cards."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DegradeConfig:
        """Inverse of `to_dict`; lists (e.g. from JSON/YAML) become tuples again."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _round_half_up(x: float) -> int:
    # Not round(): banker's rounding would make 0.5-cell cases depend on parity.
    return int(np.floor(x + 0.5 + 1e-9))


def make_rng(seed: int, step: int, rank: int, worker: int) -> np.random.Generator:
    """Generator for one batch, determined by (seed, step, rank, worker) alone.

    ``seed`` is the run's seed (the entropy); the others are the SeedSequence spawn key, so every
    (step, rank, worker) gets an independent, reproducible stream. All must be >= 0.
    """
    for name, value in (("seed", seed), ("step", step), ("rank", rank), ("worker", worker)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(step, rank, worker)))


def random_crop(patch_uint8_hwc: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``size x size`` crop at a uniformly random position, as a new contiguous array.

    Raises ValueError when the patch is smaller than ``size`` on either side.
    """
    h, w = patch_uint8_hwc.shape[:2]
    if h < size or w < size:
        raise ValueError(f"patch of {h}x{w} px is smaller than the {size} px crop")
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    return np.ascontiguousarray(patch_uint8_hwc[y : y + size, x : x + size])


def cell_layout(cfg: DegradeConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random (masked, degraded) cell maps, bool ``(crop/mask_patch,) * 2``, disjoint.

    Exactly ``cfg.n_masked`` and ``cfg.n_degraded`` cells are set.
    """
    side = cfg.crop // cfg.mask_patch
    order = rng.permutation(cfg.n_cells)
    masked = np.zeros(cfg.n_cells, dtype=bool)
    degraded = np.zeros(cfg.n_cells, dtype=bool)
    masked[order[: cfg.n_masked]] = True
    degraded[order[cfg.n_masked : cfg.n_masked + cfg.n_degraded]] = True
    return masked.reshape(side, side), degraded.reshape(side, side)


def _to_pixels(cells: np.ndarray, cell: int) -> np.ndarray:
    return np.repeat(np.repeat(cells, cell, axis=0), cell, axis=1)


def jpeg(image_uint8_hwc: np.ndarray, quality: int) -> np.ndarray:
    """Encode the whole RGB (or 1-channel) image as JPEG at ``quality`` and decode it back."""
    channels = image_uint8_hwc.shape[2]
    bgr = image_uint8_hwc[..., ::-1] if channels == 3 else image_uint8_hwc
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG")
    out = cv2.imdecode(buf, cv2.IMREAD_COLOR if channels == 3 else cv2.IMREAD_GRAYSCALE)
    return out[..., ::-1].copy() if channels == 3 else out[..., None]


def degrade(
    image_uint8_hwc: np.ndarray, kind: str, cfg: DegradeConfig, rng: np.random.Generator
) -> np.ndarray:
    """The whole image degraded by ``kind`` at a level drawn from ``cfg``; uint8, same shape."""
    if kind == "jpeg":
        low, high = cfg.jpeg_quality
        return jpeg(image_uint8_hwc, int(rng.integers(low, high + 1)))
    img = image_uint8_hwc.astype(np.float32)
    if kind == "gaussian":
        sigma = rng.uniform(*cfg.gaussian_sigma)
        img += rng.normal(0.0, sigma, img.shape).astype(np.float32)
    elif kind == "random":
        amplitude = rng.uniform(*cfg.uniform_amplitude)
        img += rng.uniform(-amplitude, amplitude, img.shape).astype(np.float32)
        prob = rng.uniform(*cfg.impulse_prob)
        hit = rng.random(img.shape[:2]) < prob
        salt = rng.random(img.shape[:2]) < 0.5
        img[hit] = np.where(salt[hit], 255.0, 0.0)[:, None]
    else:
        raise ValueError(f"unknown degradation kind {kind!r}; choose from {KINDS}")
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def build_pretraining_sample(
    clean_uint8_hwc: np.ndarray, cfg: DegradeConfig, rng: np.random.Generator
) -> dict[str, Any]:
    """One pretraining sample from a clean ``(H, W, C)`` uint8 patch (RGB, or C = 1).

    The patch is cropped to ``cfg.crop`` at random (any size >= crop; equal size is kept whole).
    Returns numpy values, which torch's default collate stacks into a batch:

    - ``input``: float32 ``(C, crop, crop)`` in [0, 1], degraded and masked cells altered;
    - ``target``: float32 ``(C, crop, crop)``, the clean crop in [0, 1];
    - ``mask``: bool ``(crop, crop)``, True where pixels are masked (set to ``cfg.mask_fill``);
    - ``degraded``: bool ``(crop, crop)``, True where pixels are degraded; disjoint from mask;
    - ``kind``: the degradation used, one of ``cfg.kinds``.
    """
    if clean_uint8_hwc.dtype != np.uint8 or clean_uint8_hwc.ndim != 3:
        raise ValueError(
            f"expected an (H, W, C) uint8 patch, got {clean_uint8_hwc.dtype} {clean_uint8_hwc.shape}"
        )
    clean = random_crop(clean_uint8_hwc, cfg.crop, rng)
    weights = np.asarray(cfg.kind_weights, dtype=np.float64)
    kind = cfg.kinds[int(rng.choice(len(cfg.kinds), p=weights / weights.sum()))]
    masked_cells, degraded_cells = cell_layout(cfg, rng)
    mask = _to_pixels(masked_cells, cfg.mask_patch)
    degraded = _to_pixels(degraded_cells, cfg.mask_patch)

    noisy = np.where(degraded[..., None], degrade(clean, kind, cfg, rng), clean)
    inp = noisy.astype(np.float32) / 255.0
    inp[mask] = cfg.mask_fill
    return {
        "input": np.ascontiguousarray(inp.transpose(2, 0, 1)),
        "target": np.ascontiguousarray((clean.astype(np.float32) / 255.0).transpose(2, 0, 1)),
        "mask": mask,
        "degraded": degraded,
        "kind": kind,
    }


class L1Split(NamedTuple):
    """Mean absolute errors (scalars): over all pixels, over masked and over unmasked pixels."""

    total: torch.Tensor
    masked: torch.Tensor
    unmasked: torch.Tensor


def masked_l1(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> L1Split:
    """L1 to the target, with its masked / unmasked parts for reporting.

    ``output`` and ``target`` are ``(B, C, H, W)``; ``mask`` is bool ``(B, H, W)`` (or any shape
    that broadcasts once a channel axis is added). ``total`` is the training loss (mean over
    every element); ``masked`` and ``unmasked`` average over the elements in and out of the mask
    and are 0 when that part is empty. Passing the ``degraded`` map instead splits by that.
    """
    diff = (output - target).abs()
    inside = mask.to(device=diff.device, dtype=torch.bool).unsqueeze(-3).expand_as(diff)
    n_in = inside.sum()
    n_out = inside.numel() - n_in
    sum_in = diff.masked_fill(~inside, 0.0).sum()
    sum_out = diff.masked_fill(inside, 0.0).sum()
    return L1Split(
        total=diff.mean(),
        masked=sum_in / n_in.clamp(min=1),
        unmasked=sum_out / n_out.clamp(min=1),
    )
