"""SAM's mask decoder, split into steps an HQ decoder can reuse one by one:

1. :meth:`MaskDecoder.build_tokens` - output tokens (IoU + mask tokens) followed by the prompt tokens;
2. :meth:`MaskDecoder.run_transformer` - two-way attention between tokens and image;
3. :meth:`MaskDecoder.upscale` - image side back to 4x the embedding resolution;
4. :meth:`MaskDecoder.hypernetwork_weights` / :meth:`MaskDecoder.masks_from_weights` - one mask per token;
5. :meth:`MaskDecoder.iou_prediction_head` and :meth:`MaskDecoder.select_outputs` - scores, multimask choice.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import MLP, LayerNorm2d
from .transformer import PreparedImage, TwoWayTransformer

# Upscaled pixels processed per step on the CPU: one prompt at SAM's 256x256 (8 MB of 32-channel
# features), which measured faster than a quarter prompt or 2-4 prompts. Other devices take
# every prompt at once.
CPU_UPSCALE_PIXELS_PER_STEP = 256 * 256


def _weights_state(module: nn.Module) -> tuple:
    """What tells ``module``'s weights apart from what they were: where each lives and, for
    ordinary tensors, how often it was changed in place (load_state_dict copies in place).
    Inference tensors (a host may build its models under torch.inference_mode, as Forge does)
    keep no such count; they can only be changed inside inference mode, which nothing here does."""
    return tuple((p.data_ptr(), -1 if p.is_inference() else p._version) for p in module.parameters())


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
        # The last image's prepared transformer input, with what it was made from (see prepared_image):
        # one image's worth (about 14 MB for SAM), replaced by the next image's.
        self._prepared_image: Optional[Tuple[Tensor, Tensor, Tensor, tuple, PreparedImage]] = None

    # -- steps -------------------------------------------------------------------------------

    def output_token_weights(self) -> Tensor:
        """(T, C): the learned output tokens placed before the prompt tokens. HQ appends its own."""
        return torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)

    def build_tokens(self, sparse_prompt_embeddings: Tensor) -> Tensor:
        """(B, T + N, C): output tokens followed by the (B, N, C) prompt tokens."""
        output_tokens = self.output_token_weights().unsqueeze(0)
        output_tokens = output_tokens.expand(sparse_prompt_embeddings.shape[0], -1, -1)
        return torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)

    def run_transformer_tokens(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        dense_prompt_embeddings: Tensor,
        tokens: Tensor,
    ) -> Tuple[Tensor, Tensor]:
        """Returns processed tokens (B, T + N, C) and the image side as tokens (B, h*w, C).

        One image's embeddings (batch 1) serve all B prompts; while the dense prompt embedding
        is also shared (no mask inputs), the transformer keeps the image side at batch 1 for
        as long as it can.
        """
        if dense_prompt_embeddings.shape[0] > 1 and dense_prompt_embeddings.stride(0) == 0:
            dense_prompt_embeddings = dense_prompt_embeddings[:1]  # an expanded single embedding
        prepared = self.prepared_image(image_embeddings, image_pe, dense_prompt_embeddings)
        if prepared is not None:
            return self.transformer.forward_prepared(prepared, tokens)
        src = image_embeddings + dense_prompt_embeddings
        return self.transformer(src, image_pe[:1], tokens)

    def _apply(self, fn, *args, **kwargs):
        # .to(), .cpu(), .half() and the like: the kept step holds tensors of the old placement
        # (moving a model off the GPU must free its memory there too).
        self._prepared_image = None
        return super()._apply(fn, *args, **kwargs)

    def prepared_image(self, image_embeddings: Tensor, image_pe: Tensor, dense_prompt_embeddings: Tensor) -> Optional[PreparedImage]:
        """The transformer's prompt-independent first step for one image with no mask input, kept
        for the next prompts on the same embeddings (each click on a picture), or None where it
        does not apply: several images, a mask input, or gradients being recorded.

        Every prompt of such an image takes this path, the first one included, so an answer never
        depends on what was asked before. The kept step is reused while the embeddings and the
        positional encoding are the same tensors, the "no mask" embedding has the same values and
        the first block's weights were not replaced or changed in place.
        """
        dense = dense_prompt_embeddings
        if (torch.is_grad_enabled() or not isinstance(self.transformer, TwoWayTransformer)
                or image_embeddings.shape[0] != 1 or dense.shape[0] != 1
                or dense.stride(-1) != 0 or dense.stride(-2) != 0):
            return None
        no_mask = dense[0, :, 0, 0]  # spatially constant: the learned "no mask" embedding
        weights = _weights_state(self.transformer.layers[0])
        kept = self._prepared_image
        if kept is not None:
            embeddings, pe, kept_no_mask, kept_weights, prepared = kept
            if embeddings is image_embeddings and pe is image_pe and kept_weights == weights and torch.equal(kept_no_mask, no_mask):
                return prepared
        prepared = self.transformer.prepare(image_embeddings + dense, image_pe[:1])
        self._prepared_image = (image_embeddings, image_pe, no_mask.clone(), weights, prepared)
        return prepared

    def run_transformer(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        dense_prompt_embeddings: Tensor,
        tokens: Tensor,
    ) -> Tuple[Tensor, Tensor]:
        """Like :meth:`run_transformer_tokens`, with the image side as a (B, C, h, w) map."""
        _, channels, height, width = image_embeddings.shape
        hs, image_tokens = self.run_transformer_tokens(image_embeddings, image_pe, dense_prompt_embeddings, tokens)
        return hs, image_tokens.transpose(1, 2).reshape(tokens.shape[0], channels, height, width)

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

    def _token_upscaling(self) -> Optional[Tuple[nn.Module, ...]]:
        """The upscaling layers when they have SAM's shape (two 2x2 stride-2 transposed convs with
        a channel LayerNorm and activations), which :meth:`masks_from_image_tokens` relies on."""
        layers = tuple(self.output_upscaling)
        if len(layers) != 5 or not isinstance(layers[1], LayerNorm2d):
            return None
        for conv in (layers[0], layers[3]):
            if not (isinstance(conv, nn.ConvTranspose2d) and conv.kernel_size == (2, 2) and conv.stride == (2, 2)
                    and conv.padding == (0, 0) and conv.bias is not None and conv.groups == 1):
                return None
        return layers

    def masks_from_image_tokens(self, weights: Tensor, image_tokens: Tensor, grid: Tuple[int, int],
                                first_residual: Optional[Tensor] = None, second_residual: Optional[Tensor] = None) -> Tensor:
        """(B, T, c) weights x the transformer's (B, h*w, C) image tokens -> (B, T, 4h, 4w) logits.

        Same result as :meth:`upscale` then :meth:`masks_from_weights`. A 2x2 stride-2 transposed
        convolution is one matrix product per input pixel, so the upscaling runs on the token
        layout with no transposes (on the CPU a band of one prompt at a time, to keep the 16x
        larger features in cache), and only the T mask channels are put back in image order.

        ``first_residual`` / ``second_residual`` (SAM 2's high-resolution image features, shared
        by all prompts) are added after each transposed convolution, before its normalisation /
        activation, already in this token layout: (h*w, 4*C1) with columns (dy, dx, channel), and
        (h*w*4, 4*C2) with rows (pixel, dy1, dx1) and columns (dy2, dx2, channel).
        """
        layers = self._token_upscaling()
        if layers is None:
            if first_residual is not None or second_residual is not None:
                raise ValueError("Residual features need SAM's upscaling layout.")
            batch, _, channels = image_tokens.shape
            src = image_tokens.transpose(1, 2).reshape(batch, channels, *grid)
            return self.masks_from_weights(weights, self.upscale(src))
        first, norm, first_act, second, second_act = layers
        batch, tokens, channels = image_tokens.shape
        height, width = grid
        mid, out = first.out_channels, second.out_channels
        # columns ordered (row offset, column offset, channel), so channels stay innermost
        first_weight = first.weight.permute(0, 2, 3, 1).reshape(channels, 4 * mid)
        second_weight = second.weight.permute(0, 2, 3, 1).reshape(mid, 4 * out)
        first_bias, second_bias = first.bias.repeat(4), second.bias.repeat(4)
        masks = weights.new_empty(batch, weights.shape[1], 4 * height, 4 * width)
        prompts, band = batch, height
        if image_tokens.device.type == "cpu":
            budget = CPU_UPSCALE_PIXELS_PER_STEP
            prompts = max(1, min(batch, budget // (16 * tokens)))
            band = max(1, min(height, budget // (16 * width)))
        for first_prompt in range(0, batch, prompts):
            chunk = slice(first_prompt, min(batch, first_prompt + prompts))
            count = chunk.stop - chunk.start
            for top in range(0, height, band):
                rows = min(band, height - top)
                pixels = image_tokens[chunk, top * width : (top + rows) * width].reshape(-1, channels)
                features = torch.addmm(first_bias, pixels, first_weight)
                if first_residual is not None:
                    band_rows = slice(top * width, (top + rows) * width)
                    features = (features.view(count, -1, 4 * mid) + first_residual[band_rows]).view(-1, 4 * mid)
                features = F.layer_norm(features.view(-1, mid), (mid,), norm.weight, norm.bias, norm.eps)
                features = torch.addmm(second_bias, first_act(features), second_weight)
                if second_residual is not None:
                    band_rows = slice(4 * top * width, 4 * (top + rows) * width)
                    features = (features.view(count, -1, 4 * out) + second_residual[band_rows]).view(-1, 4 * out)
                features = second_act(features).view(count, -1, out)
                logits = weights[chunk] @ features.transpose(1, 2)
                # columns are (y, x, dy1, dx1, dy2, dx2): pixel (4y + 2dy1 + dy2, 4x + 2dx1 + dx2)
                logits = logits.view(count, -1, rows, width, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
                target = masks[chunk, :, 4 * top : 4 * (top + rows)]
                target.view(count, -1, rows, 2, 2, width, 2, 2).copy_(logits)
        return masks

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
        hs, image_tokens = self.run_transformer_tokens(image_embeddings, image_pe, dense_prompt_embeddings, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        weights = self.hypernetwork_weights(mask_tokens_out)
        masks = self.masks_from_image_tokens(weights, image_tokens, tuple(image_embeddings.shape[-2:]))
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
