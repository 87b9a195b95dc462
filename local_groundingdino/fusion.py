"""Feature enhancer pieces: image<->text bi-directional attention and the text self-attention layer."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Attention scores are clamped to this range before the softmax (as trained, for fp16).
SCORE_CLAMP = 50000.0


class BiMultiHeadAttention(nn.Module):
    def __init__(self, v_dim: int, l_dim: int, embed_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.v_proj = nn.Linear(v_dim, embed_dim)
        self.l_proj = nn.Linear(l_dim, embed_dim)
        self.values_v_proj = nn.Linear(v_dim, embed_dim)
        self.values_l_proj = nn.Linear(l_dim, embed_dim)
        self.out_v_proj = nn.Linear(embed_dim, v_dim)
        self.out_l_proj = nn.Linear(embed_dim, l_dim)

    def _heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def _per_head(self, weight: Tensor) -> Tensor:
        """An input projection's (embed, dim) weight as (heads, head_dim, dim)."""
        return weight.view(self.num_heads, self.head_dim, -1)

    def forward(self, image: Tensor, text: Tensor, text_padding: Tensor | None) -> tuple[Tensor, Tensor]:
        """image (B,N,Cv), text (B,T,Cl); text_padding (B,T) True for padding. Returns the two updates.

        The image has tens of thousands of tokens and the text a handful, so none of the
        image-side projections runs over the image tokens: (Wv x + bv).k = x.(Wv^T k) + bv.k moves
        the text keys into image space, the image's value projection applies after the attention
        has mixed the image (softmax rows sum to one), and the image's out projection is folded
        into the text values. Same result as projecting, up to float rounding.
        """
        batch, pixels, _ = image.shape
        heads, count = self.num_heads, text.shape[1]
        key = self._heads(self.l_proj(text))                                            # B, h, T, d
        key_image = torch.einsum("bhtd,hdc->bhtc", key, self._per_head(self.v_proj.weight))
        key_bias = torch.einsum("bhtd,hd->bht", key, self.v_proj.bias.view(heads, -1))
        scores = (key_image.reshape(batch, heads * count, -1) @ image.transpose(1, 2)).view(batch, heads, count, pixels)
        scores = (scores + key_bias[..., None]) * self.scale                            # B, h, T, N
        # One shift by the global maximum, then per-row maxima: the order the weights were trained with.
        scores = (scores - scores.max()).clamp(-SCORE_CLAMP, SCORE_CLAMP)
        scores_for_text = (scores - scores.max(-1, keepdim=True)[0]).clamp(-SCORE_CLAMP, SCORE_CLAMP)
        if text_padding is not None:
            scores = scores.masked_fill(text_padding[:, None, :, None], float("-inf"))

        text_values = self._heads(self.values_l_proj(text))                            # B, h, T, d
        out_weight = self.out_v_proj.weight.view(-1, heads, self.head_dim)             # Cv, h, d
        text_values_out = torch.einsum("bhtd,chd->bhtc", text_values, out_weight).reshape(batch, heads * count, -1)
        weights_for_image = scores.softmax(2).view(batch, heads * count, pixels)        # over T, per head
        image_update = torch.baddbmm(self.out_v_proj.bias, weights_for_image.transpose(1, 2), text_values_out)

        mixed_image = scores_for_text.softmax(-1).view(batch, heads * count, pixels) @ image
        mixed_image = mixed_image.view(batch, heads, count, -1)                          # B, h, T, Cv
        text_update = torch.einsum("bhtc,hdc->bthd", mixed_image, self._per_head(self.values_v_proj.weight))
        text_update = text_update + self.values_v_proj.bias.view(heads, -1)
        return image_update, self.out_l_proj(text_update.reshape(batch, count, -1))


class BiAttentionBlock(nn.Module):
    """Image and text features exchange information; gated residuals (gamma) as trained."""

    def __init__(self, v_dim: int, l_dim: int, embed_dim: int, num_heads: int):
        super().__init__()
        self.layer_norm_v = nn.LayerNorm(v_dim)
        self.layer_norm_l = nn.LayerNorm(l_dim)
        self.attn = BiMultiHeadAttention(v_dim, l_dim, embed_dim, num_heads)
        self.gamma_v = nn.Parameter(torch.full((v_dim,), 1e-4))
        self.gamma_l = nn.Parameter(torch.full((l_dim,), 1e-4))

    def forward(self, image: Tensor, text: Tensor, text_padding: Tensor | None) -> tuple[Tensor, Tensor]:
        image = self.layer_norm_v(image)
        text = self.layer_norm_l(text)
        image_update, text_update = self.attn(image, text, text_padding)
        return image + self.gamma_v * image_update, text + self.gamma_l * text_update


class TextEnhancerLayer(nn.Module):
    """Self-attention among the text tokens (each phrase block only), then a feed-forward."""

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int):
        super().__init__()
        self.num_heads = num_heads
        self.self_attn = nn.MultiheadAttention(d_model, num_heads)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, text: Tensor, allowed: Tensor, position: Tensor) -> Tensor:
        """text (B,T,C); allowed (B,T,T) bool True where attention is allowed; position (B,T,C)."""
        query = (text + position).transpose(0, 1)
        blocked = (~allowed).repeat_interleave(self.num_heads, dim=0)
        attended = self.self_attn(query, query, text.transpose(0, 1), attn_mask=blocked, need_weights=False)[0]
        text = self.norm1(text + attended.transpose(0, 1))
        return self.norm2(text + self.linear2(F.relu(self.linear1(text))))
