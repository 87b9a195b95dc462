"""SAM's ViT image encoder: patch embedding, windowed / global attention blocks with decomposed
relative positions, and a convolutional neck down to the 256-channel embedding."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sd_webui_sam.devices import ATTENTION_BANDED, ATTENTION_FUSED, attention_kernel

from .common import LayerNorm2d, MLPBlock


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens, laid out channels-last (B, H, W, C)."""

    def __init__(
        self,
        kernel_size: Tuple[int, int] = (16, 16),
        stride: Tuple[int, int] = (16, 16),
        padding: Tuple[int, int] = (0, 0),
        in_chans: int = 3,
        embed_dim: int = 768,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


def pad_to_windows(x: Tensor, window_size: int) -> Tuple[Tensor, Tuple[int, int]]:
    """(B, H, W, C) -> (B * windows, ws, ws, C); pads H and W up to multiples of the window.

    Returns the windows and the padded (H, W) needed to undo the split.
    """
    batch, height, width, channels = x.shape
    pad_bottom = -height % window_size
    pad_right = -width % window_size
    if pad_bottom or pad_right:
        x = F.pad(x, (0, 0, 0, pad_right, 0, pad_bottom))
    padded_h, padded_w = height + pad_bottom, width + pad_right
    x = x.view(batch, padded_h // window_size, window_size, padded_w // window_size, window_size, channels)
    windows = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, channels)
    return windows, (padded_h, padded_w)


def merge_windows(windows: Tensor, window_size: int, padded_hw: Tuple[int, int], hw: Tuple[int, int]) -> Tensor:
    """Inverse of :func:`pad_to_windows`, dropping the padding again."""
    padded_h, padded_w = padded_hw
    height, width = hw
    windows_per_image = (padded_h // window_size) * (padded_w // window_size)
    batch = windows.shape[0] // windows_per_image
    x = windows.view(batch, padded_h // window_size, padded_w // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(batch, padded_h, padded_w, -1)
    if padded_h > height or padded_w > width:
        x = x[:, :height, :width, :].contiguous()
    return x


def relative_position_table(q_size: int, k_size: int, rel_pos: Tensor) -> Tensor:
    """Embeddings for every (query, key) offset along one axis: (q_size, k_size, head_dim).

    The learned table covers offsets -(n-1)..(n-1) for the size it was trained at; other sizes
    resample it linearly, and unequal query/key lengths are compared on the finer grid.
    """
    span = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != span:
        table = F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=span, mode="linear")
        table = table.reshape(-1, span).permute(1, 0)
    else:
        table = rel_pos
    q_stretch = max(k_size / q_size, 1.0)
    k_stretch = max(q_size / k_size, 1.0)
    q_coords = torch.arange(q_size)[:, None] * q_stretch
    k_coords = torch.arange(k_size)[None, :] * k_stretch
    offsets = (q_coords - k_coords) + (k_size - 1) * k_stretch
    return table[offsets.long()]


def decomposed_rel_pos_terms(
    q: Tensor,
    rel_pos_h: Tensor,
    rel_pos_w: Tensor,
    q_size: Tuple[int, int],
    k_size: Tuple[int, int],
) -> Tuple[Tensor, Tensor]:
    """The height and width relative-position terms (MViTv2 style) of the attention logits.

    q: (B, q_h*q_w, head_dim). Returns (B, q_h, q_w, k_h) and (B, q_h, q_w, k_w); logit
    (query, key) gains term_h[query, key_row] + term_w[query, key_column].
    """
    q_h, q_w = q_size
    k_h, k_w = k_size
    table_h = relative_position_table(q_h, k_h, rel_pos_h)
    table_w = relative_position_table(q_w, k_w, rel_pos_w)
    batch, _, dim = q.shape
    q_grid = q.reshape(batch, q_h, q_w, dim)
    return torch.einsum("bhwc,hkc->bhwk", q_grid, table_h), torch.einsum("bhwc,wkc->bhwk", q_grid, table_w)


def add_decomposed_rel_pos(
    attn: Tensor,
    q: Tensor,
    rel_pos_h: Tensor,
    rel_pos_w: Tensor,
    q_size: Tuple[int, int],
    k_size: Tuple[int, int],
) -> Tensor:
    """attn (B, q_h*q_w, k_h*k_w) plus the relative-position terms, as a new tensor."""
    term_h, term_w = decomposed_rel_pos_terms(q, rel_pos_h, rel_pos_w, q_size, k_size)
    grid = attn.view(attn.shape[0], q_size[0], q_size[1], k_size[0], k_size[1])
    return (grid + term_h[:, :, :, :, None] + term_w[:, :, :, None, :]).view_as(attn)


# Attention logits (floats) computed at a time on the CPU: the full map of a global block
# (heads x 4096 x 4096, 800 MB for ViT-B) would stream through memory several times; query
# bands of this size stay in cache and take the encoder from ~13 s to ~9 s on two cores.
# Accelerators use the fused kernel instead (devices.attention_kernel decides).
CPU_LOGITS_PER_STEP = 8_000_000


# The memory-efficient SDPA kernel wants a bias whose rows start at multiples of 8 elements (16
# on torch 2.1); otherwise torch copies it into a padded buffer at every call (and 2.2+ warns).
BIAS_ROW_ALIGNMENT = 16


def rel_pos_bias(term_h: Tensor, term_w: Tensor) -> Tensor:
    """The decomposed terms as one additive bias (B, q_h*q_w, k_h*k_w) for the fused kernel.

    Rows are padded to BIAS_ROW_ALIGNMENT (a 14x14 window has 196 keys) and the unpadded view is
    returned, so the kernel takes it as it is. (Padding with F.pad, not by writing into a view
    with ``out=``: torch.compile's functionalisation cannot trace the latter.)
    """
    batch, q_h, q_w, k_h = term_h.shape
    k_w = term_w.shape[-1]
    keys = k_h * k_w
    bias = (term_h[..., :, None] + term_w[..., None, :]).reshape(batch, q_h * q_w, keys)
    if keys % BIAS_ROW_ALIGNMENT:
        bias = F.pad(bias, (0, -keys % BIAS_ROW_ALIGNMENT))[..., :keys]
    return bias


class Attention(nn.Module):
    """Multi-head self-attention over a (B, H, W, C) grid with optional relative positions."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        input_size: Optional[Tuple[int, int]] = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        #: None: the device decides (devices.attention_kernel); set only by forced_attention.
        self.kernel_override: Optional[str] = None
        if use_rel_pos:
            if input_size is None:
                raise ValueError("Relative positions need the attention grid size (input_size).")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))
            if not rel_pos_zero_init:
                nn.init.trunc_normal_(self.rel_pos_h, std=0.02)
                nn.init.trunc_normal_(self.rel_pos_w, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, _ = x.shape
        tokens = height * width
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, batch * self.num_heads, tokens, -1).unbind(0)
        kernel = self.kernel_override or attention_kernel(x.device)
        if kernel == ATTENTION_FUSED:
            out = self._fused(q, k, v, batch, height, width)
        else:
            out = self._banded(q, k, v, height, width)
        out = out.view(batch, self.num_heads, height, width, -1)
        out = out.permute(0, 2, 3, 1, 4).reshape(batch, height, width, -1)
        return self.proj(out)

    def _fused(self, q: Tensor, k: Tensor, v: Tensor, batch: int, height: int, width: int) -> Tensor:
        """scaled_dot_product_attention with the relative positions as a float bias in q's dtype.

        4-D (B, heads, tokens, head_dim) inputs: torch 2.1 sends 3-D ones to the math kernel.
        A float mask must have the query's dtype on 2.1 and 2.3, and rules out the flash kernel;
        the memory-efficient kernel takes it (the math one where that does not apply).
        """
        bias = None
        if self.use_rel_pos:
            term_h, term_w = decomposed_rel_pos_terms(q, self.rel_pos_h, self.rel_pos_w, (height, width), (height, width))
            bias = rel_pos_bias(term_h.to(q.dtype), term_w.to(q.dtype))
            bias = bias.view(batch, self.num_heads, height * width, height * width)

        def heads(t: Tensor) -> Tensor:
            return t.reshape(batch, self.num_heads, height * width, -1)

        return F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=bias)

    def _banded(self, q: Tensor, k: Tensor, v: Tensor, height: int, width: int) -> Tensor:
        """Logits in bands of query rows on the CPU (relative positions added in place); one band elsewhere."""
        tokens = height * width
        if self.use_rel_pos:
            term_h, term_w = decomposed_rel_pos_terms(q, self.rel_pos_h, self.rel_pos_w, (height, width), (height, width))
        k_t = k.transpose(-2, -1)
        rows = height
        if q.device.type == "cpu":
            rows = max(1, min(height, CPU_LOGITS_PER_STEP // (q.shape[0] * width * tokens)))
        out = torch.empty_like(q) if rows < height else None
        for top in range(0, height, rows):
            bottom = min(height, top + rows)
            band = slice(top * width, bottom * width)
            attn = (q[:, band] * self.scale) @ k_t
            if self.use_rel_pos:
                grid = attn.view(-1, bottom - top, width, height, width)
                grid.add_(term_h[:, top:bottom, :, :, None]).add_(term_w[:, top:bottom, :, None, :])
            mixed = attn.softmax(dim=-1) @ v
            if out is None:
                out = mixed
            else:
                out[:, band] = mixed
        return out


@contextmanager
def forced_attention(module: nn.Module, kernel: str) -> Iterator[None]:
    """Every ViT attention inside ``module`` uses ``kernel`` ("fused" / "banded") whatever the
    device, for the duration of the block. For tests and benchmarks: the product lets
    :func:`sd_webui_sam.devices.attention_kernel` choose."""
    if kernel not in (ATTENTION_FUSED, ATTENTION_BANDED):
        raise ValueError(f"unknown attention kernel {kernel!r}")
    layers = [layer for layer in module.modules() if isinstance(layer, Attention)]
    previous = [layer.kernel_override for layer in layers]
    for layer in layers:
        layer.kernel_override = kernel
    try:
        yield
    finally:
        for layer, kept in zip(layers, previous):
            layer.kernel_override = kept


class Block(nn.Module):
    """Pre-norm transformer block; window_size 0 means global attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_layer: Type[nn.Module] = nn.LayerNorm,
        act_layer: Type[nn.Module] = nn.GELU,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        window_size: int = 0,
        input_size: Optional[Tuple[int, int]] = None,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            rel_pos_zero_init=rel_pos_zero_init,
            input_size=input_size if window_size == 0 else (window_size, window_size),
        )
        self.norm2 = norm_layer(dim)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=int(dim * mlp_ratio), act=act_layer)
        self.window_size = window_size

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            hw = (x.shape[1], x.shape[2])
            windows, padded_hw = pad_to_windows(x, self.window_size)
            x = merge_windows(self.attn(windows), self.window_size, padded_hw, hw)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


def _layer_norm_eps6(dim: int) -> nn.Module:
    return nn.LayerNorm(dim, eps=1e-6)


class ImageEncoderViT(nn.Module):
    """ViTDet-style backbone of SAM; (B, 3, S, S) -> (B, out_chans, S/patch, S/patch)."""

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        norm_layer: Type[nn.Module] = _layer_norm_eps6,
        act_layer: Type[nn.Module] = nn.GELU,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        rel_pos_zero_init: bool = True,
        window_size: int = 14,
        global_attn_indexes: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.global_attn_indexes = tuple(global_attn_indexes)
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(
            kernel_size=(patch_size, patch_size),
            stride=(patch_size, patch_size),
            in_chans=in_chans,
            embed_dim=embed_dim,
        )
        self.pos_embed: Optional[nn.Parameter] = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                norm_layer=norm_layer,
                act_layer=act_layer,
                use_rel_pos=use_rel_pos,
                rel_pos_zero_init=rel_pos_zero_init,
                window_size=0 if index in self.global_attn_indexes else window_size,
                input_size=(grid, grid),
            )
            for index in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def _embed(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        return x

    def _neck(self, x: Tensor) -> Tensor:
        return self.neck(x.permute(0, 3, 1, 2))

    def forward(self, x: Tensor) -> Tensor:
        x = self._embed(x)
        for block in self.blocks:
            x = block(x)
        return self._neck(x)

    def forward_with_interm(self, x: Tensor) -> Tuple[Tensor, List[Tensor]]:
        """Like forward, plus the (B, H/16, W/16, C) outputs of the global-attention blocks (HQ-SAM fuses them)."""
        x = self._embed(x)
        interm: List[Tensor] = []
        for block in self.blocks:
            x = block(x)
            if block.window_size == 0:
                interm.append(x)
        return self._neck(x), interm
