"""The ViT encoder's fused attention (scaled_dot_product_attention with the relative positions
as an additive bias, used on CUDA and MPS) gives the banded CPU path's answer.

No accelerator is needed: ``forced_attention`` makes the CPU take the fused path, and the
device decision itself is checked on its own.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sd_webui_sam import devices
from sd_webui_sam.modeling import ImageEncoderViT, build_sam, forced_attention
from sd_webui_sam.modeling import image_encoder as image_encoder_module
from sd_webui_sam.modeling.image_encoder import Attention
from tools.fixtures.sam_checkpoints import TINY, randomise_

TOLERANCE = 1e-5  # relative to the largest output value, float32


def assert_close_to_scale(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = float(expected.abs().max())
    difference = float((actual - expected).abs().max())
    assert difference <= TOLERANCE * max(scale, 1.0), f"max difference {difference:.3g} at scale {scale:.3g}"


def both_paths(module: torch.nn.Module, *inputs):
    with torch.inference_mode():
        with forced_attention(module, devices.ATTENTION_BANDED):
            banded = module(*inputs)
        with forced_attention(module, devices.ATTENTION_FUSED):
            fused = module(*inputs)
    return banded, fused


@pytest.fixture
def small_bands(monkeypatch):
    # Several query bands even at these small sizes, so the banded path really loops.
    monkeypatch.setattr(image_encoder_module, "CPU_LOGITS_PER_STEP", 700)


@pytest.mark.parametrize("grid", [(11, 11), (9, 13), (7, 5)])
def test_global_attention_with_relative_positions_matches(grid, small_bands):
    torch.manual_seed(0)
    # Trained at 11x11: the other grids resample the relative-position tables.
    attention = randomise_(Attention(48, num_heads=3, use_rel_pos=True, input_size=(11, 11)), seed=1)
    x = torch.randn(2, *grid, 48)
    banded, fused = both_paths(attention, x)
    assert fused.shape == (2, *grid, 48)
    assert_close_to_scale(fused, banded)


def test_attention_without_relative_positions_matches(small_bands):
    torch.manual_seed(0)
    attention = randomise_(Attention(32, num_heads=4, use_rel_pos=False), seed=2)
    banded, fused = both_paths(attention, torch.randn(1, 6, 9, 32))
    assert_close_to_scale(fused, banded)


def small_vit(img_size: int) -> ImageEncoderViT:
    """Windowed and global blocks; a grid that is not a multiple of the window, so windows pad."""
    torch.manual_seed(0)
    encoder = ImageEncoderViT(img_size=img_size, patch_size=16, embed_dim=32, depth=4, num_heads=2, out_chans=16,
                              window_size=4, global_attn_indexes=(1, 3))
    return randomise_(encoder, seed=3)


@pytest.mark.parametrize("img_size", [16 * 11, 16 * 8])
def test_small_vit_with_windowed_and_global_blocks_matches(img_size, small_bands):
    encoder = small_vit(img_size)
    pixels = torch.randn(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(4))
    banded, fused = both_paths(encoder, pixels)
    assert_close_to_scale(fused, banded)
    with torch.inference_mode():
        with forced_attention(encoder, devices.ATTENTION_BANDED):
            _, banded_interm = encoder.forward_with_interm(pixels)
        with forced_attention(encoder, devices.ATTENTION_FUSED):
            _, fused_interm = encoder.forward_with_interm(pixels)
    assert len(fused_interm) == 2  # HQ-SAM fuses these: one per global block
    for fused_block, banded_block in zip(fused_interm, banded_interm):
        assert_close_to_scale(fused_block, banded_block)


def test_full_size_encoder_output_matches():
    """The SAM encoder at its real input (1024x1024, 14x14 windows padded to 70x70, 64x64
    global blocks), reduced width and depth."""
    model = build_sam({
        "encoder_embed_dim": TINY.embed_dim,
        "encoder_depth": TINY.depth,
        "encoder_num_heads": TINY.num_heads,
        "encoder_global_attn_indexes": tuple(TINY.global_attn_indexes),
    })
    randomise_(model, seed=5)
    pixels = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        banded = model.encode_image(pixels)["image_embeddings"]
        with forced_attention(model, devices.ATTENTION_FUSED):
            fused = model.encode_image(pixels)["image_embeddings"]
    assert fused.shape == (1, 256, 64, 64)
    assert_close_to_scale(fused, banded)


def test_forced_attention_restores_the_device_choice():
    encoder = small_vit(16 * 8)
    with forced_attention(encoder, devices.ATTENTION_FUSED):
        assert all(block.attn.kernel_override == "fused" for block in encoder.blocks)
    assert all(block.attn.kernel_override is None for block in encoder.blocks)
    with pytest.raises(ValueError, match="unknown attention kernel"):
        with forced_attention(encoder, "flash"):
            pass


@pytest.mark.parametrize("device, kernel", [("cpu", "banded"), ("cuda", "fused"), ("cuda:1", "fused"), ("mps", "fused")])
def test_the_device_chooses_the_kernel(device, kernel):
    assert devices.attention_kernel(torch.device(device)) == kernel


def test_cpu_tensors_take_the_banded_path_and_forced_ones_the_fused_kernel(monkeypatch):
    calls = []
    real_sdpa = F.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        calls.append(kwargs.get("attn_mask"))
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(image_encoder_module.F, "scaled_dot_product_attention", counting_sdpa)
    encoder = small_vit(16 * 8)
    pixels = torch.randn(1, 3, 128, 128)
    with torch.inference_mode():
        encoder(pixels)
        assert calls == []
        with forced_attention(encoder, devices.ATTENTION_FUSED):
            encoder(pixels)
    assert len(calls) == 4  # one per block
    # The bias is float in the query dtype, (B, heads, q, k): what SDPA accepts on torch 2.1 and 2.3.
    global_bias = calls[1]
    assert global_bias.dtype == torch.float32 and global_bias.shape == (1, 2, 64, 64)
    assert calls[0].shape == (4, 2, 16, 16)  # four 4x4 windows


def test_the_bias_rows_are_aligned_for_the_memory_efficient_kernel():
    # A 14x14 window has 196 keys: the rows start at multiples of 16 elements all the same, so
    # the kernel takes the bias as it is instead of copying it into a padded one.
    term_h, term_w = torch.randn(3, 14, 14, 14), torch.randn(3, 14, 14, 14)
    bias = image_encoder_module.rel_pos_bias(term_h, term_w)
    assert bias.shape == (3, 196, 196)
    assert bias.stride(-1) == 1 and bias.stride(-2) % 16 == 0 and bias.stride(0) % 16 == 0
    expected = (term_h[..., :, None] + term_w[..., None, :]).reshape(3, 196, 196)
    torch.testing.assert_close(bias, expected, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_on_cuda_the_device_picks_the_fused_kernel_and_it_matches(dtype, tolerance):
    encoder = small_vit(16 * 11)
    pixels = torch.randn(2, 3, 176, 176, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        expected = encoder(pixels)  # fp32 on the CPU, banded
        encoder.to(device="cuda", dtype=dtype)
        actual = encoder(pixels.to("cuda", dtype)).float().cpu()
    difference = float((actual - expected).abs().max())
    assert difference <= tolerance * float(expected.abs().max()), difference
