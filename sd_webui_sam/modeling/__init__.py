"""SAM architecture (our own implementation, official checkpoint key names) and reusable blocks."""
from .build import build_sam
from .common import MLP, LayerNorm2d, MLPBlock
from .image_encoder import Attention as ViTAttention
from .image_encoder import Block as ViTBlock
from .image_encoder import ImageEncoderViT, PatchEmbed, add_decomposed_rel_pos, forced_attention, merge_windows, pad_to_windows
from .mask_decoder import MaskDecoder
from .prompt_encoder import PositionEmbeddingRandom, PromptEncoder
from .segmenter import SAM_PIXEL_MEAN, SAM_PIXEL_STD, PromptableSegmenter, SamSegmenter
from .transformer import Attention, TwoWayAttentionBlock, TwoWayTransformer

__all__ = [
    "Attention",
    "ImageEncoderViT",
    "LayerNorm2d",
    "MLP",
    "MLPBlock",
    "MaskDecoder",
    "PatchEmbed",
    "PositionEmbeddingRandom",
    "PromptEncoder",
    "PromptableSegmenter",
    "SAM_PIXEL_MEAN",
    "SAM_PIXEL_STD",
    "SamSegmenter",
    "TwoWayAttentionBlock",
    "TwoWayTransformer",
    "ViTAttention",
    "ViTBlock",
    "add_decomposed_rel_pos",
    "build_sam",
    "forced_attention",
    "merge_windows",
    "pad_to_windows",
]
