"""Multi-scale deformable attention: every head, level and sampling point read in one call.

Accelerators: all levels of the value map are packed into one zero-separated atlas image and
read by a single bilinear ``grid_sample``. Sampling positions are clamped to one pixel outside
their level; that pixel is a zero gap in the atlas, which reproduces ``padding_mode="zeros"``
of sampling each level on its own.

CPU: ``grid_sample`` reads a planar map one channel at a time and returns every sample before
the attention weights are applied (hundreds of MB at 800x1333). There, each query's 4 corners x
levels x points become one ``embedding_bag`` over the value rows, with the bilinear and the
attention weights multiplied into its per-sample weights: the same sum, in one pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class LevelLayout:
    """Where each level of a flattened multi-scale map lies in the atlas. Built once per image."""

    shapes: Tuple[Tuple[int, int], ...]        # (h, w) per level
    origins: Tuple[Tuple[int, int], ...]       # (row, col) of each level's top-left pixel in the atlas
    atlas_size: Tuple[int, int]                # (rows, cols)
    atlas_index: Tensor                        # (sum hw,) flat atlas position of every token
    level_size: Tensor                         # (L, 2) float (w, h)
    level_origin: Tensor                       # (L, 2) float (col, row)

    @property
    def level_starts(self) -> List[int]:
        starts, total = [], 0
        for height, width in self.shapes:
            starts.append(total)
            total += height * width
        return starts

    @property
    def num_tokens(self) -> int:
        return sum(height * width for height, width in self.shapes)


def build_layout(shapes: Sequence[Tuple[int, int]], device: torch.device) -> LevelLayout:
    """Level 0 on the left; the smaller levels stacked in a column to its right, one zero row/column apart."""
    shapes = tuple((int(height), int(width)) for height, width in shapes)
    origins = [(0, 0)]
    column = shapes[0][1] + 1
    row = 0
    for height, _ in shapes[1:]:
        origins.append((row, column))
        row += height + 1
    rows = max([shapes[0][0]] + [origin[0] + shape[0] for origin, shape in zip(origins[1:], shapes[1:])])
    cols = max(origin[1] + shape[1] for origin, shape in zip(origins, shapes))
    rows, cols = rows + 1, cols + 1  # a zero border below and to the right as well

    counts = torch.tensor([height * width for height, width in shapes], device=device)
    level_of_token = torch.repeat_interleave(torch.arange(len(shapes), device=device), counts)
    starts = torch.cumsum(counts, 0) - counts
    widths = torch.tensor([width for _, width in shapes], device=device)
    origin_rows = torch.tensor([origin[0] for origin in origins], device=device)
    origin_cols = torch.tensor([origin[1] for origin in origins], device=device)
    local = torch.arange(int(counts.sum()), device=device) - starts[level_of_token]
    token_row = local // widths[level_of_token] + origin_rows[level_of_token]
    token_col = local % widths[level_of_token] + origin_cols[level_of_token]
    return LevelLayout(
        shapes=shapes,
        origins=tuple(origins),
        atlas_size=(rows, cols),
        atlas_index=token_row * cols + token_col,
        level_size=torch.tensor([[width, height] for height, width in shapes], dtype=torch.float32, device=device),
        level_origin=torch.tensor([[col, row] for row, col in origins], dtype=torch.float32, device=device),
    )


def sample_levels(value: Tensor, layout: LevelLayout, locations: Tensor, weights: Tensor) -> Tensor:
    """Weighted bilinear samples of every level.

    value: (B, sum hw, H, D); locations: (B, Q, H, L, P, 2) normalised per level (x, y);
    weights: (B, Q, H, L, P). Returns (B, Q, H*D).
    """
    batch, tokens, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    rows, cols = layout.atlas_size
    atlas = value.new_zeros(batch, heads, dim, rows * cols)
    atlas[..., layout.atlas_index] = value.permute(0, 2, 3, 1)
    atlas = atlas.view(batch * heads, dim, rows, cols)

    size = layout.level_size.to(locations.dtype)[:, None, :]       # L, 1, 2
    origin = layout.level_origin.to(locations.dtype)[:, None, :]
    pixels = locations * size - 0.5                                  # level pixel centres, align_corners=False
    pixels = torch.maximum(torch.minimum(pixels, size), torch.full_like(size, -1.0))
    atlas_xy = pixels + origin
    extent = torch.tensor([cols, rows], dtype=locations.dtype, device=locations.device)
    grid = (2.0 * atlas_xy + 1.0) / extent - 1.0
    grid = grid.permute(0, 2, 1, 3, 4, 5).reshape(batch * heads, queries, levels * points, 2)
    sampled = F.grid_sample(atlas, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # sampled: (B*H, D, Q, L*P)
    weights = weights.permute(0, 2, 1, 3, 4).reshape(batch * heads, 1, queries, levels * points)
    out = (sampled * weights).sum(-1).view(batch, heads * dim, queries)
    return out.transpose(1, 2)


def sample_levels_by_gather(value: Tensor, layout: LevelLayout, locations: Tensor, weights: Tensor) -> Tensor:
    """Same contract and result as :func:`sample_levels`, as one weighted ``embedding_bag``."""
    batch, tokens, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    size = layout.level_size.to(locations.dtype)                      # L, 2 (w, h)
    pixels = locations * size[:, None, :] - 0.5                        # level pixel centres, align_corners=False
    corner = pixels.floor()
    fraction = pixels - corner
    corner = corner.long()
    widths = size[:, 0].long().view(levels, 1)
    heights = size[:, 1].long().view(levels, 1)

    def axis(start: Tensor, fraction: Tensor, length: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Clamped indices and weights of the two neighbours along one axis; a neighbour
        outside the level weighs zero (it would read the zero padding)."""
        near_inside = (start >= 0) & (start < length)
        far_inside = (start >= -1) & (start < length - 1)
        near = torch.minimum(start.clamp(min=0), length - 1)
        far = torch.minimum((start + 1).clamp(min=0), length - 1)
        return near, far, (1 - fraction) * near_inside, fraction * far_inside

    x_near, x_far, wx_near, wx_far = axis(corner[..., 0], fraction[..., 0], widths)
    y_near, y_far, wy_near, wy_far = axis(corner[..., 1], fraction[..., 1], heights)
    top, bottom = weights * wy_near, weights * wy_far
    sample_weights = torch.stack((top * wx_near, top * wx_far, bottom * wx_near, bottom * wx_far), dim=-1)

    # rows of value.reshape(-1, dim) are (batch, token, head)
    starts = torch.tensor(layout.level_starts, device=value.device).view(levels, 1)
    image = (torch.arange(batch, device=value.device) * tokens).view(batch, 1, 1, 1, 1)
    head = torch.arange(heads, device=value.device).view(heads, 1, 1)
    row_top = (image + starts + y_near * widths) * heads + head
    row_bottom = (image + starts + y_far * widths) * heads + head
    x_near, x_far = x_near * heads, x_far * heads
    rows = torch.stack((row_top + x_near, row_top + x_far, row_bottom + x_near, row_bottom + x_far), dim=-1)
    out = F.embedding_bag(rows.view(-1, levels * points * 4), value.reshape(-1, dim),
                          per_sample_weights=sample_weights.view(-1, levels * points * 4), mode="sum")
    return out.view(batch, queries, heads * dim)


class MultiScaleDeformableAttention(nn.Module):
    """Each query reads ``num_points`` learned offsets around its reference point on every level."""

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 4):
        super().__init__()
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, query: Tensor, reference_points: Tensor, value: Tensor, layout: LevelLayout) -> Tensor:
        """query (B,Q,C); reference_points (B,Q,L,2) points or (B,Q,L,4) boxes (cx,cy,w,h); value (B,N,C)."""
        batch, queries, _ = query.shape
        value = self.value_proj(value).view(batch, value.shape[1], self.num_heads, -1)
        offsets = self.sampling_offsets(query).view(batch, queries, self.num_heads, self.num_levels, self.num_points, 2)
        weights = self.attention_weights(query).view(batch, queries, self.num_heads, self.num_levels * self.num_points)
        weights = weights.softmax(-1).view(batch, queries, self.num_heads, self.num_levels, self.num_points)
        if reference_points.shape[-1] == 2:
            normaliser = layout.level_size.to(offsets.dtype)  # L, 2 (w, h)
            locations = reference_points[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        else:
            centre = reference_points[:, :, None, :, None, :2]
            extent = reference_points[:, :, None, :, None, 2:]
            locations = centre + offsets / self.num_points * extent * 0.5
        sample = sample_levels_by_gather if value.device.type == "cpu" else sample_levels
        return self.output_proj(sample(value, layout, locations, weights))
