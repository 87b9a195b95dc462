"""SAM's prompt encoder: points, box corners and low-res masks -> sparse and dense embeddings."""
from __future__ import annotations

import math
from typing import Optional, Tuple, Type

import torch
from torch import Tensor, nn

from .common import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier-feature positional encoding of (x, y) coordinates in [0, 1]."""

    def __init__(self, num_pos_feats: int = 64, scale: Optional[float] = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def _pe_encoding(self, coords: Tensor) -> Tensor:
        # Computed in float32 whatever the model dtype: sin/cos of ~2*pi*|G| arguments lose
        # most of their precision in fp16.
        centred = 2 * coords.float() - 1
        projected = centred @ self.positional_encoding_gaussian_matrix.float()
        projected = (2 * math.pi) * projected
        return torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1)

    def forward(self, size: Tuple[int, int]) -> Tensor:
        """Encoding of the centre of every cell of an (h, w) grid: (C, h, w), float32."""
        height, width = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
        xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
        grid = torch.stack(
            [xs[None, :].expand(height, width), ys[:, None].expand(height, width)],
            dim=-1,
        )
        return self._pe_encoding(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords_input: Tensor, image_size: Tuple[int, int]) -> Tensor:
        """Encode pixel coordinates (B, N, 2) of an image of size (h, w): (B, N, C), float32."""
        height, width = image_size
        coords = coords_input.float()
        normalised = torch.stack([coords[..., 0] / width, coords[..., 1] / height], dim=-1)
        return self._pe_encoding(normalised)


class PromptEncoder(nn.Module):
    """Encodes points, boxes and mask logits for the mask decoder."""

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: Tuple[int, int],
        input_image_size: Tuple[int, int],
        mask_in_chans: int,
        activation: Type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = tuple(input_image_size)
        self.image_embedding_size = tuple(image_embedding_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # Order matters for the checkpoint: negative point, positive point, box top-left, box bottom-right.
        self.num_point_embeddings = 4
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)
        self._dense_pe_cache: Optional[Tuple[Tensor, Tensor]] = None

    @property
    def _dtype(self) -> torch.dtype:
        return self.no_mask_embed.weight.dtype

    def get_dense_pe(self) -> Tensor:
        """Positional encoding of the image-embedding grid: (1, C, h, w) in the model dtype.

        It depends only on the random matrix, so it is kept between prompts (recomputed when
        the matrix is replaced, moved or converted).
        """
        matrix = self.pe_layer.positional_encoding_gaussian_matrix
        if self._dense_pe_cache is not None:
            cached_matrix, cached_pe = self._dense_pe_cache
            if (
                cached_matrix.device == matrix.device
                and cached_pe.dtype == self._dtype
                and cached_matrix.dtype == matrix.dtype
                and torch.equal(cached_matrix, matrix)
            ):
                return cached_pe
        dense_pe = self.pe_layer(self.image_embedding_size).unsqueeze(0).to(self._dtype)
        if not torch.is_grad_enabled():
            self._dense_pe_cache = (matrix.detach().clone(), dense_pe)
        return dense_pe

    def _embed_points(self, points: Tensor, labels: Tensor, pad: bool) -> Tensor:
        points = points + 0.5  # pixel centres
        if pad:
            # Without a box the decoder was trained with one extra "not a point" token.
            points = torch.cat([points, points.new_zeros((points.shape[0], 1, 2))], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), -1)], dim=1)
        encoded = self.pe_layer.forward_with_coords(points, self.input_image_size).to(self._dtype)
        labels = labels[..., None]
        negative = self.point_embeddings[0].weight
        positive = self.point_embeddings[1].weight
        embedding = torch.where(labels == 1, encoded + positive, encoded)
        embedding = torch.where(labels == 0, encoded + negative, embedding)
        return torch.where(labels == -1, self.not_a_point_embed.weight.expand_as(encoded), embedding)

    def _embed_boxes(self, boxes: Tensor) -> Tensor:
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        encoded = self.pe_layer.forward_with_coords(corners, self.input_image_size).to(self._dtype)
        corner_types = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight], dim=0)
        return encoded + corner_types

    def _embed_masks(self, masks: Tensor) -> Tensor:
        return self.mask_downscaling(masks)

    @staticmethod
    def _batch_size(points: Optional[Tuple[Tensor, Tensor]], boxes: Optional[Tensor], masks: Optional[Tensor]) -> int:
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        return 1

    def forward(
        self,
        points: Optional[Tuple[Tensor, Tensor]],
        boxes: Optional[Tensor],
        masks: Optional[Tensor],
    ) -> Tuple[Tensor, Tensor]:
        """Returns sparse (B, N, C) embeddings of points/box corners and dense (B, C, h, w) mask embeddings."""
        batch = self._batch_size(points, boxes, masks)
        weight = self.no_mask_embed.weight
        sparse = [weight.new_empty((batch, 0, self.embed_dim))]
        if points is not None:
            coords, labels = points
            sparse.append(self._embed_points(coords, labels, pad=boxes is None))
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes))
        sparse_embeddings = torch.cat(sparse, dim=1) if len(sparse) > 1 else sparse[0]
        if masks is not None:
            dense_embeddings = self._embed_masks(masks)
        else:
            dense_embeddings = weight.reshape(1, -1, 1, 1).expand(batch, -1, *self.image_embedding_size)
        return sparse_embeddings, dense_embeddings
