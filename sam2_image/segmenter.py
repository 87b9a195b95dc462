"""SAM 2 / 2.1 image path as a :class:`PromptableSegmenter`, and its builder.

Geometry (what the official ``SAM2ImagePredictor`` does, which the predictor follows through
``input_geometry``): the picture is stretched to the square input (both sides resized, on
[0, 1] floats, antialiased bilinear), normalised with ImageNet statistics, and the low-res
logits are resized straight back to the picture; the low-res logits handed back for a later
mask prompt are clamped to +-32.

Options understood by :meth:`Sam2Segmenter.decode` (in ``options``; other families ignore them):

``"sam2_dynamic_multimask"`` (bool, default True)
    With single-mask output, use the best multimask candidate when the single mask is
    unstable (stability score below 0.98 at +-0.05), as the official ``build_sam2`` sets up
    the model for its image predictor; False gives the single-mask token's output always.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from sd_webui_sam.modeling import PromptableSegmenter

from .decoder import MASK_IN_CHANS, Sam2MaskDecoder, Sam2PromptEncoder
from .hiera import HieraConfig, Sam2ImageEncoder

DYNAMIC_MULTIMASK = "sam2_dynamic_multimask"
LOW_RES_LOGIT_LIMIT = 32.0


class Sam2Segmenter(PromptableSegmenter):
    """Hiera + FPN encoder, SAM 2 prompt encoder and mask decoder, and the "no memory" embedding
    that the image predictor adds to the coarsest features."""

    input_geometry = "stretch"
    low_res_logit_limit = LOW_RES_LOGIT_LIMIT

    def __init__(self, image_encoder: Sam2ImageEncoder, prompt_encoder: Sam2PromptEncoder, mask_decoder: Sam2MaskDecoder,
                 image_size: int = 1024) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.sam_prompt_encoder = prompt_encoder
        self.sam_mask_decoder = mask_decoder
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, prompt_encoder.embed_dim))
        self.image_size = image_size

    @property
    def dtype(self) -> torch.dtype:
        return self.no_mem_embed.dtype

    def encode_image(self, pixels: Tensor) -> Dict[str, Tensor]:
        return self._image_features(self.image_encoder(pixels.to(self.encoder_dtype)))

    def encode_images(self, pixels: Tensor) -> List[Dict[str, Tensor]]:
        # the high-resolution features are laid out for one image (high_res_features), so the
        # batch is split after the trunk and FPN, before them
        levels = self.image_encoder(pixels.to(self.encoder_dtype))
        return [self._image_features([level[index:index + 1] for level in levels]) for index in range(pixels.shape[0])]

    def _image_features(self, levels: Sequence[Tensor]) -> Dict[str, Tensor]:
        # Everything after the Hiera trunk and FPN neck (the "no memory" embedding, the decoder's
        # high-resolution convolutions) runs in float32, so these features are float32 whatever
        # the encoder's precision.
        levels = [level.to(self.dtype) for level in levels]
        embeddings = levels[-1] + self.no_mem_embed.view(1, -1, 1, 1)
        features = {"image_embeddings": embeddings}
        if self.sam_mask_decoder.use_high_res_features:
            features["high_res_s0"], features["high_res_s1"] = self.sam_mask_decoder.high_res_features(levels[0], levels[1])
        return features

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
        if point_coords is not None and point_labels is None:
            raise ValueError("point_labels are required with point_coords.")
        features = self.decoder_inputs(features)
        sparse, dense = self.sam_prompt_encoder.encode(point_coords, point_labels, boxes, mask_input)
        high_res = None
        if self.sam_mask_decoder.use_high_res_features:
            high_res = (features["high_res_s0"], features["high_res_s1"])
        decoder = self.sam_mask_decoder
        masks, iou, _ = decoder.predict_masks_high_res(
            features["image_embeddings"], self.sam_prompt_encoder.get_dense_pe(), sparse, dense, high_res
        )
        if not multimask_output and (options or {}).get(DYNAMIC_MULTIMASK, True):
            return decoder.select_outputs_dynamic(masks, iou)
        return decoder.select_outputs(masks, iou, multimask_output)


def hiera_config(config: Mapping) -> HieraConfig:
    fields = HieraConfig.__dataclass_fields__
    return HieraConfig(**{key: value for key, value in config.items() if key in fields})


def build_sam2(config: Mapping) -> Sam2Segmenter:
    """A SAM 2 image model from a family config (HieraConfig's keys plus the decoder's)."""
    encoder_config = hiera_config(config)
    image_size = int(config.get("image_size", 1024))
    side = image_size // 16
    prompt_dim = encoder_config.d_model
    prompt_encoder = Sam2PromptEncoder(
        embed_dim=prompt_dim, image_embedding_size=(side, side), input_image_size=(image_size, image_size), mask_in_chans=MASK_IN_CHANS
    )
    decoder = Sam2MaskDecoder(
        transformer_dim=prompt_dim,
        mlp_dim=int(config.get("decoder_mlp_dim", 2048)),
        use_high_res_features=bool(config.get("use_high_res_features", True)),
        pred_obj_scores=bool(config.get("pred_obj_scores", True)),
        pred_obj_scores_mlp=bool(config.get("pred_obj_scores_mlp", True)),
    )
    return Sam2Segmenter(Sam2ImageEncoder(encoder_config), prompt_encoder, decoder, image_size).eval()
