"""The GroundingDINO detector: Swin image backbone + BERT text encoder + grounding transformer.

Module names mirror the official checkpoints' keys (see :mod:`local_groundingdino.checkpoint`
for the few renames), so the released ``.pth`` files load unchanged and strictly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn

from local_groundingdino.deformable_attention import build_layout
from local_groundingdino.swin import SwinBackbone, SwinShape
from local_groundingdino.text_encoder import BertShape, BertTextEncoder
from local_groundingdino.transformer import MLP, GroundingTransformer, TransformerShape, contrastive_logits, inverse_sigmoid, sine_embedding
from sd_webui_sam.devices import DECODER_DTYPE
from sd_webui_sam.weights import computed_buffer

#: GroundingDINO's image position embedding uses a low temperature in both axes.
IMAGE_POSITION_TEMPERATURE = 20.0
TEXT_POSITION_FEATURES = 256
GROUP_NORM_GROUPS = 32
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class GroundingDinoShape:
    swin: SwinShape = field(default_factory=SwinShape)
    bert: BertShape = field(default_factory=BertShape)
    transformer: TransformerShape = field(default_factory=TransformerShape)


def image_position_embedding(height: int, width: int, num_feats: int, device: torch.device) -> Tensor:
    """(1, 2*num_feats, H, W): normalised sine embedding of row (first half) and column."""
    eps = 1e-6
    ys = torch.arange(1, height + 1, dtype=torch.float32, device=device) / (height + eps)
    xs = torch.arange(1, width + 1, dtype=torch.float32, device=device) / (width + eps)
    pos_y = sine_embedding(ys, num_feats, IMAGE_POSITION_TEMPERATURE)  # H, F
    pos_x = sine_embedding(xs, num_feats, IMAGE_POSITION_TEMPERATURE)  # W, F
    grid = torch.cat((pos_y[:, None, :].expand(height, width, -1), pos_x[None, :, :].expand(height, width, -1)), -1)
    return grid.permute(2, 0, 1)[None]


@dataclass
class GroundingOutput:
    logits: Tensor         # (B, Q, T) query-to-token similarity, before the sigmoid
    boxes: Tensor          # (B, Q, 4) cx, cy, w, h normalised to the input image


class GroundingDino(nn.Module):
    """Precision: the Swin backbone and BERT (the encoders) may run in reduced precision (see
    :meth:`place`); their features are cast up to float32 before the projections, the fusion
    and the grounding transformer, which always run in float32."""

    def __init__(self, shape: GroundingDinoShape):
        super().__init__()
        self.shape = shape
        d_model = shape.transformer.d_model
        self.backbone = SwinBackbone(shape.swin)
        self.bert = BertTextEncoder(shape.bert)
        self.feat_map = nn.Linear(shape.bert.hidden_size, d_model)
        in_channels = list(shape.swin.out_channels)
        projections = [
            nn.Sequential(nn.Conv2d(channels, d_model, kernel_size=1), nn.GroupNorm(GROUP_NORM_GROUPS, d_model))
            for channels in in_channels
        ]
        extra_in = in_channels[-1]
        for _ in range(shape.transformer.num_levels - len(in_channels)):
            projections.append(
                nn.Sequential(
                    nn.Conv2d(extra_in, d_model, kernel_size=3, stride=2, padding=1), nn.GroupNorm(GROUP_NORM_GROUPS, d_model)
                )
            )
            extra_in = d_model
        self.input_proj = nn.ModuleList(projections)
        self.transformer = GroundingTransformer(shape.transformer)
        self.bbox_embed = MLP(d_model, d_model, 4, 3)
        computed_buffer(self, "pixel_mean", lambda: torch.tensor(PIXEL_MEAN).view(3, 1, 1))
        computed_buffer(self, "pixel_std", lambda: torch.tensor(PIXEL_STD).view(3, 1, 1))

    @property
    def encoder_dtype(self) -> torch.dtype:
        """The Swin backbone's and BERT's dtype."""
        return next(self.backbone.parameters()).dtype

    def place(self, device: torch.device, encoder_dtype: torch.dtype) -> "GroundingDino":
        """Move to ``device``: the Swin backbone and BERT in ``encoder_dtype``, every other part in float32."""
        self.to(device=device, dtype=DECODER_DTYPE)
        self.backbone.to(dtype=encoder_dtype)
        self.bert.to(dtype=encoder_dtype)
        return self

    def encode_text(self, text_inputs: Dict[str, Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """Returns (text features (B,T,C), allowed-attention mask (B,T,T), position embedding (B,T,256))."""
        allowed = text_inputs["self_attention_mask"]
        features = self.bert(text_inputs["input_ids"], allowed, text_inputs["position_ids"])
        text = self.feat_map(features.to(self.feat_map.weight.dtype))
        position = sine_embedding(text_inputs["position_ids"], TEXT_POSITION_FEATURES, 10000.0).to(text.dtype)
        return text, allowed, position

    def image_levels(self, pixels: Tensor) -> List[Tensor]:
        dtype = self.feat_map.weight.dtype  # the projections' and the transformer's
        features = [feature.to(dtype) for feature in self.backbone(pixels.to(self.encoder_dtype))]
        levels = [projection(feature) for projection, feature in zip(self.input_proj, features)]
        source = features[-1]
        for projection in self.input_proj[len(features):]:
            source = projection(source)
            levels.append(source)
        return levels

    def forward(self, pixels: Tensor, text_inputs: Dict[str, Tensor]) -> GroundingOutput:
        """pixels: (B,3,H,W) normalised with PIXEL_MEAN/STD; text_inputs from CaptionTokens.model_inputs."""
        text, allowed, text_position = self.encode_text(text_inputs)
        if text.shape[0] != pixels.shape[0]:
            text, allowed, text_position = (t.expand(pixels.shape[0], *t.shape[1:]) for t in (text, allowed, text_position))
        levels = self.image_levels(pixels)
        num_feats = self.shape.transformer.d_model // 2
        flat, positions, shapes = [], [], []
        for level, feature in enumerate(levels):
            height, width = feature.shape[-2:]
            shapes.append((height, width))
            flat.append(feature.flatten(2).transpose(1, 2))
            position = image_position_embedding(height, width, num_feats, feature.device).to(feature.dtype)
            positions.append(position.flatten(2).transpose(1, 2) + self.transformer.level_embed[level][None, None])
        layout = build_layout(shapes, pixels.device)
        image = torch.cat(flat, 1)
        position = torch.cat(positions, 1).expand(image.shape[0], -1, -1)

        queries, reference, text = self.transformer(
            image, position, layout, text, None, allowed, text_position, self.bbox_embed
        )
        boxes = (self.bbox_embed(queries) + inverse_sigmoid(reference)).sigmoid()
        logits = contrastive_logits(queries, text, None)
        return GroundingOutput(logits=logits.float(), boxes=boxes.float())
