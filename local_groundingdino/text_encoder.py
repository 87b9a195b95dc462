"""BERT encoder (bert-base-uncased layout) whose weights come from the GroundingDINO checkpoint.

Parameter names follow the ``bert.*`` keys the official checkpoints store, so nothing is
downloaded: the architecture is built from :class:`BertShape` and filled from the file.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BERT_LAYER_NORM_EPS = 1e-12
#: Every released BERT size uses 64-dimensional heads, so the head count follows from the width.
BERT_HEAD_DIM = 64


@dataclass(frozen=True)
class BertShape:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    intermediate_size: int = 3072
    max_positions: int = 512
    type_vocab_size: int = 2

    @property
    def num_heads(self) -> int:
        return max(1, self.hidden_size // BERT_HEAD_DIM)


class BertEmbeddings(nn.Module):
    def __init__(self, shape: BertShape):
        super().__init__()
        self.word_embeddings = nn.Embedding(shape.vocab_size, shape.hidden_size)
        self.position_embeddings = nn.Embedding(shape.max_positions, shape.hidden_size)
        self.token_type_embeddings = nn.Embedding(shape.type_vocab_size, shape.hidden_size)
        self.LayerNorm = nn.LayerNorm(shape.hidden_size, eps=BERT_LAYER_NORM_EPS)

    def forward(self, input_ids: Tensor, position_ids: Tensor) -> Tensor:
        token_types = torch.zeros_like(input_ids)
        summed = self.word_embeddings(input_ids) + self.token_type_embeddings(token_types) + self.position_embeddings(position_ids)
        return self.LayerNorm(summed)


class BertSelfAttentionProjections(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)


class BertResidualOutput(nn.Module):
    def __init__(self, in_features: int, hidden: int):
        super().__init__()
        self.dense = nn.Linear(in_features, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=BERT_LAYER_NORM_EPS)

    def forward(self, hidden_states: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(hidden_states) + residual)


class BertAttention(nn.Module):
    def __init__(self, hidden: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.self = BertSelfAttentionProjections(hidden)
        self.output = BertResidualOutput(hidden, hidden)

    def forward(self, hidden_states: Tensor, allowed: Tensor) -> Tensor:
        batch, length, width = hidden_states.shape

        def heads(projection: nn.Linear) -> Tensor:
            return projection(hidden_states).view(batch, length, self.num_heads, -1).transpose(1, 2)

        context = F.scaled_dot_product_attention(
            heads(self.self.query), heads(self.self.key), heads(self.self.value), attn_mask=allowed[:, None]
        )
        context = context.transpose(1, 2).reshape(batch, length, width)
        return self.output(context, hidden_states)


class BertIntermediate(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.dense = nn.Linear(hidden, intermediate)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return F.gelu(self.dense(hidden_states))


class BertLayer(nn.Module):
    def __init__(self, shape: BertShape):
        super().__init__()
        self.attention = BertAttention(shape.hidden_size, shape.num_heads)
        self.intermediate = BertIntermediate(shape.hidden_size, shape.intermediate_size)
        self.output = BertResidualOutput(shape.intermediate_size, shape.hidden_size)

    def forward(self, hidden_states: Tensor, allowed: Tensor) -> Tensor:
        attended = self.attention(hidden_states, allowed)
        return self.output(self.intermediate(attended), attended)


class BertStack(nn.Module):
    def __init__(self, shape: BertShape):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(shape) for _ in range(shape.num_layers))


class BertTextEncoder(nn.Module):
    """Token ids -> contextual features (B, T, hidden), attention limited to each phrase block."""

    def __init__(self, shape: BertShape):
        super().__init__()
        self.shape = shape
        self.embeddings = BertEmbeddings(shape)
        self.encoder = BertStack(shape)

    def forward(self, input_ids: Tensor, self_attention_mask: Tensor, position_ids: Tensor) -> Tensor:
        """self_attention_mask: (B, T, T) bool, True where token i may attend to token j."""
        hidden_states = self.embeddings(input_ids, position_ids)
        for layer in self.encoder.layer:
            hidden_states = layer(hidden_states, self_attention_mask)
        return hidden_states
