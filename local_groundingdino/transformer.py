"""GroundingDINO's encoder (feature enhancer), language-guided query selection and decoder."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from local_groundingdino.deformable_attention import LevelLayout, MultiScaleDeformableAttention
from local_groundingdino.fusion import BiAttentionBlock, TextEnhancerLayer

#: Proposals closer than this to the image border are not selected as queries (as trained).
PROPOSAL_MARGIN = 0.01
#: Width/height of the anchor proposed at every level-0 position; doubles per level.
PROPOSAL_BASE_SIZE = 0.05
INVERSE_SIGMOID_EPS = 1e-3


@dataclass(frozen=True)
class TransformerShape:
    d_model: int = 256
    num_heads: int = 8
    num_levels: int = 4
    num_points: int = 4
    num_queries: int = 900
    encoder_layers: int = 6
    decoder_layers: int = 6
    dim_feedforward: int = 2048
    text_dim_feedforward: int = 1024
    fusion_dim: int = 1024


def inverse_sigmoid(x: Tensor) -> Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=INVERSE_SIGMOID_EPS) / (1 - x).clamp(min=INVERSE_SIGMOID_EPS))


def sine_embedding(values: Tensor, num_feats: int, temperature: float) -> Tensor:
    """(..., ) -> (..., num_feats): sin/cos pairs of 2*pi*value at geometric frequencies."""
    index = torch.arange(num_feats, dtype=torch.float32, device=values.device)
    frequencies = temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / num_feats)
    angles = values[..., None].float() * (2 * math.pi) / frequencies
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


def box_sine_embedding(boxes: Tensor, num_feats: int = 128) -> Tensor:
    """(..., 4) cx,cy,w,h -> (..., 4*num_feats) in the order y, x, w, h."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.cat([sine_embedding(part, num_feats, 10000.0) for part in (cy, cx, w, h)], dim=-1)


class MLP(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, outs))

    def forward(self, x: Tensor) -> Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x


#: Image tokens per step of the encoder's feed-forward: the 2048-wide hidden layer of a step
#: (8 MB) stays in cache instead of streaming 150 MB per layer through memory.
FEED_FORWARD_TOKENS_PER_STEP = 1024


def feed_forward(x: Tensor, linear1: nn.Linear, linear2: nn.Linear) -> Tensor:
    """linear2(relu(linear1(x))) for (B, N, C) x, a band of tokens at a time."""
    flat = x.reshape(-1, x.shape[-1])
    out = flat.new_empty(flat.shape[0], linear2.out_features)
    for start in range(0, flat.shape[0], FEED_FORWARD_TOKENS_PER_STEP):
        band = slice(start, start + FEED_FORWARD_TOKENS_PER_STEP)
        hidden = F.relu(linear1(flat[band]), inplace=True)
        torch.addmm(linear2.bias, hidden, linear2.weight.t(), out=out[band])
    return out.view(*x.shape[:-1], -1)


def contrastive_logits(queries: Tensor, text: Tensor, text_padding: Tensor | None) -> Tensor:
    """Similarity of each query to each text token: (B,Q,C) x (B,T,C) -> (B,Q,T)."""
    logits = queries @ text.transpose(-1, -2)
    if text_padding is not None:
        logits = logits.masked_fill(text_padding[:, None, :], float("-inf"))
    return logits


class DeformableEncoderLayer(nn.Module):
    def __init__(self, shape: TransformerShape):
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(shape.d_model, shape.num_heads, shape.num_levels, shape.num_points)
        self.norm1 = nn.LayerNorm(shape.d_model)
        self.linear1 = nn.Linear(shape.d_model, shape.dim_feedforward)
        self.linear2 = nn.Linear(shape.dim_feedforward, shape.d_model)
        self.norm2 = nn.LayerNorm(shape.d_model)

    def forward(self, x: Tensor, position: Tensor, reference_points: Tensor, layout: LevelLayout) -> Tensor:
        x = self.norm1(x + self.self_attn(x + position, reference_points, x, layout))
        return self.norm2(x + feed_forward(x, self.linear1, self.linear2))


class DecoderLayer(nn.Module):
    """Query self-attention, then text cross-attention, then deformable image cross-attention."""

    def __init__(self, shape: TransformerShape):
        super().__init__()
        d = shape.d_model
        self.cross_attn = MultiScaleDeformableAttention(d, shape.num_heads, shape.num_levels, shape.num_points)
        self.norm1 = nn.LayerNorm(d)
        self.ca_text = nn.MultiheadAttention(d, shape.num_heads)
        self.catext_norm = nn.LayerNorm(d)
        self.self_attn = nn.MultiheadAttention(d, shape.num_heads)
        self.norm2 = nn.LayerNorm(d)
        self.linear1 = nn.Linear(d, shape.dim_feedforward)
        self.linear2 = nn.Linear(shape.dim_feedforward, d)
        self.norm3 = nn.LayerNorm(d)

    def forward(
        self, queries: Tensor, query_pos: Tensor, reference_boxes: Tensor, text: Tensor, text_padding: Tensor | None,
        memory: Tensor, layout: LevelLayout,
    ) -> Tensor:
        q = (queries + query_pos).transpose(0, 1)
        attended = self.self_attn(q, q, queries.transpose(0, 1), need_weights=False)[0]
        queries = self.norm2(queries + attended.transpose(0, 1))

        text_t = text.transpose(0, 1)
        attended = self.ca_text(
            (queries + query_pos).transpose(0, 1), text_t, text_t, key_padding_mask=text_padding, need_weights=False
        )[0]
        queries = self.catext_norm(queries + attended.transpose(0, 1))

        queries = self.norm1(queries + self.cross_attn(queries + query_pos, reference_boxes, memory, layout))
        return self.norm3(queries + self.linear2(F.relu(self.linear1(queries))))


class Encoder(nn.Module):
    def __init__(self, shape: TransformerShape):
        super().__init__()
        self.layers = nn.ModuleList(DeformableEncoderLayer(shape) for _ in range(shape.encoder_layers))
        self.text_layers = nn.ModuleList(
            TextEnhancerLayer(shape.d_model, shape.num_heads // 2, shape.text_dim_feedforward) for _ in range(shape.encoder_layers)
        )
        self.fusion_layers = nn.ModuleList(
            BiAttentionBlock(shape.d_model, shape.d_model, shape.fusion_dim, shape.num_heads // 2) for _ in range(shape.encoder_layers)
        )

    @staticmethod
    def reference_points(layout: LevelLayout, device: torch.device, num_levels: int) -> Tensor:
        """(1, sum hw, L, 2): the centre of every feature-map cell, normalised."""
        points = []
        for height, width in layout.shapes:
            ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
            xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            points.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), -1))
        return torch.cat(points, 0)[None, :, None, :].expand(1, -1, num_levels, 2)

    def forward(
        self, image: Tensor, position: Tensor, layout: LevelLayout, text: Tensor, text_padding: Tensor | None,
        text_allowed: Tensor, text_position: Tensor,
    ) -> Tuple[Tensor, Tensor]:
        reference = self.reference_points(layout, image.device, len(layout.shapes)).to(image.dtype)
        for fusion, text_layer, image_layer in zip(self.fusion_layers, self.text_layers, self.layers):
            image, text = fusion(image, text, text_padding)
            text = text_layer(text, text_allowed, text_position)
            image = image_layer(image, position, reference, layout)
        return image, text


class Decoder(nn.Module):
    def __init__(self, shape: TransformerShape):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(shape) for _ in range(shape.decoder_layers))
        self.norm = nn.LayerNorm(shape.d_model)
        self.ref_point_head = MLP(2 * shape.d_model, shape.d_model, shape.d_model, 2)

    def forward(
        self, queries: Tensor, boxes_unsigmoid: Tensor, memory: Tensor, layout: LevelLayout, text: Tensor,
        text_padding: Tensor | None, box_head: MLP,
    ) -> Tuple[Tensor, Tensor]:
        """Returns (normed output of the last layer (B,Q,C), the reference boxes it refined (B,Q,4))."""
        boxes = boxes_unsigmoid.sigmoid()
        num_levels = len(layout.shapes)
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            reference = boxes[:, :, None, :].expand(-1, -1, num_levels, 4)
            query_pos = self.ref_point_head(box_sine_embedding(boxes).to(queries.dtype))
            queries = layer(queries, query_pos, reference, text, text_padding, memory, layout)
            if index < last:
                boxes = (box_head(queries) + inverse_sigmoid(boxes)).sigmoid()
        return self.norm(queries), boxes


class GroundingTransformer(nn.Module):
    def __init__(self, shape: TransformerShape):
        super().__init__()
        self.shape = shape
        self.level_embed = nn.Parameter(torch.zeros(shape.num_levels, shape.d_model))
        self.encoder = Encoder(shape)
        self.decoder = Decoder(shape)
        self.tgt_embed = nn.Embedding(shape.num_queries, shape.d_model)
        self.enc_output = nn.Linear(shape.d_model, shape.d_model)
        self.enc_output_norm = nn.LayerNorm(shape.d_model)
        self.enc_out_bbox_embed = MLP(shape.d_model, shape.d_model, 4, 3)

    @staticmethod
    def proposals(layout: LevelLayout, device: torch.device) -> Tuple[Tensor, Tensor]:
        """(sum hw, 4) unsigmoided anchor per cell, and which of them lie inside the margin."""
        anchors = []
        for level, (height, width) in enumerate(layout.shapes):
            ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
            xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            size = torch.full((height * width, 2), PROPOSAL_BASE_SIZE * 2.0**level, device=device)
            anchors.append(torch.cat((grid_x.reshape(-1, 1), grid_y.reshape(-1, 1), size), -1))
        anchors = torch.cat(anchors, 0)
        valid = ((anchors > PROPOSAL_MARGIN) & (anchors < 1 - PROPOSAL_MARGIN)).all(-1)
        unsigmoid = torch.log(anchors / (1 - anchors)).masked_fill(~valid[:, None], float("inf"))
        return unsigmoid, valid

    def forward(
        self, image: Tensor, position: Tensor, layout: LevelLayout, text: Tensor, text_padding: Tensor | None,
        text_allowed: Tensor, text_position: Tensor, box_head: MLP,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """image/position: (B, sum hw, C) flattened levels. Returns (queries, reference boxes, enhanced text)."""
        memory, text = self.encoder(image, position, layout, text, text_padding, text_allowed, text_position)

        # Language-guided query selection: the cells most similar to any text token become queries.
        proposals, valid = self.proposals(layout, memory.device)
        selected_memory = memory.masked_fill(~valid[None, :, None], 0.0)
        selected_memory = self.enc_output_norm(self.enc_output(selected_memory))
        scores = contrastive_logits(selected_memory, text, text_padding).max(-1)[0]
        boxes_unsigmoid = self.enc_out_bbox_embed(selected_memory) + proposals.to(memory.dtype)
        count = min(self.shape.num_queries, scores.shape[1])  # a tiny image has fewer cells than queries
        top = torch.topk(scores, count, dim=1)[1]
        boxes_unsigmoid = torch.gather(boxes_unsigmoid, 1, top[..., None].expand(-1, -1, 4))

        queries = self.tgt_embed.weight[None, :count].expand(memory.shape[0], -1, -1)
        queries, boxes = self.decoder(queries, boxes_unsigmoid, memory, layout, text, text_padding, box_head)
        return queries, boxes, text
