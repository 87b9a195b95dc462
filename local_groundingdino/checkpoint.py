"""Identify a GroundingDINO checkpoint from its tensor names and shapes, and load it strictly.

Every hyper-parameter the shapes reveal is read from them (Swin width, depths, heads and
window; BERT size; transformer width, layers, queries, feed-forward sizes), so reduced test
models load through the same code as the released files. Two things shapes cannot tell are
fixed to the released models' values: 8 attention heads in the grounding transformer and
64-dimensional BERT heads.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

import torch

from local_groundingdino.model import GroundingDino, GroundingDinoShape
from local_groundingdino.swin import SwinShape
from local_groundingdino.text_encoder import BertShape
from local_groundingdino.transformer import TransformerShape
from sd_webui_sam.checkpoints import check_shapes
from sd_webui_sam.errors import UnrecognisedCheckpointError
from sd_webui_sam.weights import assign_weights, build_empty

Shapes = Mapping[str, Tuple[int, ...]]
TRANSFORMER_HEADS = 8
BACKBONE_PREFIX = "backbone.0."
#: Tensors in the released files that inference does not use (BERT's pooler, recomputable buffers).
UNUSED_KEYS = re.compile(r"^(bert\.pooler\.|bert\.embeddings\.position_ids$|.*relative_position_index$|.*attn_mask$)")
#: The box head is one module shared by every decoder layer; the files store a copy per layer.
SHARED_BOX_HEAD = re.compile(r"^(?:transformer\.decoder\.)?bbox_embed\.(\d+)\.(.+)$")
REQUIRED_KEYS = (
    "backbone.0.patch_embed.proj.weight",
    "bert.embeddings.word_embeddings.weight",
    "feat_map.weight",
    "transformer.tgt_embed.weight",
    "transformer.level_embed",
    "transformer.encoder.fusion_layers.0.gamma_v",
    "transformer.decoder.layers.0.ca_text.in_proj_weight",
    "transformer.enc_out_bbox_embed.layers.0.weight",
)
KNOWN_VARIANTS = {
    (96, (2, 2, 6, 2), 7): ("swin_t", "GroundingDINO Swin-T"),
    (128, (2, 2, 18, 2), 12): ("swin_b", "GroundingDINO Swin-B"),
}


@dataclass(frozen=True)
class GroundingDinoSpec:
    variant: str           # "swin_t" | "swin_b" | "custom"
    label: str
    shape: GroundingDinoShape


def _count(shapes: Shapes, pattern: str) -> int:
    regex = re.compile(pattern)
    indices = {int(match.group(1)) for name in shapes for match in [regex.match(name)] if match}
    return max(indices) + 1 if indices else 0


def identify_checkpoint(shapes: Shapes) -> Optional[GroundingDinoSpec]:
    """The architecture a state dict's names and shapes describe, or None if it is not GroundingDINO."""
    if not all(key in shapes for key in REQUIRED_KEYS):
        return None
    try:
        return _identify(shapes)
    except (KeyError, IndexError, ValueError, ZeroDivisionError):
        return None


def _identify(shapes: Shapes) -> GroundingDinoSpec:
    patch = shapes["backbone.0.patch_embed.proj.weight"]
    embed_dim, patch_size = patch[0], patch[2]
    num_stages = _count(shapes, r"^backbone\.0\.layers\.(\d+)\.")
    depths = tuple(_count(shapes, rf"^backbone\.0\.layers\.{stage}\.blocks\.(\d+)\.") for stage in range(num_stages))
    table = [shapes[f"backbone.0.layers.{stage}.blocks.0.attn.relative_position_bias_table"] for stage in range(num_stages)]
    heads = tuple(entry[1] for entry in table)
    window = (math.isqrt(table[0][0]) + 1) // 2
    if (2 * window - 1) ** 2 != table[0][0]:
        raise ValueError("relative position table is not square")
    hidden = shapes["backbone.0.layers.0.blocks.0.mlp.fc1.weight"][0]
    out_indices = tuple(index for index in range(num_stages) if f"backbone.0.norm{index}.weight" in shapes)
    swin = SwinShape(embed_dim, depths, heads, window, patch_size, hidden / embed_dim, out_indices)

    words = shapes["bert.embeddings.word_embeddings.weight"]
    bert = BertShape(
        vocab_size=words[0],
        hidden_size=words[1],
        num_layers=_count(shapes, r"^bert\.encoder\.layer\.(\d+)\."),
        intermediate_size=shapes["bert.encoder.layer.0.intermediate.dense.weight"][0],
        max_positions=shapes["bert.embeddings.position_embeddings.weight"][0],
        type_vocab_size=shapes["bert.embeddings.token_type_embeddings.weight"][0],
    )

    queries, d_model = shapes["transformer.tgt_embed.weight"]
    num_levels = shapes["transformer.level_embed"][0]
    per_head_points = shapes["transformer.encoder.layers.0.self_attn.attention_weights.weight"][0]
    num_points = per_head_points // (TRANSFORMER_HEADS * num_levels)
    if num_points * TRANSFORMER_HEADS * num_levels != per_head_points:
        raise ValueError("sampling points do not divide")
    transformer = TransformerShape(
        d_model=d_model,
        num_heads=TRANSFORMER_HEADS,
        num_levels=num_levels,
        num_points=num_points,
        num_queries=queries,
        encoder_layers=_count(shapes, r"^transformer\.encoder\.layers\.(\d+)\."),
        decoder_layers=_count(shapes, r"^transformer\.decoder\.layers\.(\d+)\."),
        dim_feedforward=shapes["transformer.encoder.layers.0.linear1.weight"][0],
        text_dim_feedforward=shapes["transformer.encoder.text_layers.0.linear1.weight"][0],
        fusion_dim=shapes["transformer.encoder.fusion_layers.0.attn.v_proj.weight"][0],
    )
    if shapes["transformer.decoder.layers.0.linear1.weight"][0] != transformer.dim_feedforward:
        raise ValueError("encoder and decoder feed-forward sizes differ")
    if _count(shapes, r"^input_proj\.(\d+)\.") != num_levels or len(out_indices) > num_levels:
        raise ValueError("level count mismatch")
    variant, label = KNOWN_VARIANTS.get((embed_dim, depths, window), ("custom", f"GroundingDINO (Swin, width {embed_dim})"))
    return GroundingDinoSpec(variant, label, GroundingDinoShape(swin, bert, transformer))


def canonical_state_dict(state_dict: Mapping[str, torch.Tensor], source: str = "The checkpoint") -> Dict[str, torch.Tensor]:
    """The official layout -> ours: drop unused tensors, collapse the per-layer copies of the box head."""
    result: Dict[str, torch.Tensor] = {}
    box_head: Dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        if UNUSED_KEYS.match(name):
            continue
        shared = SHARED_BOX_HEAD.match(name)
        if shared:
            leaf = shared.group(2)
            if leaf in box_head:
                if box_head[leaf].shape != tensor.shape or not torch.equal(box_head[leaf], tensor):
                    raise UnrecognisedCheckpointError(
                        f"{source} has a separate box head per decoder layer; only the released GroundingDINO layout "
                        "(one shared box head) is supported. Use groundingdino_swint_ogc.pth or groundingdino_swinb_cogcoor.pth."
                    )
            else:
                box_head[leaf] = tensor
            continue
        if name.startswith(BACKBONE_PREFIX):
            name = "backbone." + name[len(BACKBONE_PREFIX):]
        result[name] = tensor
    for leaf, tensor in box_head.items():
        result[f"bbox_embed.{leaf}"] = tensor
    return result


def build_model(spec: GroundingDinoSpec, state_dict: Mapping[str, torch.Tensor], source: str = "The checkpoint") -> GroundingDino:
    """fp32 CPU model whose parameters are the checkpoint's tensors (no copy when they are fp32), loaded strictly."""
    model = build_empty(lambda: GroundingDino(spec.shape))
    weights = canonical_state_dict(state_dict, source)
    check_shapes(
        source,
        {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()},
        {name: tuple(tensor.shape) for name, tensor in weights.items()},
        spec.label,
    )
    return assign_weights(model, weights).eval()
