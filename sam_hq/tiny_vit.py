"""TinyViT image encoder, as used by MobileSAM and by HQ-SAM Light (``vit_tiny``).

TinyViT (Wu et al., 2022) is a four-stage hierarchy: a convolutional patch embedding down to
1/4 resolution, one stage of inverted-residual (MBConv) blocks, then stages of windowed
self-attention blocks with a learned relative-offset bias and a depthwise "local" convolution
between attention and MLP. Stages are joined by patch-merging convolutions. MobileSAM
distilled SAM's ViT-H encoder into the 5M-parameter TinyViT and changed two things that we
keep: the last merge does not halve the resolution, so the final map is 64x64 at 1/16 of a
1024 input like SAM's, and a SAM-style neck maps it to 256 channels.

Module and parameter names follow the official ``mobile_sam.pt`` / ``sam_hq_vit_tiny.pth``
key layout so those files load unchanged. Every hyper-parameter is an argument; the family
module derives them from a checkpoint's tensor shapes.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sd_webui_sam.modeling.common import LayerNorm2d
from sd_webui_sam.weights import computed_buffer


@dataclass(frozen=True)
class TinyViTConfig:
    """Hyper-parameters of a TinyViT encoder; the defaults are MobileSAM's TinyViT-5M."""

    embed_dims: Tuple[int, ...] = (64, 128, 160, 320)
    depths: Tuple[int, ...] = (2, 2, 6, 2)
    num_heads: Tuple[int, ...] = (2, 4, 5, 10)  # entry 0 unused: the first stage has no attention
    window_sizes: Tuple[int, ...] = (7, 7, 14, 7)  # entry 0 unused
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    in_chans: int = 3
    out_chans: int = 256
    image_size: int = 1024
    # The ImageNet classifier is part of the official files but never used for segmentation;
    # it is built only so that the files load with strict key matching.
    num_classes: int = 1000
    has_norm_head: bool = True


class ConvBatchNorm(nn.Sequential):
    """Bias-free convolution followed by batch norm (keys ``c`` and ``bn``)."""

    def __init__(
        self, in_chans: int, out_chans: int, kernel_size: int = 1, stride: int = 1, padding: int = 0, groups: int = 1
    ) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_chans))


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 convolutions: image -> (B, embed_dim, S/4, S/4)."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            ConvBatchNorm(in_chans, embed_dim // 2, 3, 2, 1),
            nn.GELU(),
            ConvBatchNorm(embed_dim // 2, embed_dim, 3, 2, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, residual, activation."""

    def __init__(self, chans: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(chans * expand_ratio)
        self.conv1 = ConvBatchNorm(chans, hidden, 1)
        self.act1 = nn.GELU()
        self.conv2 = ConvBatchNorm(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = ConvBatchNorm(hidden, chans, 1)
        self.act3 = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.act1(self.conv1(x))
        y = self.act2(self.conv2(y))
        y = self.conv3(y)
        return self.act3(y + x)


class PatchMerging(nn.Module):
    """1x1 conv to the next stage's width, strided 3x3 depthwise conv, 1x1 conv (NCHW -> NCHW)."""

    def __init__(self, in_chans: int, out_chans: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBatchNorm(in_chans, out_chans, 1)
        self.conv2 = ConvBatchNorm(out_chans, out_chans, 3, stride, 1, groups=out_chans)
        self.conv3 = ConvBatchNorm(out_chans, out_chans, 1)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.conv3(x)


def relative_offset_index(window_size: int) -> Tensor:
    """(N, N) index into a table of |dy|, |dx| offsets, N = window_size**2.

    Offsets are numbered in order of first appearance while scanning query/key pairs in
    row-major order, which is how the trained ``attention_biases`` tables are laid out.
    """
    cells = list(itertools.product(range(window_size), range(window_size)))
    numbering: dict = {}
    indices: List[int] = []
    for query in cells:
        for key in cells:
            offset = (abs(query[0] - key[0]), abs(query[1] - key[1]))
            indices.append(numbering.setdefault(offset, len(numbering)))
    return torch.tensor(indices, dtype=torch.long).view(len(cells), len(cells))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside one window, with a learned bias per |offset| and head."""

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        computed_buffer(self, "attention_bias_idxs", lambda: relative_offset_index(window_size))

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(batch, tokens, self.num_heads, 3 * self.head_dim)
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.head_dim, dim=3)
        # The bias is gathered at every call rather than cached, so it always lives on the
        # parameters' device and dtype.
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(attended.transpose(1, 2).reshape(batch, tokens, -1))


class TokenMLP(nn.Module):
    """Pre-norm feed-forward layer."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention, depthwise local conv, MLP; operates on a (B, C, H, W) map."""

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, local_conv_size: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.mlp = TokenMLP(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBatchNorm(dim, dim, local_conv_size, 1, local_conv_size // 2, groups=dim)

    def _windowed_attention(self, x: Tensor) -> Tensor:
        """x: (B, H, W, C) -> same shape."""
        batch, height, width, chans = x.shape
        size = self.window_size
        if height == size and width == size:
            return self.attn(x.reshape(batch, height * width, chans)).view(batch, height, width, chans)
        pad_bottom = (size - height % size) % size
        pad_right = (size - width % size) % size
        # Zero padding takes part in attention as keys (it is not masked): the trained
        # weights expect exactly that.
        padded = F.pad(x, (0, 0, 0, pad_right, 0, pad_bottom))
        rows, cols = (height + pad_bottom) // size, (width + pad_right) // size
        windows = padded.view(batch, rows, size, cols, size, chans).transpose(2, 3)
        windows = windows.reshape(batch * rows * cols, size * size, chans)
        attended = self.attn(windows).view(batch, rows, cols, size, size, chans).transpose(2, 3)
        attended = attended.reshape(batch, rows * size, cols * size, chans)
        return attended[:, :height, :width]

    def forward(self, x: Tensor) -> Tensor:
        batch, chans, height, width = x.shape
        tokens = x.permute(0, 2, 3, 1)
        tokens = tokens + self._windowed_attention(tokens)
        mixed = self.local_conv(tokens.permute(0, 3, 1, 2))
        tokens = mixed.flatten(2).transpose(1, 2)
        tokens = tokens + self.mlp(tokens)
        return tokens.transpose(1, 2).reshape(batch, chans, height, width)


class ConvStage(nn.Module):
    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class AttentionStage(nn.Module):
    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int,
        downsample: PatchMerging | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window_size, mlp_ratio, local_conv_size) for _ in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class TinyViTEncoder(nn.Module):
    """Image (B, 3, S, S) -> embeddings (B, out_chans, S/16, S/16), plus the stage outputs."""

    def __init__(self, config: TinyViTConfig = TinyViTConfig()) -> None:
        super().__init__()
        dims: Sequence[int] = config.embed_dims
        stages = len(dims)
        if stages < 2 or not (len(config.depths) == len(config.num_heads) == len(config.window_sizes) == stages):
            raise ValueError(f"inconsistent TinyViT stage lists: {config}")
        self.config = config
        self.img_size = config.image_size
        self.patch_embed = PatchEmbed(config.in_chans, dims[0])
        self.layers = nn.ModuleList()
        for index in range(stages):
            downsample = None
            if index < stages - 1:
                # MobileSAM keeps the last merge at full resolution so the output stride is 16.
                stride = 1 if index == stages - 2 else 2
                downsample = PatchMerging(dims[index], dims[index + 1], stride)
            if index == 0:
                stage: nn.Module = ConvStage(dims[0], config.depths[0], config.mbconv_expand_ratio, downsample)
            else:
                stage = AttentionStage(
                    dims[index],
                    config.depths[index],
                    config.num_heads[index],
                    config.window_sizes[index],
                    config.mlp_ratio,
                    config.local_conv_size,
                    downsample,
                )
            self.layers.append(stage)
        if config.has_norm_head:
            self.norm_head = nn.LayerNorm(dims[-1])
        if config.num_classes > 0:
            self.head = nn.Linear(dims[-1], config.num_classes)
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], config.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(config.out_chans),
            nn.Conv2d(config.out_chans, config.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(config.out_chans),
        )

    def forward_with_stages(self, x: Tensor) -> Tuple[Tensor, List[Tensor]]:
        """Returns (neck output, every stage's output as (B, H, W, C))."""
        x = self.patch_embed(x)
        stage_outputs: List[Tensor] = []
        for stage in self.layers:
            x = stage(x)
            stage_outputs.append(x.permute(0, 2, 3, 1))
        return self.neck(x), stage_outputs

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_stages(x)[0]

    def forward_with_interm(self, x: Tensor) -> Tuple[Tensor, List[Tensor]]:
        """Like forward, plus the early features HQ-SAM Light fuses: the output of the first
        attention stage (after its merge), as one (B, S/16, S/16, C) map in a list, matching
        ``ImageEncoderViT.forward_with_interm``."""
        embeddings, stage_outputs = self.forward_with_stages(x)
        return embeddings, [stage_outputs[1]]
