"""DyNet: one Restormer/PromptIR-style U-Net whose per-level block is reused f times.

DyNet-L and DyNet-S are the *same* weights: the variant only chooses the reuse frequencies at
forward time (`model(x, variant="L")` or `variant="S"`), so one checkpoint serves both and
pretraining can pick a variant at random per iteration. See /work/shared/DYNET-SPEC.md.

Shapes: input and output are `(B, 3, H, W)` float images (the trainer uses [0, 1]). Any H, W
works: the network downsamples three times, so the input is padded by reflection to a multiple
of 8 and the output is cropped back; the output always has the input's shape.

Departure from the authors' code: it also builds three 1x1 convolutions that its forward never
calls (0.11 M parameters). They are left out here, so the default width gives the paper's
16.61 M parameters rather than the reference's 16.73 M.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

Variant = Literal["L", "S"]
LayerNormType = Literal["with_bias", "bias_free"]


@dataclass(frozen=True)
class DyNetConfig:
    """Architecture of a DyNet; the default is the paper's model (width C = 48).

    Prompt fields are ordered (level-2 skip, level-3 skip, latent), i.e. from fine to coarse.
    The reuse tuples give, per level 1..4, how many times that level's single block is applied
    (the decoder levels 3, 2, 1 reuse with the frequency of the same encoder level).
    """

    width: int = 48
    heads: tuple[int, int, int, int] = (1, 2, 4, 8)
    ffn_expansion: float = 2.66
    layer_norm: LayerNormType = "with_bias"
    prompt_len: int = 5
    prompt_dims: tuple[int, int, int] = (64, 128, 320)
    prompt_sizes: tuple[int, int, int] = (64, 32, 16)
    prompt_heads: int = 4
    num_refinement: int = 4
    reuse_large: tuple[int, int, int, int] = (4, 6, 6, 8)
    reuse_small: tuple[int, int, int, int] = (2, 3, 3, 4)
    in_channels: int = 3

    def reuse(self, variant: Variant) -> tuple[int, int, int, int]:
        """Reuse frequencies per level 1..4 for a variant ("L" or "S")."""
        if variant == "L":
            return self.reuse_large
        if variant == "S":
            return self.reuse_small
        raise ValueError(f"variant must be 'L' or 'S', got {variant!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-types form, for checkpoints and run cards."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DyNetConfig:
        """Inverse of `to_dict`; lists (e.g. from JSON/YAML) become tuples again."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


# "large" and "small" are deliberately identical: one set of weights, the variant is per call.
_PRESETS: dict[str, DyNetConfig] = {
    "large": DyNetConfig(),
    "small": DyNetConfig(),
    # For CPU tests and smoke runs: widths 8/16/32/64, prompts scaled down accordingly.
    "tiny": DyNetConfig(
        width=8,
        heads=(1, 1, 2, 2),
        prompt_dims=(8, 16, 32),
        prompt_sizes=(16, 8, 4),
        prompt_heads=2,
        num_refinement=1,
    ),
}


def preset(name: str) -> DyNetConfig:
    """Config of a named preset: "large", "small" (the same config) or "tiny"."""
    try:
        return _PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown DyNet preset {name!r}; choose from {sorted(_PRESETS)}") from None


def preset_names() -> list[str]:
    """Names accepted by `preset`."""
    return sorted(_PRESETS)


class LayerNorm2d(nn.Module):
    """Restormer's layer norm over the channels of each pixel of a (B, C, H, W) map.

    "with_bias" is the usual layer norm (centred, affine with bias); "bias_free" divides by the
    standard deviation without centring and has no bias, as in Restormer.
    """

    def __init__(self, channels: int, kind: LayerNormType = "with_bias", eps: float = 1e-5):
        super().__init__()
        if kind not in ("with_bias", "bias_free"):
            raise ValueError(f"unknown layer norm type {kind!r}")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels)) if kind == "with_bias" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is not None:
            y = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)
            return y.permute(0, 3, 1, 2)
        var = x.var(dim=1, keepdim=True, unbiased=False)
        return x * torch.rsqrt(var + self.eps) * self.weight[:, None, None]


class MDTA(nn.Module):
    """Multi-Dconv head transposed attention: attention across channels, not pixels.

    Its cost is linear in the number of pixels (the attention map is (C/heads) x (C/heads)).
    """

    def __init__(self, channels: int, heads: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} heads")
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        self.qkv_dwconv = nn.Conv2d(
            3 * channels, 3 * channels, 3, padding=1, groups=3 * channels, bias=False
        )
        self.project_out = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        # (B, heads, C/heads, H*W); q and k are L2-normalised over pixels.
        q, k, v = (t.reshape(b, self.heads, c // self.heads, h * w) for t in (q, k, v))
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)
        out = (attn @ v).reshape(b, c, h, w)
        return self.project_out(out)


class GDFN(nn.Module):
    """Gated-Dconv feed-forward network: GELU(a) * b on a depthwise-convolved expansion."""

    def __init__(self, channels: int, expansion: float):
        super().__init__()
        hidden = int(channels * expansion)
        self.project_in = nn.Conv2d(channels, 2 * hidden, 1, bias=False)
        self.dwconv = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, bias=False)
        self.project_out = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(gate) * value)


class TransformerBlock(nn.Module):
    """Restormer block: x + MDTA(LN(x)), then x + GDFN(LN(x))."""

    def __init__(self, channels: int, heads: int, expansion: float, norm: LayerNormType):
        super().__init__()
        self.norm1 = LayerNorm2d(channels, norm)
        self.attn = MDTA(channels, heads)
        self.norm2 = LayerNorm2d(channels, norm)
        self.ffn = GDFN(channels, expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def _downsample(channels: int) -> nn.Sequential:
    """Halve H and W, double channels: 3x3 conv n -> n/2, then pixel-unshuffle(2)."""
    return nn.Sequential(
        nn.Conv2d(channels, channels // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2)
    )


def _upsample(channels: int) -> nn.Sequential:
    """Double H and W, halve channels: 3x3 conv n -> 2n, then pixel-shuffle(2)."""
    return nn.Sequential(
        nn.Conv2d(channels, 2 * channels, 3, padding=1, bias=False), nn.PixelShuffle(2)
    )


class PromptGen(nn.Module):
    """PromptIR prompt generation: an input-weighted mix of `length` learned D x S x S prompts.

    weights = softmax(Linear(global average pool of x)); the mix is resized bilinearly to x's
    H x W and passed through a 3x3 conv D -> D.
    """

    def __init__(self, in_channels: int, dim: int, size: int, length: int):
        super().__init__()
        self.prompts = nn.Parameter(torch.rand(length, dim, size, size))
        self.linear = nn.Linear(in_channels, length)
        self.conv = nn.Conv2d(dim, dim, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.linear(x.mean(dim=(2, 3))).softmax(dim=1)  # (B, length)
        # A broadcast weighted sum as in PromptIR, not a matmul: in the paper's FLOP accounting
        # this mix is neither a convolution nor a linear layer, and a matmul here would be
        # counted with the attention products (see training/flops.py).
        prompt = (weights[:, :, None, None, None] * self.prompts).sum(dim=1)
        prompt = F.interpolate(prompt, size=x.shape[2:], mode="bilinear", align_corners=False)
        return self.conv(prompt)


class PromptStage(nn.Module):
    """Prompt a feature map: concat a generated prompt, one transformer block, 1x1 reduction."""

    def __init__(self, in_channels: int, out_channels: int, dim: int, size: int, cfg: DyNetConfig):
        super().__init__()
        self.gen = PromptGen(in_channels, dim, size, cfg.prompt_len)
        self.block = TransformerBlock(
            in_channels + dim, cfg.prompt_heads, cfg.ffn_expansion, cfg.layer_norm
        )
        self.reduce = nn.Conv2d(in_channels + dim, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduce(self.block(torch.cat([x, self.gen(x)], dim=1)))


def _reuse(block: nn.Module, x: torch.Tensor, times: int) -> torch.Tensor:
    """Apply the same block `times` times in a row (DyNet's weight sharing)."""
    for _ in range(times):
        x = block(x)
    return x


class DyNet(nn.Module):
    """All-in-one restoration network; `forward(x, variant)` runs DyNet-L or DyNet-S.

    Widths for C = width: level 1..4 = C, 2C, 4C, 8C. The decoder's level-1 block and the
    refinement blocks work at 2C (the level-1 skip is concatenated without reduction).
    """

    multiple = 8  # three 2x downsamplings: H and W must divide by 8 inside the network

    def __init__(self, config: DyNetConfig | None = None):
        super().__init__()
        cfg = config or DyNetConfig()
        self.config = cfg
        c, heads, ffn, norm = cfg.width, cfg.heads, cfg.ffn_expansion, cfg.layer_norm

        def block(channels: int, n_heads: int) -> TransformerBlock:
            return TransformerBlock(channels, n_heads, ffn, norm)

        self.embed = nn.Conv2d(cfg.in_channels, c, 3, padding=1, bias=False)
        self.enc1 = block(c, heads[0])
        self.down1 = _downsample(c)
        self.enc2 = block(2 * c, heads[1])
        self.down2 = _downsample(2 * c)
        self.enc3 = block(4 * c, heads[2])
        self.down3 = _downsample(4 * c)
        self.latent = block(8 * c, heads[3])

        (d2, d3, dl), (s2, s3, sl) = cfg.prompt_dims, cfg.prompt_sizes
        self.prompt_latent = PromptStage(8 * c, 4 * c, dl, sl, cfg)
        self.prompt_skip3 = PromptStage(4 * c, 4 * c, d3, s3, cfg)
        self.prompt_skip2 = PromptStage(2 * c, 2 * c, d2, s2, cfg)

        self.up3 = _upsample(4 * c)
        self.fuse3 = nn.Conv2d(6 * c, 4 * c, 1, bias=False)
        self.dec3 = block(4 * c, heads[2])
        self.up2 = _upsample(4 * c)
        self.fuse2 = nn.Conv2d(4 * c, 2 * c, 1, bias=False)
        self.dec2 = block(2 * c, heads[1])
        self.up1 = _upsample(2 * c)
        self.dec1 = block(2 * c, heads[0])
        self.refinement = nn.Sequential(
            *(block(2 * c, heads[0]) for _ in range(cfg.num_refinement))
        )
        self.output = nn.Conv2d(2 * c, cfg.in_channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor, variant: Variant = "L") -> torch.Tensor:
        """Restore `x` (B, 3, H, W) with DyNet-L (`variant="L"`) or DyNet-S (`"S"`)."""
        f1, f2, f3, f4 = self.config.reuse(variant)
        h, w = x.shape[-2:]
        inp = _pad_to_multiple(x, self.multiple)

        skip1 = _reuse(self.enc1, self.embed(inp), f1)
        skip2 = _reuse(self.enc2, self.down1(skip1), f2)
        skip3 = _reuse(self.enc3, self.down2(skip2), f3)
        latent = _reuse(self.latent, self.down3(skip3), f4)

        y = self.prompt_latent(latent)
        y = self.fuse3(torch.cat([self.up3(y), self.prompt_skip3(skip3)], dim=1))
        y = _reuse(self.dec3, y, f3)
        y = self.fuse2(torch.cat([self.up2(y), self.prompt_skip2(skip2)], dim=1))
        y = _reuse(self.dec2, y, f2)
        y = torch.cat([self.up1(y), skip1], dim=1)
        y = _reuse(self.dec1, y, f1)
        y = self.output(self.refinement(y)) + inp  # global residual
        return y[..., :h, :w]


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the bottom/right of `x` so H and W divide by `multiple` (cropped back by the caller).

    Reflection avoids the artificial edges zero padding would put into the image; an input too
    small to reflect (a side shorter than the pad + 1) falls back to edge replication.
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if not (pad_h or pad_w):
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
