"""SAM 2's image encoder: the Hiera trunk and the FPN neck (official checkpoint key names).

The trunk is a stack of stages; the first block of every stage after the first widens the
channels (x2) and halves the resolution by max-pooling its attention queries (and its
shortcut). Blocks attend within windows (per-stage window sizes) except the global-attention
blocks. Positions come from a background table resized to the patch grid plus a per-window
table repeated over it. The neck projects every stage to the decoder width; only the coarsest
level is merged into the next (nearest upsampling), and the coarsest is then dropped.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sd_webui_sam.modeling import merge_windows, pad_to_windows

_PATCH_KERNEL, _PATCH_STRIDE, _PATCH_PADDING = 7, 4, 3
_LAYER_NORM_EPS = 1e-6


@dataclass(frozen=True)
class HieraConfig:
    embed_dim: int = 96
    num_heads: int = 1
    stages: Tuple[int, ...] = (1, 2, 7, 2)
    global_att_blocks: Tuple[int, ...] = (5, 7, 9)
    window_spec: Tuple[int, ...] = (8, 4, 14, 7)
    window_pos_embed_bkg_spatial_size: Tuple[int, int] = (7, 7)
    mlp_ratio: float = 4.0
    q_stride: int = 2
    d_model: int = 256  # neck output width
    fpn_top_down_levels: Tuple[int, ...] = (2, 3)
    scalp: int = 1  # coarsest levels dropped after the neck

    def stage_dims(self) -> List[int]:
        return [self.embed_dim * 2**index for index in range(len(self.stages))]

    def stage_ends(self) -> List[int]:
        return [sum(self.stages[: index + 1]) - 1 for index in range(len(self.stages))]


class _GeluMLP(nn.Module):
    """Two linear layers with GELU between (key names ``layers.0`` / ``layers.1``)."""

    def __init__(self, dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(dim, hidden), nn.Linear(hidden, out)])

    def forward(self, x: Tensor) -> Tensor:
        return self.layers[1](F.gelu(self.layers[0](x)))


def _pool(x: Tensor, stride: int) -> Tensor:
    """(B, H, W, C) max-pooled by ``stride`` (floor), channels-last in and out."""
    return F.max_pool2d(x.permute(0, 3, 1, 2), stride, stride).permute(0, 2, 3, 1)


class HieraAttention(nn.Module):
    """Multi-head self-attention on (B, H, W, C) tokens; queries optionally max-pooled."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_stride: int = 0) -> None:
        super().__init__()
        if dim_out % num_heads:
            raise ValueError(f"{num_heads} heads do not divide the width {dim_out}.")
        self.num_heads = num_heads
        self.q_stride = q_stride
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, _ = x.shape
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1)
        q, k, v = qkv.unbind(2)
        if self.q_stride:
            q = _pool(q.reshape(batch, height, width, -1), self.q_stride)
            height, width = q.shape[1:3]
            q = q.reshape(batch, height * width, self.num_heads, -1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(batch, height, width, -1))


class HieraBlock(nn.Module):
    def __init__(self, dim: int, dim_out: int, num_heads: int, mlp_ratio: float, window_size: int, q_stride: int) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=_LAYER_NORM_EPS)
        self.attn = HieraAttention(dim, dim_out, num_heads, q_stride)
        self.norm2 = nn.LayerNorm(dim_out, eps=_LAYER_NORM_EPS)
        self.mlp = _GeluMLP(dim_out, int(dim_out * mlp_ratio), dim_out)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = self.proj(x)
            if self.q_stride:
                shortcut = _pool(shortcut, self.q_stride)
        window = self.window_size
        if window > 0:
            x, _ = pad_to_windows(x, window)
        x = self.attn(x)
        if window > 0:
            # A pooling block's windows shrink with its queries.
            out_window = window // self.q_stride if self.q_stride else window
            height, width = shortcut.shape[1:3]
            padded = (height + (-height % out_window), width + (-width % out_window))
            x = merge_windows(x, out_window, padded, (height, width))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=_PATCH_KERNEL, stride=_PATCH_STRIDE, padding=_PATCH_PADDING)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Hiera(nn.Module):
    """Returns every stage's output, finest first, each (B, C_stage, H_stage, W_stage)."""

    def __init__(self, config: HieraConfig) -> None:
        super().__init__()
        self.config = config
        dims = config.stage_dims()
        self.stage_ends = config.stage_ends()
        self.patch_embed = PatchEmbed(config.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.embed_dim, *config.window_pos_embed_bkg_spatial_size))
        window0 = config.window_spec[0]
        self.pos_embed_window = nn.Parameter(torch.zeros(1, config.embed_dim, window0, window0))
        blocks = []
        stage, heads = 0, config.num_heads
        global_blocks = set(config.global_att_blocks)
        for index in range(sum(config.stages)):
            # A stage's first block still windows at the previous stage's size (before pooling).
            window = 0 if index in global_blocks else config.window_spec[stage]
            dim = dims[stage]
            first_of_stage = index - 1 in self.stage_ends[:-1]
            if first_of_stage:
                stage += 1
                heads *= 2
            blocks.append(HieraBlock(dim, dims[stage], heads, config.mlp_ratio, window,
                                     config.q_stride if first_of_stage else 0))
        self.blocks = nn.ModuleList(blocks)

    def position_embedding(self, height: int, width: int) -> Tensor:
        """(1, H, W, C): the background table resized (bicubic) plus the window table tiled."""
        background = F.interpolate(self.pos_embed, size=(height, width), mode="bicubic")
        window = self.pos_embed_window
        tiles = (height // window.shape[-2], width // window.shape[-1])
        return (background + window.tile(1, 1, *tiles)).permute(0, 2, 3, 1)

    def forward(self, x: Tensor) -> List[Tensor]:
        x = self.patch_embed(x)
        x = x + self.position_embedding(x.shape[1], x.shape[2])
        outputs = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs


class FpnNeck(nn.Module):
    """1x1 projections of every stage to ``d_model``; the top-down levels add the coarser level
    upsampled (nearest). No parameters besides the projections (``convs.N.conv``, coarsest first)."""

    def __init__(self, d_model: int, backbone_channel_list: Sequence[int], top_down_levels: Sequence[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Sequential(OrderedDict(conv=nn.Conv2d(channels, d_model, kernel_size=1))) for channels in backbone_channel_list
        )
        self.top_down_levels = tuple(top_down_levels)

    def forward(self, features: Sequence[Tensor]) -> List[Tensor]:
        last = len(self.convs) - 1
        out: List[Tensor] = [features[0]] * len(features)
        previous = None
        for level in range(last, -1, -1):
            lateral = self.convs[last - level](features[level])
            if level in self.top_down_levels and previous is not None:
                lateral = lateral + F.interpolate(previous.float(), scale_factor=2.0, mode="nearest").to(lateral.dtype)
            previous = lateral
            out[level] = lateral
        return out


class Sam2ImageEncoder(nn.Module):
    """Hiera trunk + FPN neck; returns the neck levels finest first, the dropped coarsest ones removed."""

    def __init__(self, config: HieraConfig) -> None:
        super().__init__()
        self.scalp = config.scalp
        self.trunk = Hiera(config)
        self.neck = FpnNeck(config.d_model, config.stage_dims()[::-1], config.fpn_top_down_levels)

    def forward(self, pixels: Tensor) -> List[Tensor]:
        levels = self.neck(self.trunk(pixels))
        return levels[: len(levels) - self.scalp] if self.scalp else levels
