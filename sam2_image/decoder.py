"""SAM 2's prompt encoder and mask decoder, built on SAM's blocks (same maths, SAM 2's key names).

What SAM 2 changes on the prompt side: a box is two corner points placed before the clicks,
and a "not a point" token is always appended (SAM 2's image predictor sends every prompt as
points). On the decoder side: an object-score token before the IoU token, the IoU head ends in
a sigmoid, the two upscaling steps add the stride-4 and stride-8 image features (``conv_s0`` /
``conv_s1`` of the encoder's finer levels), and, optionally, the single-mask output falls back
to the best multimask candidate when it is unstable.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from sd_webui_sam.modeling import MLP, MaskDecoder, PromptEncoder, TwoWayTransformer

DECODER_DEPTH = 2
DECODER_HEADS = 8
MASK_IN_CHANS = 16


class Sam2PromptEncoder(PromptEncoder):
    def encode(self, point_coords: Optional[Tensor], point_labels: Optional[Tensor], boxes: Optional[Tensor],
               masks: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """Sparse tokens [box corners, points, not-a-point] (none without points or box) and the dense embedding."""
        parts = []
        if boxes is not None:
            parts.append(self._embed_boxes(boxes))
        if point_coords is not None:
            parts.append(self._embed_points(point_coords, point_labels, pad=True))
        elif boxes is not None:
            parts.append(self._embed_points(boxes.new_zeros((boxes.shape[0], 0, 2)), boxes.new_zeros((boxes.shape[0], 0)), pad=True))
        if parts:
            sparse = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        else:
            batch = masks.shape[0] if masks is not None else 1
            sparse = self.no_mask_embed.weight.new_empty((batch, 0, self.embed_dim))
        if masks is not None:
            dense = self._embed_masks(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(sparse.shape[0], -1, *self.image_embedding_size)
        return sparse, dense


class Sam2MaskDecoder(MaskDecoder):
    def __init__(
        self,
        *,
        transformer_dim: int,
        mlp_dim: int,
        use_high_res_features: bool,
        pred_obj_scores: bool,
        pred_obj_scores_mlp: bool,
        iou_prediction_use_sigmoid: bool = True,
        stability_delta: float = 0.05,
        stability_thresh: float = 0.98,
    ) -> None:
        transformer = TwoWayTransformer(depth=DECODER_DEPTH, embedding_dim=transformer_dim, num_heads=DECODER_HEADS, mlp_dim=mlp_dim)
        for layer in transformer.layers:
            # SAM 2 names the token MLP's layers ``mlp.layers.0/1`` (ReLU between, as SAM's MLPBlock).
            layer.mlp = MLP(transformer_dim, mlp_dim, transformer_dim, 2)
        super().__init__(transformer_dim=transformer_dim, transformer=transformer, num_multimask_outputs=3,
                         iou_head_depth=3, iou_head_hidden_dim=256)
        self.iou_prediction_head.sigmoid_output = iou_prediction_use_sigmoid
        self.pred_obj_scores = pred_obj_scores
        if pred_obj_scores:
            self.obj_score_token = nn.Embedding(1, transformer_dim)
            self.pred_obj_score_head = MLP(transformer_dim, transformer_dim, 1, 3) if pred_obj_scores_mlp else nn.Linear(transformer_dim, 1)
        self.use_high_res_features = use_high_res_features
        if use_high_res_features:
            self.conv_s0 = nn.Conv2d(transformer_dim, transformer_dim // 8, kernel_size=1)
            self.conv_s1 = nn.Conv2d(transformer_dim, transformer_dim // 4, kernel_size=1)
        self.stability_delta = stability_delta
        self.stability_thresh = stability_thresh

    def output_token_weights(self) -> Tensor:
        tokens = [self.iou_token.weight, self.mask_tokens.weight]
        if self.pred_obj_scores:
            tokens.insert(0, self.obj_score_token.weight)
        return torch.cat(tokens, dim=0)

    def high_res_features(self, level0: Tensor, level1: Tensor) -> Tuple[Tensor, Tensor]:
        """The image-only part of the high-resolution path, computed once per image, in the token
        layout :meth:`MaskDecoder.masks_from_image_tokens` adds them in: stride-4 features as
        (h*w*4, 4*C/8), stride-8 features as (h*w, 4*C/4), for an (h, w) embedding grid."""
        feat_s0, feat_s1 = self.conv_s0(level0), self.conv_s1(level1)
        side_h, side_w = feat_s1.shape[-2] // 2, feat_s1.shape[-1] // 2
        s1 = feat_s1[0].reshape(-1, side_h, 2, side_w, 2).permute(1, 3, 2, 4, 0)
        s0 = feat_s0[0].reshape(-1, side_h, 2, 2, side_w, 2, 2).permute(1, 4, 2, 5, 3, 6, 0)
        return s0.reshape(side_h * side_w * 4, -1).contiguous(), s1.reshape(side_h * side_w, -1).contiguous()

    def predict_masks_high_res(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        high_res: Optional[Tuple[Tensor, Tensor]],
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """All tokens' mask logits (B, 4, 4h, 4w), IoU predictions (B, 4) and object-score logits (B, 1)."""
        tokens = self.build_tokens(sparse_prompt_embeddings)
        hs, image_tokens = self.run_transformer_tokens(image_embeddings, image_pe, dense_prompt_embeddings, tokens)
        first = 1 if self.pred_obj_scores else 0
        iou_token_out = hs[:, first, :]
        mask_tokens_out = hs[:, first + 1 : first + 1 + self.num_mask_tokens, :]
        weights = self.hypernetwork_weights(mask_tokens_out)
        grid = tuple(image_embeddings.shape[-2:])
        second_residual, first_residual = high_res if high_res is not None else (None, None)
        masks = self.masks_from_image_tokens(weights, image_tokens, grid, first_residual, second_residual)
        if self.pred_obj_scores:
            object_scores = self.pred_obj_score_head(hs[:, 0, :])
        else:
            object_scores = 10.0 * iou_token_out.new_ones(iou_token_out.shape[0], 1)
        return masks, self.iou_prediction_head(iou_token_out), object_scores

    def stability_scores(self, logits: Tensor) -> Tensor:
        flat = logits.flatten(-2)
        inner = (flat > self.stability_delta).sum(-1).float()
        outer = (flat > -self.stability_delta).sum(-1).float()
        return torch.where(outer > 0, inner / outer.clamp(min=1), torch.ones_like(outer))

    def select_outputs_dynamic(self, masks: Tensor, iou_pred: Tensor) -> Tuple[Tensor, Tensor]:
        """Single-mask output, replaced by the best-scoring multimask candidate where unstable."""
        candidates, candidate_iou = masks[:, 1:], iou_pred[:, 1:]
        best = candidate_iou.argmax(dim=-1)
        rows = torch.arange(masks.shape[0], device=masks.device)
        best_masks, best_iou = candidates[rows, best].unsqueeze(1), candidate_iou[rows, best].unsqueeze(1)
        single, single_iou = masks[:, 0:1], iou_pred[:, 0:1]
        stable = self.stability_scores(single) >= self.stability_thresh
        return (torch.where(stable[..., None, None], single, best_masks), torch.where(stable, single_iou, best_iou))
