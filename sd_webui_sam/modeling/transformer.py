"""SAM's two-way transformer: prompt tokens and image tokens attend to each other.

Decoding many prompts against one image is the hot loop of segment-everything, so the
cross-attentions are written for it: the image side may have batch 1 (shared by every prompt)
and is then projected once, and where the image side is per prompt the projections are folded
into the few prompt tokens instead of being applied to all h*w image tokens. Both give the
same attention as projecting everything, up to float rounding.

The first block's image side does not depend on the prompts at all (no mask input): its inputs
and their projections can be prepared once per image (:meth:`TwoWayTransformer.prepare`) and
reused by every prompt on it, which leaves a click little more than the second block.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple, Type

import torch
from torch import Tensor, nn

from .common import MLPBlock


@dataclass(frozen=True)
class PreparedImage:
    """What the first two-way block computes from one image (batch 1) before any prompt enters:
    the image tokens, their positional encoding and both cross-attentions' projections of them.
    Projections are per head, (heads, h*w, head_dim)."""

    keys: Tensor  # (1, h*w, C)
    key_pe: Tensor  # (1, h*w, C)
    positioned_keys: Tensor  # keys + key_pe
    token_to_image: Tuple[Tensor, Tensor]  # the token->image attention's keys and values
    image_to_token_queries: Tensor  # the image->token attention's queries


class Attention(nn.Module):
    """Multi-head attention whose q/k/v projections may shrink the width by `downsample_rate`."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide the attention width ({self.internal_dim}).")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    @property
    def head_dim(self) -> int:
        return self.internal_dim // self.num_heads

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, tokens, width = x.shape
        return x.reshape(batch, tokens, self.num_heads, width // self.num_heads).transpose(1, 2)

    @staticmethod
    def _merge_heads(x: Tensor) -> Tensor:
        batch, heads, tokens, head_dim = x.shape
        return x.transpose(1, 2).reshape(batch, tokens, heads * head_dim)

    def _per_head(self, linear: nn.Linear) -> Tensor:
        """An input projection's weight as (heads, head_dim, embedding_dim)."""
        return linear.weight.view(self.num_heads, self.head_dim, -1)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q = self._split_heads(self.q_proj(q))
        k = self._split_heads(self.k_proj(k))
        v = self._split_heads(self.v_proj(v))
        attn = q @ k.permute(0, 1, 3, 2)
        attn = attn / math.sqrt(q.shape[-1])
        attn = torch.softmax(attn, dim=-1)
        return self.out_proj(self._merge_heads(attn @ v))

    def _image_heads(self, linear: nn.Linear, image_tokens: Tensor) -> Tensor:
        """One image's (1, N, C) tokens through ``linear``, per head: (heads, N, head_dim)."""
        return linear(image_tokens[0]).view(-1, self.num_heads, self.head_dim).transpose(0, 1)

    def project_image(self, image_keys: Tensor, image_values: Tensor) -> Tuple[Tensor, Tensor]:
        """One image's keys and values for :meth:`tokens_to_image` (``projected``)."""
        return self._image_heads(self.k_proj, image_keys), self._image_heads(self.v_proj, image_values)

    def project_image_queries(self, image_queries: Tensor) -> Tensor:
        """One image's queries for :meth:`image_to_tokens` (``projected_queries``)."""
        return self._image_heads(self.q_proj, image_queries)

    def tokens_to_image(self, queries: Tensor, image_keys: Tensor, image_values: Tensor,
                        projected: Optional[Tuple[Tensor, Tensor]] = None) -> Tensor:
        """Prompt tokens (B, T, C) attend over image tokens (S, N, C), S = 1 (one image for all
        B prompts) or B; ``projected``: that one image's keys and values already projected
        (:meth:`project_image`), used instead of projecting them. Returns (B, T, C)."""
        batch, count, width = queries.shape
        heads, head_dim = self.num_heads, self.head_dim
        q = self.q_proj(queries)
        shared = image_keys.shape[0] == 1 and image_values.shape[0] == 1
        # Projecting the N image tokens costs about 2*N*C*D multiply-adds (D: the attention width);
        # folding the B*T queries into image space (below) costs 2*B*H*T*N*C instead, which is less
        # while B*T*(H*C - D) < C*D: up to about 17 tokens for SAM, as a click's one prompt has.
        if projected is None and shared and batch * count * (heads * width - self.internal_dim) >= width * self.internal_dim:
            projected = self.project_image(image_keys, image_values)
        if projected is not None:
            # The shared image projected once; every prompt's tokens become rows of one product.
            k, v = projected
            q = q.view(batch * count, heads, head_dim).transpose(0, 1)
            attn = torch.softmax((q @ k.transpose(1, 2)) / math.sqrt(head_dim), dim=-1)
            mixed = (attn @ v).transpose(0, 1).reshape(batch, count, -1)
            return self.out_proj(mixed)
        # q.(Wk x + bk) = (Wk^T q).x + q.bk: the T queries move into image space instead of the
        # N image tokens into head space; q.bk is constant along each softmax row, so it drops.
        q = q.view(batch, count, heads, head_dim).transpose(1, 2)
        q_image = torch.einsum("bhtd,hdc->bhtc", q, self._per_head(self.k_proj)).reshape(batch, heads * count, -1)
        attn = torch.softmax((q_image @ image_keys.transpose(1, 2)) / math.sqrt(head_dim), dim=-1)
        # Softmax rows sum to one, so the value projection (bias included) applies after mixing.
        mixed = (attn @ image_values).view(batch, heads, count, -1)
        values = torch.einsum("bhtc,hdc->bthd", mixed, self._per_head(self.v_proj)).reshape(batch, count, -1)
        return self.out_proj(values + self.v_proj.bias)

    def image_to_tokens(self, image_queries: Tensor, token_keys: Tensor, token_values: Tensor, residual: Tensor,
                        projected_queries: Optional[Tensor] = None) -> Tensor:
        """Image tokens (S, N, C), S = 1 or B, attend over each prompt's tokens (B, T, C);
        ``projected_queries``: that one image's queries already projected
        (:meth:`project_image_queries`), used instead of folding the projection into the keys.

        Returns ``residual`` (broadcastable to (B, N, C)) plus the attention output, (B, N, C).
        """
        batch, count, _ = token_keys.shape
        heads, head_dim = self.num_heads, self.head_dim
        k = self._split_heads(self.k_proj(token_keys))
        if projected_queries is not None:
            logits = (k @ projected_queries.transpose(1, 2)).view(batch, heads * count, -1) / math.sqrt(head_dim)
        else:
            # (Wq x + bq).k = x.(Wq^T k) + bq.k: the keys move into image space, so the N image
            # tokens are never projected; the out projection is folded into the values likewise.
            k_image = torch.einsum("bhtd,hdc->bhtc", k, self._per_head(self.q_proj)).reshape(batch, heads * count, -1)
            k_bias = torch.einsum("bhtd,hd->bht", k, self.q_proj.bias.view(heads, head_dim)).reshape(batch, heads * count, 1)
            if image_queries.shape[0] == 1 and batch > 1:
                logits = (k_image.reshape(batch * heads * count, -1) @ image_queries[0].t()).view(batch, heads * count, -1)
            else:
                logits = k_image @ image_queries.transpose(1, 2)
            logits = (logits + k_bias) / math.sqrt(head_dim)
        # (B, H, T, N): the softmax runs over the T tokens of each head, with N innermost.
        attn = torch.softmax(logits.view(batch, heads, count, -1), dim=2).view(batch, heads * count, -1)
        v = self._split_heads(self.v_proj(token_values))
        out_weight = self.out_proj.weight.view(-1, heads, head_dim)
        v_out = torch.einsum("bhtd,chd->bhtc", v, out_weight).reshape(batch, heads * count, -1)
        # Each head's weights sum to one, so the out bias spreads over the heads' values.
        v_out = v_out + self.out_proj.bias / heads
        return torch.baddbmm(residual, attn.transpose(1, 2), v_out)


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image cross-attention, token MLP, image->token cross-attention."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: Type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate=attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, downsample_rate=attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def prepare(self, keys: Tensor, key_pe: Tensor) -> PreparedImage:
        """One image's side of this block, as :meth:`forward` computes it for any prompt: keys (1, N, C)."""
        positioned_keys = keys + key_pe
        return PreparedImage(
            keys=keys,
            key_pe=key_pe,
            positioned_keys=positioned_keys,
            token_to_image=self.cross_attn_token_to_image.project_image(positioned_keys, keys),
            image_to_token_queries=self.cross_attn_image_to_token.project_image_queries(positioned_keys),
        )

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor,
                prepared: Optional[PreparedImage] = None) -> Tuple[Tensor, Tensor]:
        """queries (B, T, C); keys (S, N, C) with S = 1 (shared) or B. Returns keys as (B, N, C).
        ``prepared``: :meth:`prepare` of these keys, whose projections are then not recomputed."""
        if self.skip_first_layer_pe:
            # The first layer's tokens are the prompt embeddings themselves (they already carry position).
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        positioned_keys = prepared.positioned_keys if prepared is not None else keys + key_pe
        q = queries + query_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image.tokens_to_image(
            q, positioned_keys, keys, projected=prepared.token_to_image if prepared is not None else None))

        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(self.cross_attn_image_to_token.image_to_tokens(
            positioned_keys, q, queries, residual=keys,
            projected_queries=prepared.image_to_token_queries if prepared is not None else None))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Stack of two-way blocks plus a final token->image attention."""

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: Type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(index == 0),
            )
            for index in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate=attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor) -> Tuple[Tensor, Tensor]:
        """image_embedding: (S, C, h, w) with S = 1 (one image for every prompt) or B;
        image_pe: (1, C, h, w); point_embedding: (B, N, C).

        Returns the processed tokens (B, N, C) and image tokens (B, h*w, C).
        """
        keys = image_embedding.flatten(2).permute(0, 2, 1)
        key_pe = image_pe.flatten(2).permute(0, 2, 1)
        return self._run(keys, key_pe, point_embedding)

    def prepare(self, image_embedding: Tensor, image_pe: Tensor) -> PreparedImage:
        """The first block's image side for one image's (1, C, h, w) embedding, for :meth:`forward_prepared`."""
        return self.layers[0].prepare(image_embedding.flatten(2).permute(0, 2, 1), image_pe.flatten(2).permute(0, 2, 1))

    def forward_prepared(self, prepared: PreparedImage, point_embedding: Tensor) -> Tuple[Tensor, Tensor]:
        """:meth:`forward` for the image that ``prepared`` holds."""
        return self._run(prepared.keys, prepared.key_pe, point_embedding, prepared)

    def _run(self, keys: Tensor, key_pe: Tensor, point_embedding: Tensor,
             prepared: Optional[PreparedImage] = None) -> Tuple[Tensor, Tensor]:
        queries = point_embedding
        for index, layer in enumerate(self.layers):
            queries, keys = layer(queries=queries, keys=keys, query_pe=point_embedding, key_pe=key_pe,
                                  prepared=prepared if index == 0 else None)
        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image.tokens_to_image(q, k, keys))
        if keys.shape[0] != queries.shape[0]:
            keys = keys.expand(queries.shape[0], -1, -1)
        return queries, keys
