"""HQ-SAM's mask decoder: SAM's decoder plus one learned "HQ output token".

HQ-SAM (Ke et al., "Segment Anything in High Quality", 2023) freezes SAM and adds:

* an HQ output token that goes through the two-way transformer with SAM's own tokens and gets
  its own hypernetwork MLP (``hf_token``, ``hf_mlp``);
* "HQ features": the decoder's upscaled image features refined by two 3x3 convolutions
  (``embedding_maskfeature``), plus a global-context term from the final image embedding
  (``embedding_encoder``) and a local-detail term from the early encoder features, i.e. the
  output of the first global-attention block (``compress_vit_feat``); both are upsampled by
  transposed convolutions to the 4x mask resolution.

The HQ mask is the HQ token's weights applied to the HQ features. It is combined with SAM's
mask logits by addition (or used alone with ``hq_token_only``).

Everything SAM already does (tokens, transformer, upscaling, hypernetworks) is reused from
:class:`sd_webui_sam.modeling.MaskDecoder`; this class only adds the HQ parts.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn

from sd_webui_sam.modeling import MLP, LayerNorm2d, MaskDecoder

#: Ways to turn SAM's candidates and the HQ mask into the decoder's output.
HQ_MULTIMASK_CANDIDATES = "candidates"
HQ_MULTIMASK_BEST = "best"
HQ_MULTIMASK_MODES = (HQ_MULTIMASK_CANDIDATES, HQ_MULTIMASK_BEST)


class MaskDecoderHQ(MaskDecoder):
    def __init__(self, *, transformer_dim: int, transformer: nn.Module, vit_dim: int, **kwargs) -> None:
        super().__init__(transformer_dim=transformer_dim, transformer=transformer, **kwargs)
        mask_dim = transformer_dim // 8
        self.hf_token = nn.Embedding(1, transformer_dim)
        self.hf_mlp = MLP(transformer_dim, transformer_dim, mask_dim, 3)
        # Sequential indices (0, 1, 3) are part of the checkpoint key names.
        self.compress_vit_feat = nn.Sequential(
            nn.ConvTranspose2d(vit_dim, transformer_dim, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim, mask_dim, kernel_size=2, stride=2),
        )
        self.embedding_encoder = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, mask_dim, kernel_size=2, stride=2),
        )
        self.embedding_maskfeature = nn.Sequential(
            nn.Conv2d(mask_dim, transformer_dim // 4, 3, 1, 1),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.Conv2d(transformer_dim // 4, mask_dim, 3, 1, 1),
        )

    def output_token_weights(self) -> Tensor:
        """SAM's IoU and mask tokens, then the HQ token (its position is what the weights learned)."""
        return torch.cat([super().output_token_weights(), self.hf_token.weight], dim=0)

    def image_hq_features(self, image_embeddings: Tensor, early_features: Tensor) -> Tensor:
        """(B, C/8, 4h, 4w) per-image part of the HQ features.

        image_embeddings: (B, C, h, w) encoder output; early_features: (B, h, w, vit_dim), the
        first global-attention block's output. It depends on the image only, so the segmenter
        computes it once per image rather than once per prompt.
        """
        return self.embedding_encoder(image_embeddings) + self.compress_vit_feat(early_features.permute(0, 3, 1, 2))

    def predict_masks_hq(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        hq_features: Tensor,
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """SAM's mask logits (B, 4, H, W), the HQ mask logits (B, 1, H, W), IoU predictions (B, 4)."""
        tokens = self.build_tokens(sparse_prompt_embeddings)
        hs, src = self.run_transformer(image_embeddings, image_pe, dense_prompt_embeddings, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 2 + self.num_mask_tokens, :]
        upscaled_sam = self.upscale(src)
        upscaled_hq = self.embedding_maskfeature(upscaled_sam) + hq_features
        weights = self.hypernetwork_weights(mask_tokens_out, [*self.output_hypernetworks_mlps, self.hf_mlp])
        masks_sam = self.masks_from_weights(weights[:, : self.num_mask_tokens], upscaled_sam)
        masks_hq = self.masks_from_weights(weights[:, self.num_mask_tokens :], upscaled_hq)
        return masks_sam, masks_hq, self.iou_prediction_head(iou_token_out)

    def select_outputs_hq(
        self,
        masks_sam: Tensor,
        masks_hq: Tensor,
        iou_pred: Tensor,
        *,
        multimask_output: bool,
        hq_token_only: bool,
        multimask_mode: str = HQ_MULTIMASK_CANDIDATES,
    ) -> Tuple[Tensor, Tensor]:
        """Combine SAM's masks with the HQ mask.

        * single mask: SAM's token-0 mask + HQ mask, with token 0's score;
        * multimask, "best" (the HQ-SAM authors' code): the highest-scoring of SAM's three
          candidates + HQ mask, one output with that score;
        * multimask, "candidates": each of SAM's three candidates + HQ mask, three outputs
          with their scores, so a user can still choose between whole / part / sub-part.

        With ``hq_token_only`` the HQ mask alone is returned (one output; its score is the one
        the rule above would have reported for a single output: token 0's, or the best
        candidate's in multimask mode).
        """
        if multimask_mode not in HQ_MULTIMASK_MODES:
            raise ValueError(f"multimask mode must be one of {HQ_MULTIMASK_MODES}, not {multimask_mode!r}")
        if not multimask_output:
            score = iou_pred[:, 0:1]
            return (masks_hq if hq_token_only else masks_sam[:, 0:1] + masks_hq), score
        candidates = masks_sam[:, 1 : self.num_mask_tokens]
        candidate_scores = iou_pred[:, 1 : self.num_mask_tokens]
        if multimask_mode == HQ_MULTIMASK_CANDIDATES and not hq_token_only:
            return candidates + masks_hq, candidate_scores
        best_score, best_index = torch.max(candidate_scores, dim=1)
        if hq_token_only:
            return masks_hq, best_score.unsqueeze(1)
        best = candidates[torch.arange(candidates.shape[0], device=candidates.device), best_index].unsqueeze(1)
        return best + masks_hq, best_score.unsqueeze(1)

    def forward(  # type: ignore[override]  # the HQ decoder needs the HQ features too
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        hq_features: Tensor,
        *,
        multimask_output: bool,
        hq_token_only: bool = False,
        multimask_mode: str = HQ_MULTIMASK_CANDIDATES,
    ) -> Tuple[Tensor, Tensor]:
        masks_sam, masks_hq, iou_pred = self.predict_masks_hq(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, hq_features
        )
        return self.select_outputs_hq(
            masks_sam,
            masks_hq,
            iou_pred,
            multimask_output=multimask_output,
            hq_token_only=hq_token_only,
            multimask_mode=multimask_mode,
        )
