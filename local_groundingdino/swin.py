"""Swin Transformer backbone (shifted windows), laid out like GroundingDINO's ``backbone.0.*`` keys.

Feature maps are padded up to a multiple of the window inside each block (zeros after the
first norm, as the detector was trained) so any image size works.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sd_webui_sam.weights import computed_buffer

#: The bias added between tokens of different regions in a shifted window (as trained).
SHIFTED_REGION_BIAS = -100.0


@dataclass(frozen=True)
class SwinShape:
    embed_dim: int = 96
    depths: Tuple[int, ...] = (2, 2, 6, 2)
    num_heads: Tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    patch_size: int = 4
    mlp_ratio: float = 4.0
    out_indices: Tuple[int, ...] = (1, 2, 3)

    @property
    def stage_dims(self) -> Tuple[int, ...]:
        return tuple(self.embed_dim * 2**stage for stage in range(len(self.depths)))

    @property
    def out_channels(self) -> Tuple[int, ...]:
        return tuple(self.stage_dims[index] for index in self.out_indices)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, pixels: Tensor) -> Tensor:
        """(B,3,H,W) -> (B, H/p, W/p, C), right/bottom padded to whole patches."""
        height, width = pixels.shape[-2:]
        pad_w = (-width) % self.patch_size
        pad_h = (-height) % self.patch_size
        if pad_w or pad_h:
            pixels = F.pad(pixels, (0, pad_w, 0, pad_h))
        return self.norm(self.proj(pixels).permute(0, 2, 3, 1))


def relative_position_index(window: int) -> Tensor:
    """(w*w, w*w) index into the (2w-1)^2 bias table for every pair of tokens in a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    delta = (coords[:, :, None] - coords[:, None, :]) + (window - 1)
    return delta[0] * (2 * window - 1) + delta[1]


class WindowAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        computed_buffer(self, "relative_position_index", lambda: relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, windows: Tensor, region_bias: Tensor | None) -> Tensor:
        """windows: (B*nW, N, C); region_bias: (nW, N, N) or None."""
        count, tokens, channels = windows.shape
        qkv = self.qkv(windows).view(count, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        bias = bias.view(tokens, tokens, self.num_heads).permute(2, 0, 1)[None]  # 1, nH, N, N
        if region_bias is not None:
            num_windows = region_bias.shape[0]
            bias = bias + region_bias[:, None]
            if count != num_windows:  # more than one image: the same bias for each
                bias = bias.repeat(count // num_windows, 1, 1, 1)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=bias.to(windows.dtype))
        return self.proj(out.transpose(1, 2).reshape(count, tokens, channels))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def _to_windows(x: Tensor, window: int) -> Tensor:
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def _from_windows(windows: Tensor, window: int, height: int, width: int) -> Tensor:
    channels = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def shifted_region_bias(height: int, width: int, window: int, shift: int, device: torch.device) -> Tensor:
    """(nW, N, N) bias that keeps the wrapped-around regions of a shifted window apart."""

    def region_of(length: int) -> Tensor:
        index = torch.arange(length, device=device)
        return (index >= length - window).long() + (index >= length - shift).long()

    regions = region_of(height)[:, None] * 3 + region_of(width)[None, :]
    windows = _to_windows(regions[None, :, :, None].float(), window)[..., 0]  # nW, N
    different = windows[:, None, :] != windows[:, :, None]
    return torch.zeros(different.shape, device=device).masked_fill(different, SHIFTED_REGION_BIAS)


class SwinBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float):
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, region_bias: Tensor) -> Tensor:
        batch, height, width, channels = x.shape
        shortcut = x
        x = self.norm1(x)
        pad_h = (-height) % self.window
        pad_w = (-width) % self.window
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        padded_h, padded_w = height + pad_h, width + pad_w
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        attended = self.attn(_to_windows(x, self.window), region_bias if self.shift else None)
        x = _from_windows(attended, self.window, padded_h, padded_w)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = shortcut + x[:, :height, :width]
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[1:3]
        if height % 2 or width % 2:
            x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        # The channel order (even/even, odd/even, even/odd, odd/odd) is what the weights expect.
        merged = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(merged))


class SwinStage(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float, downsample: bool):
        super().__init__()
        self.window = window
        self.shift = window // 2
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, 0 if index % 2 == 0 else self.shift, mlp_ratio) for index in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Returns (this stage's output, the input of the next stage)."""
        height, width = x.shape[1:3]
        padded_h = -(-height // self.window) * self.window
        padded_w = -(-width // self.window) * self.window
        region_bias = shifted_region_bias(padded_h, padded_w, self.window, self.shift, x.device)
        for block in self.blocks:
            x = block(x, region_bias)
        return x, (self.downsample(x) if self.downsample is not None else x)


class SwinBackbone(nn.Module):
    def __init__(self, shape: SwinShape):
        super().__init__()
        self.shape = shape
        self.patch_embed = PatchEmbed(shape.patch_size, shape.embed_dim)
        dims = shape.stage_dims
        last = len(shape.depths) - 1
        self.layers = nn.ModuleList(
            SwinStage(dims[stage], shape.depths[stage], shape.num_heads[stage], shape.window_size, shape.mlp_ratio, stage < last)
            for stage in range(len(shape.depths))
        )
        for index in shape.out_indices:
            self.add_module(f"norm{index}", nn.LayerNorm(dims[index]))

    def forward(self, pixels: Tensor) -> List[Tensor]:
        """(B,3,H,W) -> feature maps (B,C,h,w) of the stages in ``out_indices``."""
        x = self.patch_embed(pixels)
        features = []
        for index, stage in enumerate(self.layers):
            out, x = stage(x)
            if index in self.shape.out_indices:
                features.append(getattr(self, f"norm{index}")(out).permute(0, 3, 1, 2).contiguous())
        return features
