"""The interface every promptable segmentation model implements, and SAM's implementation of it."""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from sd_webui_sam.devices import DECODER_DTYPE
from sd_webui_sam.weights import computed_buffer

from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


class PromptableSegmenter(nn.Module):
    """An image encoder run once per image, and a prompt decoder run per prompt.

    ``pixel_mean`` / ``pixel_std`` are non-persistent (3, 1, 1) buffers on the 0..255 scale:
    official checkpoints do not store them, and the predictor normalises with them.

    Precision: only ``image_encoder`` may run in reduced precision (see :meth:`place`). It takes
    its input in any float dtype and returns its embeddings in its own dtype (cached so);
    everything computed from them (the decoder, and the image-only parts of a decoder run at
    encode time) runs in float32, the embeddings cast up at its input.
    """

    #: The part run once per image, and the only one :meth:`place` puts in a reduced precision.
    image_encoder: nn.Module

    image_size: int = 1024
    mask_threshold: float = 0.0
    #: How a picture becomes the square input, and how logits go back to it (see predictor.py):
    #: "longest_side" (SAM: aspect kept, padded) or "stretch" (SAM 2: both sides resized).
    input_geometry: str = "longest_side"
    #: Low-res logits handed back for a later mask prompt are clamped to +-this (None: as computed).
    low_res_logit_limit: Optional[float] = None

    def __init__(self, pixel_mean: Sequence[float] = SAM_PIXEL_MEAN, pixel_std: Sequence[float] = SAM_PIXEL_STD) -> None:
        super().__init__()
        computed_buffer(self, "pixel_mean", lambda: torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1))
        computed_buffer(self, "pixel_std", lambda: torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1))

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def dtype(self) -> torch.dtype:
        """The prompt side's dtype (prompt encoder and mask decoder): float32 once placed."""
        encoder = {id(parameter) for parameter in self.image_encoder.parameters()}
        return next((p.dtype for p in self.parameters() if id(p) not in encoder), DECODER_DTYPE)

    @property
    def encoder_dtype(self) -> torch.dtype:
        """The image encoder's dtype: what it computes in, and the dtype of the embeddings it returns."""
        return next(self.image_encoder.parameters()).dtype

    def place(self, device: torch.device, encoder_dtype: torch.dtype) -> "PromptableSegmenter":
        """Move to ``device``: the image encoder in ``encoder_dtype``, every other part in float32."""
        self.to(device=device, dtype=DECODER_DTYPE)
        self.image_encoder.to(dtype=encoder_dtype)
        return self

    def decoder_inputs(self, features: Mapping[str, Tensor], names: Optional[Sequence[str]] = None) -> Dict[str, Tensor]:
        """``features`` (only ``names``, those present, when given) with every float tensor in the
        decoder's dtype: an encoder in bf16/fp16 returns its embeddings in that dtype."""
        dtype = self.dtype
        chosen = features if names is None else {name: features[name] for name in names if name in features}
        return {name: value.to(dtype) if value.is_floating_point() else value for name, value in chosen.items()}

    def encode_image(self, pixels: Tensor) -> Dict[str, Tensor]:
        """pixels: (B, 3, S, S), normalised and padded. Returns at least {"image_embeddings": (B, 256, 64, 64)}."""
        raise NotImplementedError

    def encode_images(self, pixels: Tensor) -> List[Dict[str, Tensor]]:
        """Several images in one pass: pixels (B, 3, S, S) -> B feature dicts, each what
        :meth:`encode_image` gives for that image alone. A family whose features are not all
        batch-first (SAM 2's high-resolution ones) overrides this."""
        features = self.encode_image(pixels)
        return [{name: tensor[index:index + 1] for name, tensor in features.items()} for index in range(pixels.shape[0])]

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
        """Returns (low-res logits (B, C, 256, 256), IoU predictions (B, C)); C is 3 or 1.

        point_coords (B, N, 2) / boxes (B, 4) are in the input frame (resized, before padding);
        point_labels (B, N): 1 foreground, 0 background, -1 padding; mask_input (B, 1, 256, 256).
        ``features`` hold one image and are broadcast over the B prompts.
        """
        raise NotImplementedError


class SamSegmenter(PromptableSegmenter):
    """Segment Anything: ViT encoder + prompt encoder + two-way mask decoder."""

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: Sequence[float] = SAM_PIXEL_MEAN,
        pixel_std: Sequence[float] = SAM_PIXEL_STD,
    ) -> None:
        super().__init__(pixel_mean, pixel_std)
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.image_size = int(getattr(image_encoder, "img_size", prompt_encoder.input_image_size[0]))

    @property
    def dtype(self) -> torch.dtype:
        return self.prompt_encoder.no_mask_embed.weight.dtype

    def encode_image(self, pixels: Tensor) -> Dict[str, Tensor]:
        return {"image_embeddings": self.image_encoder(pixels.to(self.encoder_dtype))}

    def encode_prompts(
        self,
        point_coords: Optional[Tensor],
        point_labels: Optional[Tensor],
        boxes: Optional[Tensor],
        mask_input: Optional[Tensor],
    ) -> Tuple[Tensor, Tensor]:
        points = (point_coords, point_labels) if point_coords is not None else None
        if points is not None and point_labels is None:
            raise ValueError("point_labels are required with point_coords.")
        return self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)

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
        features = self.decoder_inputs(features)
        sparse, dense = self.encode_prompts(point_coords, point_labels, boxes, mask_input)
        return self.mask_decoder(
            image_embeddings=features["image_embeddings"],
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )
