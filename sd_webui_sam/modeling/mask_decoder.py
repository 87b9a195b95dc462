"""SAM's mask decoder, split into steps an HQ decoder can reuse one by one:

1. :meth:`MaskDecoder.build_tokens` - output tokens (IoU + mask tokens) followed by the prompt tokens;
2. :meth:`MaskDecoder.run_transformer` - two-way attention between tokens and image;
3. :meth:`MaskDecoder.upscale` - image side back to 4x the embedding resolution;
4. :meth:`MaskDecoder.hypernetwork_weights` / :meth:`MaskDecoder.masks_from_weights` - one mask per token;
5. :meth:`MaskDecoder.iou_prediction_head` and :meth:`MaskDecoder.select_outputs` - scores, multimask choice.
"""
from __future__ import annotations

from typing import Sequence, Tuple, Type

import torch
from torch import Tensor, nn

from .common import MLP, LayerNorm2d


class MaskDecoder(nn.Module):
    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: Type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        # Token 0 is the single-mask output; tokens 1.. are the multimask candidates.
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    # -- steps -------------------------------------------------------------------------------

    def output_token_weights(self) -> Tensor:
        """(T, C): the learned output tokens placed before the prompt tokens. HQ appends its own."""
        return torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)

    def build_tokens(self, sparse_prompt_embeddings: Tensor) -> Tensor:
        """(B, T + N, C): output tokens followed by the (B, N, C) prompt tokens."""
        output_tokens = self.output_token_weights().unsqueeze(0)
        output_tokens = output_tokens.expand(sparse_prompt_embeddings.shape[0], -1, -1)
        return torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)

    def run_transformer(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        dense_prompt_embeddings: Tensor,
        tokens: Tensor,
    ) -> Tuple[Tensor, Tensor]:
        """Returns processed tokens (B, T + N, C) and the image side as a (B, C, h, w) map.

        One image's embeddings (batch 1) are broadcast over the B prompts.
        """
        batch = tokens.shape[0]
        src = image_embeddings + dense_prompt_embeddings
        if src.shape[0] != batch:
            src = src.expand(batch, -1, -1, -1)
        pos_src = image_pe.expand(batch, -1, -1, -1)
        _, channels, height, width = src.shape
        hs, image_tokens = self.transformer(src, pos_src, tokens)
        return hs, image_tokens.transpose(1, 2).reshape(batch, channels, height, width)

    def upscale(self, src: Tensor) -> Tensor:
        """(B, C, h, w) -> (B, C/8, 4h, 4w)."""
        return self.output_upscaling(src)

    def hypernetwork_weights(self, mask_tokens_out: Tensor, mlps: Sequence[nn.Module] | None = None) -> Tensor:
        """(B, T, C) mask tokens -> (B, T, C/8) per-mask weights over the upscaled channels."""
        mlps = self.output_hypernetworks_mlps if mlps is None else mlps
        return torch.stack([mlp(mask_tokens_out[:, index, :]) for index, mlp in enumerate(mlps)], dim=1)

    @staticmethod
    def masks_from_weights(weights: Tensor, upscaled: Tensor) -> Tensor:
        """(B, T, c) weights x (B, c, H, W) features -> (B, T, H, W) mask logits."""
        batch, channels, height, width = upscaled.shape
        return (weights @ upscaled.view(batch, channels, height * width)).view(batch, -1, height, width)

    def select_outputs(self, masks: Tensor, iou_pred: Tensor, multimask_output: bool) -> Tuple[Tensor, Tensor]:
        """Keep the multimask candidates (tokens 1..) or the single-mask output (token 0)."""
        selected = slice(1, self.num_mask_tokens) if multimask_output else slice(0, 1)
        return masks[:, selected, :, :], iou_pred[:, selected]

    # -- whole pass --------------------------------------------------------------------------

    def predict_masks(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
    ) -> Tuple[Tensor, Tensor]:
        """All mask tokens' logits (B, T, 4h, 4w) and IoU predictions (B, T)."""
        tokens = self.build_tokens(sparse_prompt_embeddings)
        hs, src = self.run_transformer(image_embeddings, image_pe, dense_prompt_embeddings, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        masks = self.masks_from_weights(self.hypernetwork_weights(mask_tokens_out), self.upscale(src))
        return masks, self.iou_prediction_head(iou_token_out)

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
    ) -> Tuple[Tensor, Tensor]:
        masks, iou_pred = self.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse_prompt_embeddings,
            dense_prompt_embeddings=dense_prompt_embeddings,
        )
        return self.select_outputs(masks, iou_pred, multimask_output)
