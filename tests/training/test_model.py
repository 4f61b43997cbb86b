"""DyNet model: shapes, shared weights across variants, the paper's size/FLOP figures, learning."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from training.flops import count_gflops, count_params, flop_breakdown, model_info
from training.model import DyNet, DyNetConfig, preset, preset_names


def tiny_model(seed: int = 0) -> DyNet:
    torch.manual_seed(seed)
    return DyNet(preset("tiny")).eval()


def meta_model(name: str = "large") -> DyNet:
    """Full-size model without allocating weights: enough for counting params and FLOPs."""
    with torch.device("meta"):
        return DyNet(preset(name))


@pytest.fixture(scope="module")
def tiny() -> DyNet:
    return tiny_model()


# (H, W): multiples of 8, not multiples of 8, and too small to pad by reflection.
@pytest.mark.parametrize("size", [(64, 64), (40, 56), (37, 53), (3, 5)])
@pytest.mark.parametrize("variant", ["L", "S"])
def test_output_has_input_shape(tiny: DyNet, size: tuple[int, int], variant: str) -> None:
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        y = tiny(x, variant=variant)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_odd_sizes_are_reflect_padded_to_a_multiple_of_8_and_cropped(tiny: DyNet) -> None:
    # 37 x 53 -> 40 x 56: the documented behaviour, checked against padding by hand.
    x = torch.rand(2, 3, 37, 53)
    with torch.no_grad():
        y = tiny(x, variant="S")
        by_hand = tiny(F.pad(x, (0, 3, 0, 3), mode="reflect"), variant="S")[..., :37, :53]
    torch.testing.assert_close(y, by_hand)


def test_variants_differ_with_same_weights(tiny: DyNet) -> None:
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        large, small = tiny(x, variant="L"), tiny(x, variant="S")
    assert (large - small).abs().max() > 1e-3


def test_one_state_dict_serves_both_variants(tiny: DyNet) -> None:
    other = tiny_model(seed=1)
    x = torch.rand(2, 3, 24, 40)
    with torch.no_grad():
        assert not torch.allclose(other(x, variant="L"), tiny(x, variant="L"))
        other.load_state_dict(tiny.state_dict(), strict=True)
        for variant in ("L", "S"):
            torch.testing.assert_close(other(x, variant=variant), tiny(x, variant=variant))


def test_unknown_variant_and_preset_are_rejected(tiny: DyNet) -> None:
    with pytest.raises(ValueError, match="variant"):
        tiny(torch.rand(1, 3, 8, 8), variant="M")
    with pytest.raises(ValueError, match="preset"):
        preset("huge")


def test_large_and_small_presets_are_one_model() -> None:
    assert preset("large") == preset("small")
    assert set(preset_names()) == {"large", "small", "tiny"}


def test_config_round_trips_through_plain_types() -> None:
    cfg = preset("tiny")
    data = cfg.to_dict()
    # As a checkpoint or YAML would give it back: tuples become lists.
    as_lists = {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}
    assert DyNetConfig.from_dict(as_lists) == cfg


def test_param_count_matches_paper() -> None:
    model = meta_model()
    assert round(count_params(model) / 1e6, 2) == 16.61
    # Reuse frequencies share weights, so they must not change the parameter count.
    with torch.device("meta"):
        no_reuse = DyNet(DyNetConfig(reuse_large=(1, 1, 1, 1), reuse_small=(1, 1, 1, 1)))
    assert count_params(no_reuse) == count_params(model)


@pytest.mark.parametrize(
    ("variant", "gflops", "with_attention"), [("L", 242.2, 264.4), ("S", 166.2, 181.6)]
)
def test_gflops_at_224_match_paper(variant: str, gflops: float, with_attention: float) -> None:
    model = meta_model()
    assert count_gflops(model, (224, 224), variant) == pytest.approx(gflops, abs=0.1)
    assert count_gflops(model, (224, 224), variant, include_attention=True) == pytest.approx(
        with_attention, abs=0.1
    )


def test_flop_count_leaves_a_real_model_untouched(tiny: DyNet) -> None:
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    breakdown = flop_breakdown(tiny, (64, 64), "L")
    assert breakdown["dense"] > 0 and breakdown["attention"] > 0
    assert all(p.device.type == "cpu" for p in tiny.parameters())
    for key, value in tiny.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_model_info_reports_both_variants() -> None:
    info = model_info("large", (224, 224))
    assert round(info["params_m"], 2) == 16.61
    assert info["variants"]["L"]["reuse"] == [4, 6, 6, 8]
    assert info["variants"]["S"]["reuse"] == [2, 3, 3, 4]
    assert info["variants"]["L"]["gflops"] == pytest.approx(242.2, abs=0.1)
    assert info["variants"]["S"]["gflops_with_attention"] == pytest.approx(181.6, abs=0.1)
    assert set(model_info("tiny", (64, 64), "S")["variants"]) == {"S"}


def test_tiny_model_overfits_a_few_patches() -> None:
    # Smooth random "clean" patches with fixed noise; training alternates L and S on the shared
    # weights as DyNet's pretraining does, and both variants must learn to denoise.
    torch.manual_seed(0)
    clean = F.interpolate(torch.rand(4, 3, 4, 4), size=(16, 16), mode="bilinear")
    noisy = clean + 0.1 * torch.randn_like(clean)
    model = DyNet(preset("tiny"))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss(variant: str) -> float:
        with torch.no_grad():
            return F.l1_loss(model(noisy, variant=variant), clean).item()

    start = {v: loss(v) for v in ("L", "S")}
    for step in range(40):
        out = model(noisy, variant="L" if step % 2 == 0 else "S")
        opt.zero_grad()
        F.l1_loss(out, clean).backward()
        opt.step()
    for variant in ("L", "S"):
        assert loss(variant) < 0.5 * start[variant], (variant, start[variant], loss(variant))


@pytest.mark.gpu
def test_cuda_forward_matches_cpu(tiny: DyNet) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    x = torch.rand(2, 3, 40, 56)
    gpu = copy.deepcopy(tiny).cuda()
    # TF32 would make CUDA convolutions differ from CPU by ~1e-3; compare full fp32.
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            for variant in ("L", "S"):
                expected = tiny(x, variant=variant)
                got = gpu(x.cuda(), variant=variant).cpu()
                torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
