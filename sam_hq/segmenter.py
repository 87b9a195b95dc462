"""HQ-SAM and MobileSAM as :class:`PromptableSegmenter` models, and their builders.

Options understood by :meth:`HQSamSegmenter.decode` (they travel in ``options`` so the
predictor never special-cases a family; other families ignore them):

``"hq_token_only"`` (bool, default False)
    Return the HQ token's mask alone instead of SAM's mask + the HQ mask. Best for thin
    structures on objects SAM already segments well; the fused default is more robust.

``"hq_multimask"`` ("candidates" | "best", default "candidates"), used with multimask output
    "candidates": SAM's three candidates (whole / part / sub-part), each fused with the HQ
    mask, with their three scores; what the extension we replace showed, and what a panel
    that offers three candidates needs. "best": the HQ-SAM authors' rule, one output, the
    highest-scoring candidate fused with the HQ mask.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

from torch import Tensor

from sd_webui_sam.errors import InvalidPromptError
from sd_webui_sam.modeling import MaskDecoder, PromptEncoder, SamSegmenter, TwoWayTransformer, build_sam

from .mask_decoder_hq import HQ_MULTIMASK_CANDIDATES, HQ_MULTIMASK_MODES, MaskDecoderHQ
from .tiny_vit import TinyViTConfig, TinyViTEncoder

HQ_TOKEN_ONLY = "hq_token_only"
HQ_MULTIMASK = "hq_multimask"

_DECODER_DEPTH = 2
_DECODER_MLP_DIM = 2048
_DECODER_HEADS = 8


class HQSamSegmenter(SamSegmenter):
    """An encoder that also returns early features (ViT or TinyViT) + SAM's prompt encoder + the HQ decoder.

    ``encode_image`` returns ``image_embeddings``, ``interm_embeddings`` (the early features,
    (B, h, w, C)) and ``hq_features``: the image-only part of the HQ fusion, computed once per
    image so that each prompt costs no more than with plain SAM's decoder plus the HQ head.
    """

    mask_decoder: MaskDecoderHQ

    def encode_image(self, pixels: Tensor) -> Dict[str, Tensor]:
        image_embeddings, interm = self.image_encoder.forward_with_interm(pixels.to(self.encoder_dtype))
        early = interm[0]
        # The HQ fusion belongs to the decoder (float32): both encoder outputs are cast up for it.
        upcast = self.decoder_inputs({"image_embeddings": image_embeddings, "interm_embeddings": early})
        return {
            "image_embeddings": image_embeddings,
            "interm_embeddings": early,
            "hq_features": self.mask_decoder.image_hq_features(upcast["image_embeddings"], upcast["interm_embeddings"]),
        }

    def decode(
        self,
        features: Mapping[str, Tensor],
        *,
        point_coords: Optional[Tensor],
        point_labels: Optional[Tensor],
        boxes: Optional[Tensor],
        mask_input: Optional[Tensor],
        multimask_output: bool,
        options: Optional[Mapping] = None,
    ) -> Tuple[Tensor, Tensor]:
        options = options or {}
        hq_token_only = bool(options.get(HQ_TOKEN_ONLY, False))
        multimask_mode = options.get(HQ_MULTIMASK) or HQ_MULTIMASK_CANDIDATES
        if multimask_mode not in HQ_MULTIMASK_MODES:
            raise InvalidPromptError(
                f"Unknown HQ-SAM multimask mode {multimask_mode!r}; use one of {', '.join(HQ_MULTIMASK_MODES)}."
            )
        used = ("image_embeddings", "hq_features") if "hq_features" in features else ("image_embeddings", "interm_embeddings")
        features = self.decoder_inputs(features, used)
        image_embeddings = features["image_embeddings"]
        hq_features = features.get("hq_features")
        if hq_features is None:
            hq_features = self.mask_decoder.image_hq_features(image_embeddings, features["interm_embeddings"])
        sparse, dense = self.encode_prompts(point_coords, point_labels, boxes, mask_input)
        return self.mask_decoder(
            image_embeddings,
            self.prompt_encoder.get_dense_pe(),
            sparse,
            dense,
            hq_features,
            multimask_output=multimask_output,
            hq_token_only=hq_token_only,
            multimask_mode=multimask_mode,
        )


def _prompt_encoder(prompt_embed_dim: int, image_size: int, embedding_side: int) -> PromptEncoder:
    return PromptEncoder(
        embed_dim=prompt_embed_dim,
        image_embedding_size=(embedding_side, embedding_side),
        input_image_size=(image_size, image_size),
        mask_in_chans=16,
    )


def _two_way_transformer(prompt_embed_dim: int) -> TwoWayTransformer:
    return TwoWayTransformer(
        depth=_DECODER_DEPTH, embedding_dim=prompt_embed_dim, mlp_dim=_DECODER_MLP_DIM, num_heads=_DECODER_HEADS
    )


def _hq_decoder(prompt_embed_dim: int, vit_dim: int) -> MaskDecoderHQ:
    return MaskDecoderHQ(
        transformer_dim=prompt_embed_dim,
        transformer=_two_way_transformer(prompt_embed_dim),
        vit_dim=vit_dim,
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )


def tiny_vit_config(config: Mapping) -> TinyViTConfig:
    """The TinyViT part of a family config (the keys are TinyViTConfig's field names)."""
    fields = TinyViTConfig.__dataclass_fields__
    return TinyViTConfig(**{key: value for key, value in config.items() if key in fields})


def build_hq_sam_vit(config: Mapping) -> HQSamSegmenter:
    """HQ-SAM with SAM's ViT encoder; ``config`` takes :func:`build_sam`'s keys."""
    # SAM's own builder wires the encoder and prompt encoder; only the decoder differs.
    sam = build_sam(config)
    prompt_embed_dim = int(config.get("prompt_embed_dim", 256))
    decoder = _hq_decoder(prompt_embed_dim, vit_dim=int(config["encoder_embed_dim"]))
    return HQSamSegmenter(sam.image_encoder, sam.prompt_encoder, decoder).eval()


def build_hq_sam_tiny(config: Mapping) -> HQSamSegmenter:
    """HQ-SAM Light: TinyViT encoder + HQ decoder fusing the first attention stage's output."""
    encoder_config = tiny_vit_config(config)
    encoder = TinyViTEncoder(encoder_config)
    side = encoder_config.image_size // 16
    decoder = _hq_decoder(encoder_config.out_chans, vit_dim=encoder_config.embed_dims[2])
    prompt_encoder = _prompt_encoder(encoder_config.out_chans, encoder_config.image_size, side)
    return HQSamSegmenter(encoder, prompt_encoder, decoder).eval()


def build_mobile_sam(config: Mapping) -> SamSegmenter:
    """MobileSAM: TinyViT encoder + SAM's prompt encoder and mask decoder."""
    encoder_config = tiny_vit_config(config)
    encoder = TinyViTEncoder(encoder_config)
    side = encoder_config.image_size // 16
    prompt_embed_dim = encoder_config.out_chans
    decoder = MaskDecoder(
        transformer_dim=prompt_embed_dim,
        transformer=_two_way_transformer(prompt_embed_dim),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return SamSegmenter(encoder, _prompt_encoder(prompt_embed_dim, encoder_config.image_size, side), decoder).eval()
