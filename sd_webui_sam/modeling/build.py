"""Build a randomly initialised SAM from hyper-parameters (weights are loaded afterwards)."""
from __future__ import annotations

from typing import Mapping

from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .segmenter import SamSegmenter
from .transformer import TwoWayTransformer


def build_sam(config: Mapping) -> SamSegmenter:
    """config keys: encoder_embed_dim, encoder_depth, encoder_num_heads, encoder_global_attn_indexes,
    and optionally window_size (14), image_size (1024), patch_size (16), prompt_embed_dim (256).

    Returns an fp32 CPU model in eval mode.
    """
    image_size = int(config.get("image_size", 1024))
    patch_size = int(config.get("patch_size", 16))
    prompt_embed_dim = int(config.get("prompt_embed_dim", 256))
    embedding_side = image_size // patch_size
    image_encoder = ImageEncoderViT(
        img_size=image_size,
        patch_size=patch_size,
        embed_dim=int(config["encoder_embed_dim"]),
        depth=int(config["encoder_depth"]),
        num_heads=int(config["encoder_num_heads"]),
        mlp_ratio=4.0,
        out_chans=prompt_embed_dim,
        qkv_bias=True,
        use_rel_pos=True,
        window_size=int(config.get("window_size", 14)),
        global_attn_indexes=tuple(int(index) for index in config["encoder_global_attn_indexes"]),
    )
    prompt_encoder = PromptEncoder(
        embed_dim=prompt_embed_dim,
        image_embedding_size=(embedding_side, embedding_side),
        input_image_size=(image_size, image_size),
        mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_embed_dim, mlp_dim=2048, num_heads=8),
        transformer_dim=prompt_embed_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return SamSegmenter(image_encoder, prompt_encoder, mask_decoder).eval()
