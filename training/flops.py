"""Parameter and FLOP counts of DyNet, counted the way the paper reports them.

FLOPs are 2 x the multiply-adds of convolutions and linear layers; the attention matrix
products of MDTA (q @ k^T and attn @ v) are left out unless asked for. Counting uses torch's
own `FlopCounterMode`, which tallies per aten op: convolutions arrive as `aten.convolution`,
linear layers as `aten.addmm` / `aten.mm` (2-D inputs), and the attention products, being
batched 4-D matmuls, as `aten.bmm`. That op split is exactly the paper's split, so no hooks are
needed. The forward runs on the meta device (shapes only), so counting the full model at
224 x 224 takes about a second on CPU and allocates no activations.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from training.model import DyNet, Variant, preset

_aten = torch.ops.aten
# Ops that come from convolutions and linear layers (the paper's count).
_DENSE_OPS = {_aten.convolution, _aten.addmm, _aten.mm}
# Ops that come from the attention matrix products (batched matmuls in MDTA).
_ATTENTION_OPS = {_aten.bmm, _aten.baddbmm}


def count_params(model: nn.Module) -> int:
    """Number of parameters (all of them; DyNet has no frozen or buffer-only weights)."""
    return sum(p.numel() for p in model.parameters())


def flop_breakdown(
    model: nn.Module, size: tuple[int, int] = (224, 224), variant: Variant = "L"
) -> dict[str, int]:
    """FLOPs of one forward of a single (1, 3, H, W) image, split by origin.

    Returns {"dense": convolutions + linear layers, "attention": attention products,
    "other": any other op FlopCounterMode counts}. Does not touch `model` itself: a copy on the
    meta device is run, so real weights never see a forward.
    """
    meta = model if _on_meta(model) else copy.deepcopy(model).to("meta")
    x = torch.empty(1, 3, *size, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta(x, variant=variant)
    totals = {"dense": 0, "attention": 0, "other": 0}
    for op, flops in counter.get_flop_counts()["Global"].items():
        if op in _DENSE_OPS:
            totals["dense"] += flops
        elif op in _ATTENTION_OPS:
            totals["attention"] += flops
        else:
            totals["other"] += flops
    return totals


def count_gflops(
    model: nn.Module,
    size: tuple[int, int] = (224, 224),
    variant: Variant = "L",
    include_attention: bool = False,
) -> float:
    """GFLOPs (1e9) of one forward of a single H x W image, the paper's way.

    `size` is (H, W) in pixels. With `include_attention` the MDTA matrix products are added.
    """
    b = flop_breakdown(model, size, variant)
    total = b["dense"] + (b["attention"] if include_attention else 0)
    return total / 1e9


def model_info(
    preset_name: str, size: tuple[int, int] = (224, 224), variant: Variant | None = None
) -> dict[str, Any]:
    """Parameters (millions) and GFLOPs of a preset, for `curate model info`.

    `variant` None reports both DyNet-L and DyNet-S (they share the parameters); "L" or "S"
    reports that one only. GFLOPs are given without and with the attention products.
    """
    cfg = preset(preset_name)
    with torch.device("meta"):
        model = DyNet(cfg)
    info: dict[str, Any] = {
        "preset": preset_name,
        "width": cfg.width,
        "size": list(size),
        "params_m": count_params(model) / 1e6,
        "variants": {},
    }
    for v in ("L", "S") if variant is None else (variant,):
        b = flop_breakdown(model, size, v)
        info["variants"][v] = {
            "reuse": list(cfg.reuse(v)),
            "gflops": b["dense"] / 1e9,
            "gflops_with_attention": (b["dense"] + b["attention"]) / 1e9,
        }
    return info


def _on_meta(model: nn.Module) -> bool:
    return all(p.is_meta for p in model.parameters())
