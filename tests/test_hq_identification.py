"""HQ-SAM and MobileSAM checkpoints are recognised from their contents, never their file names."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from sam_hq.families import FAMILIES as HQ_FAMILIES
from sd_webui_sam import checkpoints, model_registry
from sd_webui_sam.errors import UnrecognisedCheckpointError
from sd_webui_sam.families import FAMILIES as SAM_FAMILIES
from tools.fixtures.hq_checkpoints import (
    HQ_TINY,
    build_reference_hq_sam,
    build_reference_hq_tiny,
    build_reference_mobile_sam,
    reference_shapes,
    save_state_dict,
)

ALL_FAMILIES = (*HQ_FAMILIES, *SAM_FAMILIES)

# kind -> (family, variant, label, the config values that prove the hyper-parameters were read)
PUBLISHED = {
    "hq_vit_b": ("sam_hq", "vit_b", "HQ-SAM ViT-B", dict(encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12, encoder_global_attn_indexes=(2, 5, 8, 11))),
    "hq_vit_l": ("sam_hq", "vit_l", "HQ-SAM ViT-L", dict(encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16, encoder_global_attn_indexes=(5, 11, 17, 23))),
    "hq_vit_h": ("sam_hq", "vit_h", "HQ-SAM ViT-H", dict(encoder_embed_dim=1280, encoder_depth=32, encoder_num_heads=16, encoder_global_attn_indexes=(7, 15, 23, 31))),
    "hq_vit_tiny": ("sam_hq", "vit_tiny", "HQ-SAM Light (TinyViT)", dict(embed_dims=(64, 128, 160, 320), depths=(2, 2, 6, 2), num_heads=(2, 4, 5, 10), window_sizes=(7, 7, 14, 7))),
    "mobile_sam": ("mobile_sam", "tiny_vit", "MobileSAM", dict(embed_dims=(64, 128, 160, 320), depths=(2, 2, 6, 2), num_heads=(2, 4, 5, 10), window_sizes=(7, 7, 14, 7))),
}


@pytest.fixture(scope="module", params=list(PUBLISHED))
def published(request):
    return request.param, reference_shapes(request.param)


def write_sparse_safetensors(shapes, path: Path) -> Path:
    """A float32 .safetensors file with the real header of a full-size checkpoint and
    unwritten (sparse) data, so identification is tested on real-size files at no cost."""
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


def test_full_size_layouts_are_identified_with_their_hyper_parameters(published):
    kind, shapes = published
    family, variant, label, expected_config = PUBLISHED[kind]
    spec = model_registry.identify(shapes)
    assert (spec.family, spec.variant, spec.label) == (family, variant, label)
    for key, value in expected_config.items():
        assert spec.config[key] == value, key


def test_exactly_one_family_accepts_each_layout_so_order_never_matters(published):
    kind, shapes = published
    accepting = [family.name for family in ALL_FAMILIES if family.identify(shapes) is not None]
    assert accepting == [PUBLISHED[kind][0]]


def test_full_size_layout_builds_a_model_with_exactly_the_checkpoint_keys(published):
    kind, shapes = published
    spec = model_registry.identify(shapes)
    family = model_registry.family_named(spec.family)
    with torch.device("meta"):
        model = family.build(spec)
    built = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    assert built == shapes


def test_renamed_safetensors_copy_of_a_full_size_layout_is_identified(published, tmp_path):
    kind, shapes = published
    path = write_sparse_safetensors(shapes, tmp_path / "my_favourite_model.safetensors")
    spec = model_registry.identify(checkpoints.read_shapes(path))
    assert (spec.family, spec.variant) == PUBLISHED[kind][:2]


SMALL_MODELS = {
    "hq_vit_custom": lambda: build_reference_hq_sam(HQ_TINY, seed=21),
    "hq_vit_tiny": lambda: build_reference_hq_tiny(seed=22),
    "mobile_sam": lambda: build_reference_mobile_sam(seed=23),
}


@pytest.mark.parametrize("kind", list(SMALL_MODELS))
def test_renamed_files_and_safetensors_copies_load_to_the_same_model(kind, tmp_path):
    """Misleading names (a MobileSAM file called sam_vit_b_01ec64.pth, a safetensors copy
    called sam_hq_vit_h) change nothing: every copy identifies the same way and loads the
    same weights strictly."""
    reference = SMALL_MODELS[kind]()
    state_dict = reference.state_dict()
    names = ["sam_vit_b_01ec64.pth", "sam_hq_vit_h.safetensors"]  # both names point elsewhere
    specs, models = [], []
    for name in names:
        path = save_state_dict(state_dict, tmp_path / name)
        specs.append(model_registry.identify(checkpoints.read_shapes(path)))
        loaded = checkpoints.load_state_dict(path)
        models.append(model_registry.build_model(specs[-1], loaded))
    assert len({(spec.family, spec.variant, spec.label) for spec in specs}) == 1
    first = models[0].state_dict()
    for model in models[1:]:
        other = model.state_dict()
        assert all(torch.equal(first[name], other[name]) for name in first)
    expected_family = "mobile_sam" if kind == "mobile_sam" else "sam_hq"
    assert specs[0].family == expected_family


def test_custom_hq_vit_is_labelled_as_custom():
    shapes = {name: tuple(t.shape) for name, t in build_reference_hq_sam(HQ_TINY, seed=0).state_dict().items()}
    spec = model_registry.identify(shapes)
    assert spec.family == "sam_hq" and spec.variant == "custom"
    assert spec.label.startswith("HQ-SAM ViT (custom")


@pytest.mark.parametrize("kind", ["hq_vit_b", "hq_vit_tiny"])
def test_hq_checkpoint_with_a_fusion_layer_of_the_wrong_width_is_not_hq_sam(kind):
    broken = dict(reference_shapes(kind))
    width = broken["mask_decoder.compress_vit_feat.0.weight"]
    broken["mask_decoder.compress_vit_feat.0.weight"] = (width[0] + 8, *width[1:])
    with pytest.raises(UnrecognisedCheckpointError):
        model_registry.identify(broken)


def test_plain_sam_with_part_of_the_hq_decoder_is_refused():
    shapes = reference_shapes("hq_vit_b")
    without_token = {name: shape for name, shape in shapes.items() if not name.startswith("mask_decoder.hf_token")}
    with pytest.raises(UnrecognisedCheckpointError) as refused:
        model_registry.identify(without_token)
    # HQ-SAM support is installed, so the user is told the file is damaged, not that support is missing.
    assert "incomplete or modified" in str(refused.value)
    assert "not available" not in str(refused.value)


def test_mobile_sam_without_classifier_head_is_still_mobile_sam():
    """Exports that strip TinyViT's unused ImageNet head are recognised, and build without it."""
    shapes = {
        name: shape
        for name, shape in reference_shapes("mobile_sam").items()
        if not name.startswith(("image_encoder.head.", "image_encoder.norm_head."))
    }
    spec = model_registry.identify(shapes)
    assert (spec.family, spec.label) == ("mobile_sam", "MobileSAM")
    model = model_registry.family_named("mobile_sam").build(spec)
    assert {name: tuple(t.shape) for name, t in model.state_dict().items()} == shapes
