"""The plain Segment Anything family (ViT-B, ViT-L, ViT-H and reduced custom sizes).

Every hyper-parameter is read from tensor shapes, so official checkpoints, renamed copies and
reduced test models all go through the same path.
"""
from __future__ import annotations

import re
from types import MappingProxyType
from typing import Dict, Mapping, Optional, Tuple

from sd_webui_sam.model_registry import ModelSpec
from sd_webui_sam.modeling import build_sam

Shapes = Mapping[str, Tuple[int, ...]]

_BLOCK_KEY = re.compile(r"^image_encoder\.blocks\.(\d+)\.")

#: SAM's ViT image encoder, which HQ-SAM shares.
SAM_VIT_ENCODER_PREFIXES = (
    "image_encoder.pos_embed",
    "image_encoder.patch_embed.proj.",
    "image_encoder.blocks.",
    "image_encoder.neck.",
)
#: SAM's prompt encoder and mask decoder, which HQ-SAM and MobileSAM share.
SAM_PROMPT_AND_DECODER_PREFIXES = (
    "prompt_encoder.",
    "mask_decoder.transformer.",
    "mask_decoder.iou_token.",
    "mask_decoder.mask_tokens.",
    "mask_decoder.output_upscaling.",
    "mask_decoder.output_hypernetworks_mlps.",
    "mask_decoder.iou_prediction_head.",
    "pixel_mean",
    "pixel_std",
)
#: The only top-level sub-modules a plain SAM checkpoint has. Anything else (HQ-SAM's
#: hf_token/compress_vit_feat, TinyViT's image_encoder.layers) belongs to another family.
_ALLOWED_PREFIXES = SAM_VIT_ENCODER_PREFIXES + SAM_PROMPT_AND_DECODER_PREFIXES

_PUBLISHED_VARIANTS: Dict[str, dict] = {
    "vit_b": dict(encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12, encoder_global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16, encoder_global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(encoder_embed_dim=1280, encoder_depth=32, encoder_num_heads=16, encoder_global_attn_indexes=(7, 15, 23, 31)),
}
_PUBLISHED_COMMON = dict(window_size=14, image_size=1024, patch_size=16, prompt_embed_dim=256)
_VARIANT_LABELS = {"vit_b": "ViT-B", "vit_l": "ViT-L", "vit_h": "ViT-H"}


def derive_vit_encoder_config(shapes: Shapes) -> Optional[dict]:
    """Hyper-parameters of a SAM ``ImageEncoderViT`` from its tensor shapes, or None.

    Heads come from the relative-position head dimension; each block's relative-position
    length is ``2*window-1`` for windowed attention and ``2*grid-1`` for global attention,
    which tells the window size and which blocks are global. Shared with the HQ-SAM family,
    whose encoder has the same layout.
    """
    patch = shapes.get("image_encoder.patch_embed.proj.weight")
    pos_embed = shapes.get("image_encoder.pos_embed")
    neck = shapes.get("image_encoder.neck.0.weight")
    if patch is None or pos_embed is None or neck is None:
        return None
    if len(patch) != 4 or patch[1] != 3 or patch[2] != patch[3] or len(pos_embed) != 4 or len(neck) != 4:
        return None
    embed_dim, patch_size = patch[0], patch[2]
    grid = pos_embed[1]
    if pos_embed[2] != grid or pos_embed[3] != embed_dim or neck[1] != embed_dim:
        return None

    block_indexes = {int(match.group(1)) for match in map(_BLOCK_KEY.match, shapes) if match}
    depth = len(block_indexes)
    if depth == 0 or block_indexes != set(range(depth)):
        return None

    head_dims = set()
    global_blocks = []
    window_sizes = set()
    for index in range(depth):
        rel_h = shapes.get(f"image_encoder.blocks.{index}.attn.rel_pos_h")
        rel_w = shapes.get(f"image_encoder.blocks.{index}.attn.rel_pos_w")
        qkv = shapes.get(f"image_encoder.blocks.{index}.attn.qkv.weight")
        if rel_h is None or rel_w is None or qkv is None or rel_h != rel_w or len(rel_h) != 2:
            return None
        if tuple(qkv) != (3 * embed_dim, embed_dim):
            return None
        head_dims.add(rel_h[1])
        length = rel_h[0]
        if length == 2 * grid - 1:
            global_blocks.append(index)
        elif length % 2 == 1:
            window_sizes.add((length + 1) // 2)
        else:
            return None
    if len(head_dims) != 1 or len(window_sizes) > 1:
        return None
    (head_dim,) = head_dims
    if head_dim == 0 or embed_dim % head_dim:
        return None
    return dict(
        encoder_embed_dim=embed_dim,
        encoder_depth=depth,
        encoder_num_heads=embed_dim // head_dim,
        encoder_global_attn_indexes=tuple(global_blocks),
        # With every block global the window size is unused; keep the published default.
        window_size=window_sizes.pop() if window_sizes else _PUBLISHED_COMMON["window_size"],
        image_size=grid * patch_size,
        patch_size=patch_size,
        prompt_embed_dim=neck[0],
    )


def published_variant(config: Mapping) -> Optional[str]:
    """"vit_b"/"vit_l"/"vit_h" when ``config`` is exactly a published encoder, else None."""
    for variant, encoder in _PUBLISHED_VARIANTS.items():
        if all(config.get(key) == value for key, value in {**encoder, **_PUBLISHED_COMMON}.items()):
            return variant
    return None


def variant_label(family_label: str, config: Mapping) -> Tuple[str, str]:
    """(variant, label) such as ("vit_b", "SAM ViT-B") or ("custom", "SAM ViT (custom: dim 32, depth 4)")."""
    variant = published_variant(config)
    if variant:
        return variant, f"{family_label} {_VARIANT_LABELS[variant]}"
    return "custom", f"{family_label} ViT (custom: dim {config['encoder_embed_dim']}, depth {config['encoder_depth']})"


class SamFamily:
    """Meta's original Segment Anything checkpoints (and reduced models in the same layout)."""

    name = "sam"
    label = "SAM"

    def identify(self, shapes: Shapes) -> Optional[ModelSpec]:
        if not shapes or any(not name.startswith(_ALLOWED_PREFIXES) for name in shapes):
            return None
        if "mask_decoder.iou_token.weight" not in shapes or "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix" not in shapes:
            return None
        config = derive_vit_encoder_config(shapes)
        if config is None:
            return None
        variant, label = variant_label(self.label, config)
        return ModelSpec(family=self.name, variant=variant, config=MappingProxyType(config), label=label)

    def build(self, spec: ModelSpec):
        return build_sam(dict(spec.config))


FAMILIES = (SamFamily(),)
