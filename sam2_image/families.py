"""The SAM 2 / SAM 2.1 family: recognised from tensor names and shapes, video-only weights ignored.

Read from shapes: the trunk's width (patch embedding), stage depths (the blocks whose
``proj`` widens the channels start a stage), the MLP ratio, the first window size
(``pos_embed_window``), the background position table's size, the neck width and the channel
list, the decoder's MLP width, the object-score head's form and whether high-resolution
features are used.

Not in any tensor, so taken from the official configs (sam2.1_hiera_{t,s,b+,l}.yaml, the same
in SAM 2.0) as a function of what is read:

* heads: 1 in the first stage for a trunk narrower than 112 channels (T, S: 96), else 2
  (B+: 112, L: 144); doubled at every stage, as in every official config;
* window sizes after the first stage: (4, 16, 8) for the large trunk (width 144), else (4, 14, 7);
* global-attention blocks: the official ones for the four published stage layouts; for any
  other layout (reduced models), three blocks of the third stage ending at its last block,
  spaced by a third of its depth (the rule that gives T's and S's official blocks), never its
  first block (that one pools its queries per window; the official code requires a window there);
* q-pooling at every stage change (needed for the neck's 2x steps), FPN merging at levels
  2 and 3 (nearest), the coarsest level dropped, IoU head with sigmoid, 8 decoder heads.
"""
from __future__ import annotations

import re
from types import MappingProxyType
from typing import Dict, Mapping, Optional, Tuple

from sd_webui_sam.model_registry import ModelSpec

from .segmenter import build_sam2

Shapes = Mapping[str, Tuple[int, ...]]

#: Keys the image path uses.
IMAGE_PREFIXES = ("image_encoder.trunk.", "image_encoder.neck.", "sam_prompt_encoder.", "sam_mask_decoder.", "no_mem_embed")
#: Keys only SAM 2's video tracking uses; present in the official files, ignored on load.
VIDEO_PREFIXES = (
    "memory_attention.",
    "memory_encoder.",
    "mask_downsample.",
    "maskmem_tpos_enc",
    "no_mem_pos_enc",
    "no_obj_ptr",
    "obj_ptr_proj.",
    "obj_ptr_tpos_proj.",
    "no_obj_embed_spatial",
)
#: Present only in SAM 2.1 files (2.1's configs add them).
SAM21_MARKERS = ("no_obj_embed_spatial", "obj_ptr_tpos_proj.weight")
_REQUIRED = (
    "image_encoder.trunk.patch_embed.proj.weight",
    "image_encoder.trunk.pos_embed",
    "image_encoder.trunk.pos_embed_window",
    "image_encoder.neck.convs.0.conv.weight",
    "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
    "sam_mask_decoder.iou_token.weight",
    "no_mem_embed",
)
_BLOCK_KEY = re.compile(r"^image_encoder\.trunk\.blocks\.(\d+)\.")
_NECK_KEY = re.compile(r"^image_encoder\.neck\.convs\.(\d+)\.conv\.weight$")
_DECODER_LAYER_KEY = re.compile(r"^sam_mask_decoder\.transformer\.layers\.(\d+)\.")

#: Official trunks: (width, stage depths) -> (size name, global-attention blocks).
_PUBLISHED: Dict[Tuple[int, Tuple[int, ...]], Tuple[str, Tuple[int, ...]]] = {
    (96, (1, 2, 7, 2)): ("tiny", (5, 7, 9)),
    (96, (1, 2, 11, 2)): ("small", (7, 10, 13)),
    (112, (2, 3, 16, 3)): ("base_plus", (12, 16, 20)),
    (144, (2, 6, 36, 4)): ("large", (23, 33, 43)),
}
_SIZE_LABELS = {"tiny": "Hiera-T", "small": "Hiera-S", "base_plus": "Hiera-B+", "large": "Hiera-L"}
_LARGE_WIDTH = 144
_TWO_HEAD_WIDTH = 112


def default_global_blocks(stages: Tuple[int, ...]) -> Tuple[int, ...]:
    """Three blocks of the third stage, the last one its last block, spaced by a third of its depth;
    never the stage's first block, which pools its queries within windows (as in every official config)."""
    if len(stages) < 3:
        return ()
    end = sum(stages[:3]) - 1
    first_unpooled = end - stages[2] + 2
    step = max(1, stages[2] // 3)
    return tuple(sorted({block for block in (end - offset * step for offset in range(3)) if block >= first_unpooled}))


def derive_sam2_config(shapes: Shapes) -> Optional[dict]:
    patch = shapes["image_encoder.trunk.patch_embed.proj.weight"]
    pos_embed = shapes["image_encoder.trunk.pos_embed"]
    pos_window = shapes["image_encoder.trunk.pos_embed_window"]
    if len(patch) != 4 or patch[1] != 3 or len(pos_embed) != 4 or len(pos_window) != 4:
        return None
    width = patch[0]
    if pos_embed[1] != width or pos_window[1] != width or pos_window[2] != pos_window[3]:
        return None
    indexes = {int(match.group(1)) for match in map(_BLOCK_KEY.match, shapes) if match}
    depth = len(indexes)
    if depth == 0 or indexes != set(range(depth)):
        return None
    stages, dim, count, mlp_ratios = [], width, 0, set()
    for index in range(depth):
        prefix = f"image_encoder.trunk.blocks.{index}."
        qkv = shapes.get(prefix + "attn.qkv.weight")
        fc1 = shapes.get(prefix + "mlp.layers.0.weight")
        if qkv is None or fc1 is None or len(qkv) != 2 or qkv[1] != dim or qkv[0] % 3:
            return None
        dim_out = qkv[0] // 3
        if dim_out != dim:
            if dim_out != 2 * dim or (prefix + "proj.weight") not in shapes or index == 0:
                return None
            stages.append(count)
            count = 0
        mlp_ratios.add(fc1[0] / dim_out)
        dim, count = dim_out, count + 1
    stages.append(count)
    stages = tuple(stages)
    if len(mlp_ratios) != 1:
        return None

    neck = {}
    for name, shape in shapes.items():
        match = _NECK_KEY.match(name)
        if match:
            neck[int(match.group(1))] = shape
    stage_dims = [width * 2**index for index in range(len(stages))]
    if sorted(neck) != list(range(len(stages))) or [neck[i][1] for i in sorted(neck)] != stage_dims[::-1]:
        return None
    d_model = neck[0][0]
    decoder_layers = {int(m.group(1)) for m in map(_DECODER_LAYER_KEY.match, shapes) if m}
    mlp = shapes.get("sam_mask_decoder.transformer.layers.0.mlp.layers.0.weight")
    if decoder_layers != {0, 1} or mlp is None or shapes["sam_mask_decoder.iou_token.weight"] != (1, d_model):
        return None

    published = _PUBLISHED.get((width, stages))
    window_tail = (4, 16, 8) if width == _LARGE_WIDTH else (4, 14, 7)
    return dict(
        size=published[0] if published else "custom",
        embed_dim=width,
        num_heads=2 if width >= _TWO_HEAD_WIDTH else 1,
        stages=stages,
        global_att_blocks=published[1] if published else default_global_blocks(stages),
        window_spec=(pos_window[2],) + window_tail[: len(stages) - 1],
        window_pos_embed_bkg_spatial_size=(pos_embed[2], pos_embed[3]),
        mlp_ratio=mlp_ratios.pop(),
        d_model=d_model,
        decoder_mlp_dim=mlp[0],
        use_high_res_features="sam_mask_decoder.conv_s0.weight" in shapes,
        pred_obj_scores="sam_mask_decoder.obj_score_token.weight" in shapes,
        pred_obj_scores_mlp="sam_mask_decoder.pred_obj_score_head.layers.0.weight" in shapes,
        image_size=1024,
    )


def model_weights(weights: Mapping) -> dict:
    """The tensors the image path uses (video-only ones dropped)."""
    return {name: tensor for name, tensor in weights.items() if not name.startswith(VIDEO_PREFIXES)}


class Sam2Family:
    """SAM 2.0 and SAM 2.1 (Hiera T / S / B+ / L and reduced layouts), image mode."""

    name = "sam2"
    label = "SAM 2"

    def identify(self, shapes: Shapes) -> Optional[ModelSpec]:
        if not all(key in shapes for key in _REQUIRED):
            return None
        if not all(name.startswith(IMAGE_PREFIXES + VIDEO_PREFIXES) for name in shapes):
            return None
        config = derive_sam2_config(shapes)
        if config is None:
            return None
        version = "2.1" if any(marker in shapes for marker in SAM21_MARKERS) else "2"
        config["version"] = version
        size = config["size"]
        if size == "custom":
            stages = "/".join(map(str, config["stages"]))
            label = f"SAM {version} Hiera (custom: width {config['embed_dim']}, stages {stages})"
        else:
            label = f"SAM {version} {_SIZE_LABELS[size]}"
        return ModelSpec(self.name, size, MappingProxyType(config), label)

    def model_weights(self, weights: Mapping) -> dict:
        return model_weights(weights)

    def build(self, spec: ModelSpec):
        return build_sam2(spec.config)


FAMILIES = (Sam2Family(),)
