"""Image layout: one transparent layer per automatic segment, ready to edit in an image editor.

Segments are ordered by area, smallest first; a pixel belongs to the smallest segment that
covers it (so a larger segment loses what a smaller one claimed), and a 'leftover' layer holds
every pixel no segment covers. The layers are therefore disjoint and cover the image: stacked
in any order they give back the original exactly.

Written as full-size RGBA PNGs and as one layered Photoshop file (.psd). The PSD is written here
(8-bit RGB, one layer per segment with its name and tight bounds, uncompressed channels), so
it needs no extra package; Photoshop, GIMP, Krita and psd-tools open it.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
from PIL import Image

from sd_webui_sam import matting
from sd_webui_sam.errors import SamUserError

LEFTOVER = "leftover"


@dataclass(frozen=True)
class Layer:
    name: str
    mask: np.ndarray                      # (H,W) bool: the pixels this layer owns
    box: tuple[int, int, int, int]        # x0, y0, x1, y1 (exclusive) around them
    #: soft edges only (see soften): (H,W) uint8 alpha and (H,W,3) uint8 colours; None = the mask, opaque
    alpha: Optional[np.ndarray] = None
    colours: Optional[np.ndarray] = None


@dataclass
class LayerStack:
    """The image and its disjoint layers, segments smallest first, then the leftover layer."""

    image: np.ndarray                     # (H,W,3) uint8
    layers: list[Layer]

    def rgba(self, layer: Layer) -> np.ndarray:
        """(H,W,4) uint8: the layer's pixels opaque, everything else fully transparent (and black)."""
        out = np.zeros(self.image.shape[:2] + (4,), dtype=np.uint8)
        if layer.alpha is not None:
            seen = layer.alpha > 0
            out[seen, :3] = layer.colours[seen]
            out[seen, 3] = layer.alpha[seen]
            return out
        out[layer.mask, :3] = self.image[layer.mask]
        out[layer.mask, 3] = 255
        return out

    def composite(self) -> np.ndarray:
        """Alpha-composite every layer over transparent black, bottom (leftover) to top -> (H,W,4)."""
        canvas = np.zeros(self.image.shape[:2] + (4,), dtype=np.float64)
        for layer in reversed(self.layers):
            rgba = self.rgba(layer).astype(np.float64) / 255.0
            alpha = rgba[..., 3:4]
            out_alpha = alpha + canvas[..., 3:4] * (1 - alpha)
            colour = np.where(out_alpha > 0, (rgba[..., :3] * alpha + canvas[..., :3] * canvas[..., 3:4] * (1 - alpha))
                              / np.maximum(out_alpha, 1e-12), 0)
            canvas = np.concatenate([colour, out_alpha], axis=-1)
        return np.rint(canvas * 255).astype(np.uint8)


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0, 0, 0, 0)
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def build_layers(image: np.ndarray, masks: Iterable) -> LayerStack:
    """Layers from an (H,W,3) uint8 image and its masks ((H,W) bool arrays or MaskRecords).

    Segments whose every pixel was claimed by smaller ones are left out (an empty layer helps
    no one); names count the layers that remain: 'segment 001', 'segment 002', ..., 'leftover'.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError("build_layers expects an (H,W,3) uint8 RGB image")
    arrays = [np.asarray(m.mask() if hasattr(m, "mask") else m, dtype=bool) for m in masks]
    for array in arrays:
        if array.shape != image.shape[:2]:
            raise ValueError(f"mask of shape {array.shape} does not match the image {image.shape[:2]}")
    order = sorted(range(len(arrays)), key=lambda index: int(arrays[index].sum()))  # stable: ties keep their order
    claimed = np.zeros(image.shape[:2], dtype=bool)
    layers = []
    for index in order:
        own = arrays[index] & ~claimed
        if not own.any():
            continue
        claimed |= own
        layers.append(Layer(name=f"segment {len(layers) + 1:03d}", mask=own, box=_mask_box(own)))
    leftover = ~claimed
    if leftover.any():
        layers.append(Layer(name=LEFTOVER, mask=leftover, box=_mask_box(leftover)))
    return LayerStack(image=image, layers=layers)


def soften(stack: LayerStack, band_px: float = 0) -> LayerStack:
    """Soft edges: each segment layer an alpha matte of its mask (sd_webui_sam.matting), with the
    object's own colours there. The leftover layer, at the bottom, stays opaque wherever no segment
    is, so the stack still covers every pixel: under a soft edge it shows the original picture."""
    softened, opaque = [], np.zeros(stack.image.shape[:2], dtype=bool)
    for layer in stack.layers:
        if layer.name == LEFTOVER:
            continue
        matte = matting.alpha_matte(stack.image, layer.mask, band_px or None)
        alpha = np.round(matte.alpha * 255).astype(np.uint8)
        opaque |= alpha == 255
        softened.append(Layer(name=layer.name, mask=layer.mask, box=_mask_box(alpha > 0), alpha=alpha,
                              colours=matte.foreground))
    if any(layer.name == LEFTOVER for layer in stack.layers) or not opaque.all():
        leftover = ~opaque
        softened.append(Layer(name=LEFTOVER, mask=leftover, box=_mask_box(leftover)))
    return LayerStack(image=stack.image, layers=softened)


def fresh_directory(parent: Path, stem: str) -> Path:
    """parent/stem, or parent/stem-2, -3, ... if that already exists: a user's files are never overwritten."""
    parent = Path(parent)
    candidate = parent / stem
    suffix = 2
    while candidate.exists():
        candidate = parent / f"{stem}-{suffix}"
        suffix += 1
    candidate.mkdir(parents=True)
    return candidate


def layer_file_name(layer: Layer) -> str:
    return layer.name.replace(" ", "_") + ".png"


def write_pngs(stack: LayerStack, directory: Path) -> list[Path]:
    """One full-size RGBA PNG per layer into an existing directory; returns the paths."""
    directory = Path(directory)
    paths = []
    for layer in stack.layers:
        path = directory / layer_file_name(layer)
        if path.exists():
            raise SamUserError(f"{path} already exists; choose an empty output folder.")
        Image.fromarray(stack.rgba(layer), mode="RGBA").save(path)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# Photoshop file (Adobe Photoshop File Formats Specification, version 1 ".psd")


def _pascal_name(name: str) -> bytes:
    """Pascal string of the name in Latin-1 (31 chars at most), padded to a multiple of 4 bytes."""
    raw = name.encode("latin-1", "replace")[:31]
    data = bytes([len(raw)]) + raw
    return data + b"\0" * ((-len(data)) % 4)


def _unicode_name_block(name: str) -> bytes:
    """'luni' additional layer information: the full name in UTF-16 (editors show this one)."""
    text = name.encode("utf-16-be")
    body = struct.pack(">I", len(text) // 2) + text
    body += b"\0" * ((-len(body)) % 4)
    return b"8BIM" + b"luni" + struct.pack(">I", len(body)) + body


def _layer_channels(stack: LayerStack, layer: Layer) -> list[tuple[int, bytes]]:
    x0, y0, x1, y1 = layer.box
    if layer.alpha is not None:
        rgba = stack.rgba(layer)[y0:y1, x0:x1]
        planes = [(-1, rgba[..., 3])] + [(channel, rgba[..., channel]) for channel in range(3)]
        return [(channel_id, struct.pack(">H", 0) + np.ascontiguousarray(plane).tobytes()) for channel_id, plane in planes]
    own = layer.mask[y0:y1, x0:x1]
    pixels = np.where(own[..., None], stack.image[y0:y1, x0:x1], 0).astype(np.uint8)
    alpha = np.where(own, 255, 0).astype(np.uint8)
    planes = [(-1, alpha), (0, pixels[..., 0]), (1, pixels[..., 1]), (2, pixels[..., 2])]
    # compression 0 (raw) for every channel: every PSD reader supports it
    return [(channel_id, struct.pack(">H", 0) + np.ascontiguousarray(plane).tobytes()) for channel_id, plane in planes]


def psd_bytes(stack: LayerStack) -> bytes:
    """The layered PSD as bytes: the first layer of the stack is the top one."""
    height, width = stack.image.shape[:2]
    if height > 30000 or width > 30000:
        raise SamUserError("PSD files are limited to 30000 pixels a side; export PNG layers for this image.")
    records = bytearray()
    channel_data = bytearray()
    bottom_to_top = list(reversed(stack.layers))
    for layer in bottom_to_top:
        x0, y0, x1, y1 = layer.box
        channels = _layer_channels(stack, layer)
        records += struct.pack(">iiiiH", y0, x0, y1, x1, len(channels))
        for channel_id, data in channels:
            records += struct.pack(">hI", channel_id, len(data))
        records += b"8BIMnorm" + struct.pack(">BBBB", 255, 0, 0, 0)  # opacity, clipping, flags, filler
        extra = struct.pack(">I", 0) + struct.pack(">I", 0) + _pascal_name(layer.name) + _unicode_name_block(layer.name)
        records += struct.pack(">I", len(extra)) + extra
        for _, data in channels:
            channel_data += data
    layer_info = struct.pack(">h", len(bottom_to_top)) + bytes(records) + bytes(channel_data)
    layer_info += b"\0" * (len(layer_info) % 2)
    layer_and_mask = struct.pack(">I", len(layer_info)) + layer_info + struct.pack(">I", 0)  # no global mask info

    out = bytearray()
    out += b"8BPS" + struct.pack(">H", 1) + b"\0" * 6
    out += struct.pack(">HIIHH", 3, height, width, 8, 3)   # channels, rows, columns, depth, RGB
    out += struct.pack(">I", 0)                              # colour mode data
    out += struct.pack(">I", 0)                              # image resources
    out += struct.pack(">I", len(layer_and_mask)) + layer_and_mask
    # the merged image (what viewers without layer support show): the original, raw, planar
    out += struct.pack(">H", 0) + np.ascontiguousarray(stack.image.transpose(2, 0, 1)).tobytes()
    return bytes(out)


def write_psd(stack: LayerStack, path: Path) -> Path:
    path = Path(path)
    if path.exists():
        raise SamUserError(f"{path} already exists; choose another name or folder.")
    path.write_bytes(psd_bytes(stack))
    return path


@dataclass(frozen=True)
class LayoutResult:
    directory: Path
    png_paths: list[Path]
    psd_path: Path | None
    layer_count: int


def export_layout(image: np.ndarray, masks: Sequence, output_dir: Path, stem: str, *, write_psd_file: bool = True,
                  write_png_files: bool = True, alpha: str = "hard", alpha_band: float = 0) -> LayoutResult:
    """Everything the 'Image layout' button produces for one image, in a new folder output_dir/stem.
    ``alpha="soft"``: segment layers with soft edges (see soften)."""
    stack = build_layers(image, masks)
    if alpha == "soft":
        stack = soften(stack, alpha_band)
    directory = fresh_directory(Path(output_dir), stem)
    pngs = write_pngs(stack, directory) if write_png_files else []
    psd = write_psd(stack, directory / f"{stem}.psd") if write_psd_file else None
    return LayoutResult(directory=directory, png_paths=pngs, psd_path=psd, layer_count=len(stack.layers))
