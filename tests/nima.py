"""A NIMA checkpoint with seeded random weights, in the format pyiqa reads (offline tests)."""

from __future__ import annotations

from pathlib import Path


def make_random_nima_checkpoint(path: Path) -> Path:
    import timm
    import torch

    torch.manual_seed(0)
    backbone = timm.create_model("inception_resnet_v2", pretrained=False, features_only=True)
    state = {f"base_model.{k}": v for k, v in backbone.state_dict().items()}
    channels = backbone.feature_info.channels()[-1]
    state["classifier.2.weight"] = torch.randn(10, channels) * 0.5
    state["classifier.2.bias"] = torch.zeros(10)
    torch.save({"params": state}, path)
    return path
