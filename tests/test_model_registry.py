"""Identifying checkpoints from key names and shapes, and building models from them."""
from __future__ import annotations

import json
import struct
import textwrap
from functools import partial
from pathlib import Path
from typing import Dict, Tuple

import pytest
import torch

from sd_webui_sam import checkpoints, model_registry
from sd_webui_sam.errors import CorruptCheckpointError, UnrecognisedCheckpointError
from sd_webui_sam.families import SamFamily
from tools.fixtures.sam_checkpoints import TINY, VIT_B, VIT_H, VIT_L, VitShape, save_state_dict

Shapes = Dict[str, Tuple[int, ...]]


def reference_sam_shapes(shape: VitShape) -> Shapes:
    """Key names and shapes of the official layout at any size, built on the meta device (no memory)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    with torch.device("meta"):
        model = Sam(
            image_encoder=ImageEncoderViT(
                depth=shape.depth, embed_dim=shape.embed_dim, img_size=1024, mlp_ratio=4,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=shape.num_heads, patch_size=16,
                qkv_bias=True, use_rel_pos=True, global_attn_indexes=tuple(shape.global_attn_indexes),
                window_size=14, out_chans=256,
            ),
            prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
            ),
        )
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def write_sparse_safetensors(shapes: Shapes, path: Path) -> Path:
    """A float32 .safetensors file with a real header and unwritten (sparse, zero) data."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4 * int(torch.Size(shape).numel())
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + offset)
    return path


@pytest.fixture
def tiny_state_dict(tiny_sam):
    path, _ = tiny_sam
    return checkpoints.load_state_dict(path)


def _shapes(state_dict) -> Shapes:
    return {name: tuple(tensor.shape) for name, tensor in state_dict.items()}


# ---------------------------------------------------------------- identification


def test_tiny_sam_is_identified_as_custom_with_derived_hyper_parameters(tiny_state_dict):
    spec = model_registry.identify(_shapes(tiny_state_dict))
    assert spec.family == "sam" and spec.variant == "custom"
    assert spec.label == "SAM ViT (custom: dim 32, depth 4)"
    assert dict(spec.config) == {
        "encoder_embed_dim": 32,
        "encoder_depth": 4,
        "encoder_num_heads": 2,
        "encoder_global_attn_indexes": (1, 3),
        "window_size": 14,
        "image_size": 1024,
        "patch_size": 16,
        "prompt_embed_dim": 256,
    }


@pytest.mark.parametrize(
    "shape, variant, label",
    [(VIT_B, "vit_b", "SAM ViT-B"), (VIT_L, "vit_l", "SAM ViT-L"), (VIT_H, "vit_h", "SAM ViT-H")],
)
def test_official_sizes_are_named_by_their_variant(shape, variant, label):
    spec = model_registry.identify(reference_sam_shapes(shape))
    assert (spec.family, spec.variant, spec.label) == ("sam", variant, label)
    assert spec.config["encoder_num_heads"] == shape.num_heads
    assert tuple(spec.config["encoder_global_attn_indexes"]) == tuple(shape.global_attn_indexes)


def test_other_window_and_global_layouts_are_derived_not_assumed():
    shape = VitShape(embed_dim=48, depth=3, num_heads=3, global_attn_indexes=(0,))
    shapes = reference_sam_shapes(shape)
    spec = model_registry.identify(shapes)
    assert spec.config["encoder_num_heads"] == 3
    assert tuple(spec.config["encoder_global_attn_indexes"]) == (0,)
    # A window of 8 instead of 14: relative-position tables of length 2*8-1.
    for index in (1, 2):
        for axis in ("h", "w"):
            shapes[f"image_encoder.blocks.{index}.attn.rel_pos_{axis}"] = (15, 16)
    assert model_registry.identify(shapes).config["window_size"] == 8


def test_real_sized_file_is_identified_from_its_header_whatever_its_name(tmp_path):
    path = write_sparse_safetensors(reference_sam_shapes(VIT_B), tmp_path / "my favourite model.safetensors")
    assert model_registry.identify(checkpoints.read_shapes(path)).label == "SAM ViT-B"


def test_plain_sam_refuses_hq_and_tinyvit_layouts(tiny_state_dict):
    shapes = _shapes(tiny_state_dict)
    family = SamFamily()
    assert family.identify(shapes) is not None

    with_hq_token = {**shapes, "mask_decoder.hf_token.weight": (1, 256), "mask_decoder.hf_mlp.layers.0.weight": (256, 256)}
    assert family.identify(with_hq_token) is None
    with_hq_fusion = {**shapes, "mask_decoder.compress_vit_feat.0.weight": (32, 256, 2, 2)}
    assert family.identify(with_hq_fusion) is None

    tiny_vit = {name: shape for name, shape in shapes.items() if not name.startswith("image_encoder.")}
    tiny_vit.update({
        "image_encoder.patch_embed.seq.0.c.weight": (32, 3, 3, 3),
        "image_encoder.layers.0.blocks.0.conv1.c.weight": (128, 64, 1, 1),
        "image_encoder.neck.0.weight": (256, 320, 1, 1),
    })
    assert family.identify(tiny_vit) is None


def test_each_layout_is_claimed_by_exactly_one_family(tiny_state_dict):
    shapes = _shapes(tiny_state_dict)
    claims = [family.name for family in model_registry.all_families() if family.identify(shapes) is not None]
    assert claims == ["sam"]


def test_groundingdino_checkpoint_gets_told_where_it_belongs(tmp_path):
    weights = {
        "module.backbone.0.patch_embed.proj.weight": torch.zeros(8, 3, 4, 4),
        "module.bert.embeddings.word_embeddings.weight": torch.zeros(10, 8),
        "module.transformer.encoder.layers.0.self_attn.value_proj.weight": torch.zeros(8, 8),
        "module.feat_map.weight": torch.zeros(8, 8),
        "module.bbox_embed.0.layers.0.weight": torch.zeros(8, 8),
    }
    path = tmp_path / "groundingdino_swint_ogc.pth"
    torch.save({"model": weights, "optimizer": {}, "epoch": 11}, path)
    with pytest.raises(UnrecognisedCheckpointError) as raised:
        model_registry.identify(checkpoints.read_shapes(path))
    assert "GroundingDINO" in str(raised.value) and "models/grounding-dino" in str(raised.value)


def test_unknown_layout_message_lists_prefixes_and_tensor_count():
    shapes = {f"encoder.layer.{index}.weight": (4, 4) for index in range(5)}
    shapes.update({"decoder.head.weight": (2, 4), "decoder.head.bias": (2,)})
    with pytest.raises(UnrecognisedCheckpointError) as raised:
        model_registry.identify(shapes)
    message = str(raised.value)
    assert "7 tensors" in message
    assert "encoder (5)" in message and "decoder (2)" in message


def test_missing_or_broken_family_module_does_not_break_sam(tiny_state_dict, tmp_path, monkeypatch):
    (tmp_path / "broken_family_for_test.py").write_text("import a_dependency_that_is_not_installed\n")
    (tmp_path / "crashing_family_for_test.py").write_text(textwrap.dedent(
        """
        class Crashes:
            name = "crashes"
            def identify(self, shapes):
                raise ValueError("bug in a family")
            def build(self, spec):
                raise AssertionError
        FAMILIES = (Crashes(),)
        """
    ))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(
        model_registry,
        "FAMILY_MODULES",
        ("no_such_package.families", "broken_family_for_test", "crashing_family_for_test", "sd_webui_sam.families"),
    )
    assert [family.name for family in model_registry.all_families()] == ["crashes", "sam"]
    assert model_registry.identify(_shapes(tiny_state_dict)).family == "sam"


# ---------------------------------------------------------------- building


def test_build_model_loads_every_weight(tiny_sam, tiny_state_dict):
    _, reference = tiny_sam
    spec = model_registry.identify(_shapes(tiny_state_dict))
    model = model_registry.build_model(spec, tiny_state_dict)
    assert not model.training
    ours = model.state_dict()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(ours[name], tensor), name


def test_build_model_tolerates_wrappers_prefixes_and_pixel_statistics(tiny_sam, tiny_state_dict):
    _, reference = tiny_sam
    spec = model_registry.identify(_shapes(tiny_state_dict))
    exported = {f"module.{name}": tensor for name, tensor in tiny_state_dict.items()}
    exported["module.pixel_mean"] = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1)
    exported["module.pixel_std"] = torch.tensor([1.0, 1.0, 1.0]).view(3, 1, 1)
    model = model_registry.build_model(spec, {"model": exported})
    assert torch.equal(model.state_dict()["mask_decoder.mask_tokens.weight"], reference.mask_decoder.mask_tokens.weight)


def test_build_model_refuses_tensors_that_do_not_fit(tiny_state_dict):
    spec = model_registry.identify(_shapes(tiny_state_dict))
    wrong = dict(tiny_state_dict)
    wrong["mask_decoder.iou_prediction_head.layers.2.weight"] = torch.zeros(5, 256)
    with pytest.raises(CorruptCheckpointError) as raised:
        model_registry.build_model(spec, wrong, source="edited.pth")
    assert "edited.pth" in str(raised.value)
    assert "mask_decoder.iou_prediction_head.layers.2.weight is (5, 256)" in str(raised.value)

    missing = dict(tiny_state_dict)
    del missing["prompt_encoder.no_mask_embed.weight"]
    with pytest.raises(CorruptCheckpointError, match="prompt_encoder.no_mask_embed.weight"):
        model_registry.build_model(spec, missing, source="edited.pth")


def test_build_model_output_matches_reference(tiny_sam, tiny_state_dict):
    _, reference = tiny_sam
    spec = model_registry.identify(_shapes(tiny_state_dict))
    model = model_registry.build_model(spec, tiny_state_dict)
    pixels = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference.image_encoder(pixels)
        actual = model.encode_image(pixels)["image_embeddings"]
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_safetensors_copy_builds_the_same_model(tiny_sam, tiny_state_dict, tmp_path):
    copy = save_state_dict(tiny_state_dict, tmp_path / "anything.safetensors")
    weights = checkpoints.load_state_dict(copy)
    spec = model_registry.identify(_shapes(weights))
    assert spec == model_registry.identify(_shapes(tiny_state_dict))
    model = model_registry.build_model(spec, weights)
    assert torch.equal(model.state_dict()["image_encoder.pos_embed"], tiny_state_dict["image_encoder.pos_embed"])
