"""Our SAM modules against the reference implementation, with the same random weights
loaded from a real checkpoint file."""
from __future__ import annotations

import pytest
import torch

from sd_webui_sam.modeling import ImageEncoderViT, SamSegmenter, build_sam
from sd_webui_sam.modeling.image_encoder import add_decomposed_rel_pos, relative_position_table
from tests.fixtures.mask_compare import assert_masks_match
from tools.fixtures.sam_checkpoints import TINY

TINY_CONFIG = {
    "encoder_embed_dim": TINY.embed_dim,
    "encoder_depth": TINY.depth,
    "encoder_num_heads": TINY.num_heads,
    "encoder_global_attn_indexes": tuple(TINY.global_attn_indexes),
}


def load_ours(path, config=TINY_CONFIG) -> SamSegmenter:
    model = build_sam(config)
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def models(tiny_sam):
    path, reference = tiny_sam
    return load_ours(path), reference.eval()


@pytest.fixture(scope="module")
def embeddings(models):
    ours, reference = models
    generator = torch.Generator().manual_seed(7)
    pixels = torch.randn((1, 3, 1024, 1024), generator=generator)
    with torch.inference_mode():
        expected = reference.image_encoder(pixels)
        features = ours.encode_image(pixels)
    return pixels, expected, features


def test_state_dict_keys_and_shapes_match_official_layout(models):
    ours, reference = models
    ours_shapes = {key: tuple(value.shape) for key, value in ours.state_dict().items()}
    reference_shapes = {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    assert ours_shapes == reference_shapes
    assert "pixel_mean" not in ours_shapes and "pixel_std" not in ours_shapes
    assert torch.equal(ours.pixel_mean, reference.pixel_mean)
    assert torch.equal(ours.pixel_std, reference.pixel_std)


def test_strict_load_refuses_missing_or_extra_keys(tiny_sam):
    path, _ = tiny_sam
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    state_dict.pop("mask_decoder.iou_token.weight")
    with pytest.raises(RuntimeError, match="iou_token"):
        build_sam(TINY_CONFIG).load_state_dict(state_dict, strict=True)


def test_image_encoder_matches_reference(embeddings):
    _, expected, features = embeddings
    assert features["image_embeddings"].shape == (1, 256, 64, 64)
    torch.testing.assert_close(features["image_embeddings"], expected, atol=1e-5, rtol=1e-5)


def test_forward_with_interm_returns_global_block_outputs(models, embeddings):
    ours, reference = models
    pixels, expected, _ = embeddings
    captured = []
    hooks = [
        reference.image_encoder.blocks[index].register_forward_hook(lambda _m, _i, out: captured.append(out))
        for index in TINY.global_attn_indexes
    ]
    try:
        with torch.inference_mode():
            reference.image_encoder(pixels)
            final, interm = ours.image_encoder.forward_with_interm(pixels)
    finally:
        for hook in hooks:
            hook.remove()
    torch.testing.assert_close(final, expected, atol=1e-5, rtol=1e-5)
    assert len(interm) == len(TINY.global_attn_indexes)
    for ours_block, reference_block in zip(interm, captured):
        assert ours_block.shape == (1, 64, 64, TINY.embed_dim)
        torch.testing.assert_close(ours_block, reference_block, atol=1e-5, rtol=1e-5)


PROMPT_CASES = {
    "one point": dict(points=[[[500.0, 375.0]]], labels=[[1]], boxes=None),
    "points and negatives": dict(points=[[[500.0, 375.0], [120.0, 80.0], [900.0, 20.0]]], labels=[[1, 0, 0]], boxes=None),
    "box": dict(points=None, labels=None, boxes=[[100.0, 150.0, 700.0, 640.0]]),
    "box and points": dict(points=[[[400.0, 400.0], [650.0, 200.0]]], labels=[[1, 0]], boxes=[[100.0, 150.0, 700.0, 640.0]]),
    "several boxes": dict(points=None, labels=None, boxes=[[0.0, 0.0, 300.0, 300.0], [200.0, 500.0, 1000.0, 1000.0], [5.0, 600.0, 50.0, 700.0]]),
    "several boxes with padded points": dict(
        points=[[[100.0, 100.0], [0.0, 0.0]], [[300.0, 700.0], [600.0, 900.0]]],
        labels=[[1, -1], [1, 0]],
        boxes=[[0.0, 0.0, 300.0, 300.0], [200.0, 500.0, 1000.0, 1000.0]],
    ),
}


DECODER_CASES = [(case, multimask, False) for case in sorted(PROMPT_CASES) for multimask in (True, False)] + [
    ("one point", True, True),
    ("several boxes with padded points", False, True),
]


@pytest.mark.parametrize("case,multimask,with_mask", DECODER_CASES)
def test_decoder_matches_reference(models, embeddings, case, multimask, with_mask):
    ours, reference = models
    _, expected_embedding, features = embeddings
    prompt = PROMPT_CASES[case]
    coords = torch.tensor(prompt["points"]) if prompt["points"] is not None else None
    labels = torch.tensor(prompt["labels"], dtype=torch.int) if prompt["labels"] is not None else None
    boxes = torch.tensor(prompt["boxes"]) if prompt["boxes"] is not None else None
    batch = (coords if coords is not None else boxes).shape[0]
    mask_input = torch.randn((batch, 1, 256, 256), generator=torch.Generator().manual_seed(3)) * 4 if with_mask else None
    with torch.inference_mode():
        sparse, dense = reference.prompt_encoder(points=(coords, labels) if coords is not None else None, boxes=boxes, masks=mask_input)
        expected_logits, expected_iou = reference.mask_decoder(
            expected_embedding, reference.prompt_encoder.get_dense_pe(), sparse, dense, multimask
        )
        logits, iou = ours.decode(
            features,
            point_coords=coords,
            point_labels=labels,
            boxes=boxes,
            mask_input=mask_input,
            multimask_output=multimask,
        )
    channels = 3 if multimask else 1
    assert logits.shape == (batch, channels, 256, 256)
    assert iou.shape == (batch, channels)
    torch.testing.assert_close(logits, expected_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(iou, expected_iou, atol=1e-4, rtol=1e-4)
    assert_masks_match((logits > 0).numpy(), expected_logits.numpy())


@pytest.mark.parametrize("pixels_per_step", [256 * 256, 2 * 256 * 256, 256 * 40], ids=["prompt", "two prompts", "bands"])
def test_decoder_fast_paths_equal_the_plain_computation(models, monkeypatch, pixels_per_step):
    """One image shared by every prompt (projected once) and per-prompt image tokens (projections
    folded into the prompt tokens) give the same tokens; the token-layout upscaling gives the
    same logits as the transposed convolutions."""
    from sd_webui_sam.modeling import mask_decoder

    monkeypatch.setattr(mask_decoder, "CPU_UPSCALE_PIXELS_PER_STEP", pixels_per_step)
    ours, _ = models
    decoder = ours.mask_decoder
    generator = torch.Generator().manual_seed(11)
    image = torch.randn((1, 256, 64, 64), generator=generator)
    tokens = torch.randn((5, 7, 256), generator=generator)
    pe = ours.prompt_encoder.get_dense_pe()
    with torch.inference_mode():
        shared_tokens, shared_image = decoder.transformer(image, pe, tokens)
        per_prompt_tokens, per_prompt_image = decoder.transformer(image.repeat(5, 1, 1, 1), pe, tokens)
        torch.testing.assert_close(shared_tokens, per_prompt_tokens, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(shared_image, per_prompt_image, atol=1e-5, rtol=1e-5)

        weights = torch.randn((5, 4, 32), generator=generator)
        fast = decoder.masks_from_image_tokens(weights, shared_image, (64, 64))
        src = shared_image.transpose(1, 2).reshape(5, 256, 64, 64)
        plain = decoder.masks_from_weights(weights, decoder.upscale(src))
        torch.testing.assert_close(fast, plain, atol=1e-4, rtol=1e-4)


def test_prepared_image_is_the_plain_pass_and_never_stale(tiny_sam):
    """Every prompt on one image reuses the first block's prepared image side: the tokens are the
    plain pass's, for each new image, after the weights change in place, and with a mask input
    (which is not prepared)."""
    path, _ = tiny_sam
    decoder = load_ours(path).mask_decoder  # its own copy: the weights are changed below
    generator = torch.Generator().manual_seed(5)
    pe = torch.randn((1, 256, 64, 64), generator=generator)
    tokens = torch.randn((2, 7, 256), generator=generator)
    no_mask = torch.randn((1, 256, 1, 1), generator=generator).expand(2, -1, 64, 64)

    def check(image, dense):
        with torch.inference_mode():
            got = decoder.run_transformer_tokens(image, pe, dense, tokens)
            plain = decoder.transformer(image + dense[:1] if dense.stride(0) == 0 else image + dense, pe, tokens)
        for ours, expected in zip(got, plain):
            torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
        return got

    first, second = (torch.randn((1, 256, 64, 64), generator=generator) for _ in range(2))
    answer = check(first, no_mask)
    assert decoder._prepared_image is not None
    again = check(first, no_mask)
    assert all(torch.equal(a, b) for a, b in zip(answer, again))  # the same answer whether kept or made
    check(second, no_mask)
    check(first, no_mask)
    with torch.no_grad():
        decoder.transformer.layers[0].cross_attn_token_to_image.v_proj.weight.mul_(1.5)
    changed = check(first, no_mask)
    assert not torch.allclose(changed[0], answer[0])
    check(first, torch.randn((2, 256, 64, 64), generator=generator))
    check(first, no_mask)
    decoder.to("cpu")  # a move lets go of the kept step (it would hold memory on the old device)
    assert decoder._prepared_image is None


def test_prepared_image_with_weights_made_under_inference_mode(tiny_sam):
    """Forge builds its models under torch.inference_mode: their weights are inference tensors,
    which keep no version count. A click on such a model still gets the plain pass's answer."""
    path, _ = tiny_sam
    with torch.inference_mode():
        decoder = load_ours(path).mask_decoder
        assert decoder.transformer.layers[0].cross_attn_token_to_image.k_proj.weight.is_inference()
        generator = torch.Generator().manual_seed(6)
        image, pe = (torch.randn((1, 256, 64, 64), generator=generator) for _ in range(2))
        tokens = torch.randn((1, 7, 256), generator=generator)
        no_mask = torch.randn((1, 256, 1, 1), generator=generator).expand(1, -1, 64, 64)
        for _ in range(2):  # made, then kept
            got = decoder.run_transformer_tokens(image, pe, no_mask, tokens)
            plain = decoder.transformer(image + no_mask, pe, tokens)
            for ours, expected in zip(got, plain):
                torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
        assert decoder._prepared_image is not None


def test_dense_positional_encoding_follows_weight_changes(models):
    ours, reference = models
    with torch.inference_mode():
        first = ours.prompt_encoder.get_dense_pe()
        torch.testing.assert_close(first, reference.prompt_encoder.get_dense_pe(), atol=1e-6, rtol=0)
        changed = build_sam(TINY_CONFIG)
        before = changed.prompt_encoder.get_dense_pe().clone()
        changed.load_state_dict(ours.state_dict(), strict=True)
        after = changed.prompt_encoder.get_dense_pe()
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, first)


@pytest.mark.parametrize("q_size,k_size,table_len", [(14, 14, 27), (64, 64, 127), (20, 20, 27), (8, 16, 31), (16, 8, 31)])
def test_relative_positions_match_reference_including_interpolation(q_size, k_size, table_len):
    from segment_anything.modeling.image_encoder import add_decomposed_rel_pos as reference_add
    from segment_anything.modeling.image_encoder import get_rel_pos

    generator = torch.Generator().manual_seed(q_size * 100 + k_size)
    table = torch.randn((table_len, 8), generator=generator)
    torch.testing.assert_close(relative_position_table(q_size, k_size, table), get_rel_pos(q_size, k_size, table))
    q = torch.randn((2, q_size * q_size, 8), generator=generator)
    attn = torch.randn((2, q_size * q_size, k_size * k_size), generator=generator)
    sizes = ((q_size, q_size), (k_size, k_size))
    torch.testing.assert_close(
        add_decomposed_rel_pos(attn, q, table, table, *sizes), reference_add(attn, q, table, table, *sizes)
    )


def test_window_attention_pads_grids_that_do_not_divide_the_window():
    from segment_anything.modeling import ImageEncoderViT as ReferenceEncoder

    from tools.fixtures.sam_checkpoints import randomise_

    kwargs = dict(img_size=320, patch_size=16, embed_dim=16, depth=2, num_heads=2, window_size=7, global_attn_indexes=(1,))
    reference = ReferenceEncoder(
        **kwargs, use_rel_pos=True, out_chans=32, norm_layer=lambda dim: torch.nn.LayerNorm(dim, eps=1e-6)
    )
    randomise_(reference, seed=5)
    ours = ImageEncoderViT(**kwargs, out_chans=32)
    ours.load_state_dict(reference.state_dict(), strict=True)
    pixels = torch.randn((2, 3, 320, 320), generator=torch.Generator().manual_seed(9))
    with torch.inference_mode():
        torch.testing.assert_close(ours(pixels), reference(pixels), atol=1e-5, rtol=1e-5)
