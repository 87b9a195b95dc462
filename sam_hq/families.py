"""HQ-SAM (ViT-B/L/H and the TinyViT "Light" variant) and MobileSAM model families.

Both are recognised from tensor names and shapes only, so a renamed file or a
``.safetensors`` copy is identified the same way, and reduced test models go through the same
code. Each family is strict about what it accepts (HQ-SAM requires the HQ decoder keys;
MobileSAM requires a TinyViT encoder and refuses HQ keys; plain SAM refuses both), so the
order in which families are asked never decides the answer.

Decoding options (``options`` of ``decode`` / ``Predictor.predict``), HQ-SAM only:

* ``"hq_token_only": bool`` (default False): the HQ mask alone instead of SAM's + HQ's.
* ``"hq_multimask": "candidates" | "best"`` (default "candidates"): with multimask output,
  either SAM's three candidates each fused with the HQ mask (three outputs; the panel lets the
  user pick whole / part / sub-part, as the extension we replace did), or the HQ-SAM authors'
  rule (one output: the best-scoring candidate fused with the HQ mask).
"""
from __future__ import annotations

import math
import re
from types import MappingProxyType
from typing import Dict, Mapping, Optional, Tuple

from sd_webui_sam.families import (
    SAM_PROMPT_AND_DECODER_PREFIXES,
    SAM_VIT_ENCODER_PREFIXES,
    derive_vit_encoder_config,
    variant_label,
)
from sd_webui_sam.model_registry import ModelSpec

from .segmenter import build_hq_sam_tiny, build_hq_sam_vit, build_mobile_sam
from .tiny_vit import TinyViTConfig

Shapes = Mapping[str, Tuple[int, ...]]

_HQ_DECODER_PREFIXES = (
    "mask_decoder.hf_token.",
    "mask_decoder.hf_mlp.",
    "mask_decoder.compress_vit_feat.",
    "mask_decoder.embedding_encoder.",
    "mask_decoder.embedding_maskfeature.",
)
_TINY_VIT_ENCODER_PREFIXES = (
    "image_encoder.patch_embed.seq.",
    "image_encoder.layers.",
    "image_encoder.norm_head.",
    "image_encoder.head.",
    "image_encoder.neck.",
)
_REQUIRED_SAM_KEYS = ("mask_decoder.iou_token.weight", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix")
_REQUIRED_HQ_KEYS = ("mask_decoder.hf_token.weight", "mask_decoder.compress_vit_feat.0.weight")

_STAGE_KEY = re.compile(r"^image_encoder\.layers\.(\d+)\.")
_STAGE_BLOCK_KEY = re.compile(r"^image_encoder\.layers\.(\d+)\.blocks\.(\d+)\.")

#: MobileSAM's published TinyViT-5M; HQ-SAM Light uses the same encoder.
PUBLISHED_TINY_VIT = TinyViTConfig()
_TINY_VIT_STAGES = 4
_TINY_VIT_OUTPUT_STRIDE = 16


def _only_prefixes(shapes: Shapes, prefixes: Tuple[str, ...]) -> bool:
    return bool(shapes) and all(name.startswith(prefixes) for name in shapes)


def derive_tiny_vit_config(shapes: Shapes) -> Optional[dict]:
    """TinyViT hyper-parameters from tensor shapes, or None when the layout is not TinyViT's.

    Stage widths come from the merge convolutions, heads from the rows of each attention-bias
    table and window sizes from its length (one entry per |dy|,|dx| offset: window**2), the
    MLP and MBConv ratios from their first layers, the classifier from its weight.
    """
    stem = shapes.get("image_encoder.patch_embed.seq.2.c.weight")
    stem_in = shapes.get("image_encoder.patch_embed.seq.0.c.weight")
    neck = shapes.get("image_encoder.neck.0.weight")
    if stem is None or stem_in is None or neck is None or len(stem) != 4 or len(stem_in) != 4 or len(neck) != 4:
        return None
    stage_indexes = {int(match.group(1)) for match in map(_STAGE_KEY.match, shapes) if match}
    if stage_indexes != set(range(_TINY_VIT_STAGES)):
        return None
    blocks: Dict[int, set] = {index: set() for index in stage_indexes}
    for match in map(_STAGE_BLOCK_KEY.match, shapes):
        if match:
            blocks[int(match.group(1))].add(int(match.group(2)))
    depths = []
    for index in range(_TINY_VIT_STAGES):
        if not blocks[index] or blocks[index] != set(range(len(blocks[index]))):
            return None
        depths.append(len(blocks[index]))

    dims = [stem[0]]
    for index in range(_TINY_VIT_STAGES - 1):
        merge = shapes.get(f"image_encoder.layers.{index}.downsample.conv1.c.weight")
        if merge is None or len(merge) != 4 or merge[1] != dims[-1]:
            return None
        dims.append(merge[0])
    if neck[1] != dims[-1]:
        return None

    expand = shapes.get("image_encoder.layers.0.blocks.0.conv1.c.weight")
    if expand is None or expand[1] != dims[0] or expand[0] % dims[0]:
        return None
    num_heads, window_sizes, mlp_ratios, local_conv_sizes = [0], [0], set(), set()
    for index in range(1, _TINY_VIT_STAGES):
        prefix = f"image_encoder.layers.{index}.blocks.0."
        biases = shapes.get(prefix + "attn.attention_biases")
        fc1 = shapes.get(prefix + "mlp.fc1.weight")
        local_conv = shapes.get(prefix + "local_conv.c.weight")
        if biases is None or fc1 is None or local_conv is None or len(biases) != 2 or len(local_conv) != 4:
            return None
        window = math.isqrt(biases[1])
        if window * window != biases[1] or biases[0] == 0 or dims[index] % biases[0] or fc1[1] != dims[index]:
            return None
        num_heads.append(biases[0])
        window_sizes.append(window)
        mlp_ratios.add(fc1[0] / dims[index])
        local_conv_sizes.add(local_conv[2])
    if len(mlp_ratios) != 1 or len(local_conv_sizes) != 1:
        return None
    # The first stage has no attention; keep the published value so configs compare equal.
    num_heads[0] = PUBLISHED_TINY_VIT.num_heads[0]
    window_sizes[0] = PUBLISHED_TINY_VIT.window_sizes[0]

    head = shapes.get("image_encoder.head.weight")
    return dict(
        encoder="tiny_vit",
        embed_dims=tuple(dims),
        depths=tuple(depths),
        num_heads=tuple(num_heads),
        window_sizes=tuple(window_sizes),
        mlp_ratio=mlp_ratios.pop(),
        mbconv_expand_ratio=expand[0] / dims[0],
        local_conv_size=local_conv_sizes.pop(),
        in_chans=stem_in[1],
        out_chans=neck[0],
        # TinyViT has no position table to read the input size from; its output stride is
        # 16 and SAM's prompt side expects a 64x64 embedding.
        image_size=64 * _TINY_VIT_OUTPUT_STRIDE,
        num_classes=head[0] if head is not None else 0,
        has_norm_head="image_encoder.norm_head.weight" in shapes,
    )


#: Parts of the config that do not change what the encoder computes.
_UNUSED_BY_SEGMENTATION = ("num_classes", "has_norm_head")


def is_published_tiny_vit(config: Mapping) -> bool:
    published = PUBLISHED_TINY_VIT
    return all(
        config.get(name) == getattr(published, name)
        for name in TinyViTConfig.__dataclass_fields__
        if name not in _UNUSED_BY_SEGMENTATION
    )


def _describe_tiny_vit(config: Mapping) -> str:
    return f"custom TinyViT: widths {'/'.join(map(str, config['embed_dims']))}, depths {'/'.join(map(str, config['depths']))}"


class HQSamFamily:
    """HQ-SAM: SAM's ViT (or TinyViT for the Light variant) encoder with the HQ mask decoder."""

    name = "sam_hq"
    label = "HQ-SAM"

    def identify(self, shapes: Shapes) -> Optional[ModelSpec]:
        if not all(key in shapes for key in (*_REQUIRED_SAM_KEYS, *_REQUIRED_HQ_KEYS)):
            return None
        compress = shapes["mask_decoder.compress_vit_feat.0.weight"]
        if len(compress) != 4:
            return None
        decoder_prefixes = SAM_PROMPT_AND_DECODER_PREFIXES + _HQ_DECODER_PREFIXES
        if _only_prefixes(shapes, SAM_VIT_ENCODER_PREFIXES + decoder_prefixes):
            config = derive_vit_encoder_config(shapes)
            if config is None or compress[0] != config["encoder_embed_dim"]:
                return None
            config = {"encoder": "vit", **config}
            variant, label = variant_label(self.label, config)
            return ModelSpec(self.name, variant, MappingProxyType(config), label)
        if _only_prefixes(shapes, _TINY_VIT_ENCODER_PREFIXES + decoder_prefixes):
            config = derive_tiny_vit_config(shapes)
            # The Light variant fuses the output of the first attention stage.
            if config is None or compress[0] != config["embed_dims"][2]:
                return None
            if is_published_tiny_vit(config):
                return ModelSpec(self.name, "vit_tiny", MappingProxyType(config), "HQ-SAM Light (TinyViT)")
            return ModelSpec(self.name, "custom", MappingProxyType(config), f"HQ-SAM Light ({_describe_tiny_vit(config)})")
        return None

    def build(self, spec: ModelSpec):
        if spec.config.get("encoder") == "tiny_vit":
            return build_hq_sam_tiny(spec.config)
        return build_hq_sam_vit(spec.config)


class MobileSamFamily:
    """MobileSAM: a TinyViT encoder distilled from SAM's, with SAM's prompt encoder and decoder."""

    name = "mobile_sam"
    label = "MobileSAM"

    def identify(self, shapes: Shapes) -> Optional[ModelSpec]:
        if not all(key in shapes for key in _REQUIRED_SAM_KEYS):
            return None
        if not _only_prefixes(shapes, _TINY_VIT_ENCODER_PREFIXES + SAM_PROMPT_AND_DECODER_PREFIXES):
            return None
        config = derive_tiny_vit_config(shapes)
        if config is None:
            return None
        if is_published_tiny_vit(config):
            return ModelSpec(self.name, "tiny_vit", MappingProxyType(config), "MobileSAM")
        return ModelSpec(self.name, "custom", MappingProxyType(config), f"MobileSAM ({_describe_tiny_vit(config)})")

    def build(self, spec: ModelSpec):
        return build_mobile_sam(spec.config)


FAMILIES = (HQSamFamily(), MobileSamFamily())
