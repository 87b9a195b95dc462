"""The segment-everything helpers, apart from the algorithm in ``generator``: point grids, crop
boxes, low-res logits to masks, stability scores, mask boxes, bit-packed masks, the crop-edge
test and the cv2 clean-up of small regions.

The tensor helpers work on the model's device; the CPU paths use NumPy where it is faster.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sd_webui_sam.predictor import logits_to_image, resized_shape

__all__ = [
    "CROP_EDGE_TOLERANCE", "crop_boxes", "layer_point_grids", "mask_boxes", "near_crop_edge", "pack_masks",
    "point_grid", "remove_small_regions", "resized_input_size", "stability_scores", "synchronize", "unpack_masks",
    "upsample_logits",
]

# Edges within this many pixels of a crop border (and not of the image border) mark a mask
# as cut off by the crop; the same tolerance as the reference generator.
CROP_EDGE_TOLERANCE = 20.0


# ---------------------------------------------------------------------------------------------
# Geometry: point grids and crops


def point_grid(points_per_side: int) -> np.ndarray:
    """(n*n, 2) float64 points in [0,1]^2, cell centres, x varying fastest."""
    half_cell = 1.0 / (2 * points_per_side)
    ticks = np.linspace(half_cell, 1.0 - half_cell, points_per_side)
    xs, ys = np.meshgrid(ticks, ticks)
    return np.stack([xs.reshape(-1), ys.reshape(-1)], axis=-1)


def layer_point_grids(points_per_side: int, crop_n_layers: int, downscale_factor: int) -> list[np.ndarray]:
    return [point_grid(int(points_per_side / (downscale_factor**layer))) for layer in range(crop_n_layers + 1)]


def crop_boxes(image_size: tuple[int, int], crop_n_layers: int, overlap_ratio: float) -> list[tuple[tuple[int, int, int, int], int]]:
    """[(xyxy crop box, layer index)]: the whole image, then 4**k overlapping crops in layer k."""
    height, width = image_size
    boxes = [((0, 0, width, height), 0)]
    short_side = min(height, width)
    for layer in range(1, crop_n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * short_side * (2 / per_side))
        crop_w = int(math.ceil((overlap * (per_side - 1) + width) / per_side))
        crop_h = int(math.ceil((overlap * (per_side - 1) + height) / per_side))
        xs = [int((crop_w - overlap) * i) for i in range(per_side)]
        ys = [int((crop_h - overlap) * i) for i in range(per_side)]
        # x-major order, as the reference iterates them (it matters for NMS ties between crops)
        for x0 in xs:
            for y0 in ys:
                boxes.append(((x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)), layer))
    return boxes


def resized_input_size(height: int, width: int, long_side: int) -> tuple[int, int]:
    """The (h, w) an image is resized to so its longest side is long_side (SAM's ResizeLongestSide)."""
    return resized_shape(height, width, long_side)


# ---------------------------------------------------------------------------------------------
# Tensor helpers (all on the model's device)


def upsample_logits(low_res: torch.Tensor, model_input_side: int, input_size: tuple[int, int],
                    output_size: tuple[int, int], geometry: str = "longest_side") -> torch.Tensor:
    """Low-res logits (N,S,S) -> (N,H,W) float32, exactly the official postprocess of the model's
    input geometry (SAM: upsample to the padded input, crop the padding, resize to the original,
    without computing the padding; SAM 2: resize straight to the original)."""
    return logits_to_image(low_res.unsqueeze(1), geometry, model_input_side, tuple(input_size), tuple(output_size))[:, 0]


def stability_scores(logits: torch.Tensor, mask_threshold: float, offset: float) -> torch.Tensor:
    """IoU between the masks thresholded at mask_threshold +- offset (the tighter one is inside)."""
    inner = _count_true(logits > (mask_threshold + offset))
    outer = _count_true(logits > (mask_threshold - offset))
    return inner / outer


def _count_true(masks: torch.Tensor) -> torch.Tensor:
    """(N,...) bool -> (N,) int32 counts of True."""
    if masks.device.type == "cpu":
        # torch casts every bool to int32 before summing; NumPy counts the bytes directly
        counts = np.count_nonzero(masks.reshape(masks.shape[0], -1).numpy(), axis=1)
        return torch.from_numpy(counts.astype(np.int32))
    return masks.flatten(1).sum(1, dtype=torch.int32)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N,H,W) bool -> (N,4) int64 inclusive xyxy boxes; an empty mask gets (0,0,0,0)."""
    count, height, width = masks.shape
    if count == 0:
        return torch.zeros((0, 4), dtype=torch.int64, device=masks.device)
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    row_index = torch.arange(height, device=masks.device)
    col_index = torch.arange(width, device=masks.device)
    top = torch.where(rows, row_index, height).min(dim=1).values
    bottom = torch.where(rows, row_index, -1).max(dim=1).values
    left = torch.where(cols, col_index, width).min(dim=1).values
    right = torch.where(cols, col_index, -1).max(dim=1).values
    boxes = torch.stack([left, top, right, bottom], dim=1)
    empty = ~rows.any(dim=1)
    return boxes.masked_fill(empty[:, None], 0)


_BIT_WEIGHTS = (1, 2, 4, 8, 16, 32, 64, 128)


def pack_masks(masks: torch.Tensor) -> torch.Tensor:
    """(N,H,W) bool -> (N, ceil(H*W/8)) uint8, so candidates waiting for NMS take 1/8 of the memory."""
    count = masks.shape[0]
    if count == 0:
        return torch.zeros((0, -(-masks.shape[1] * masks.shape[2] // 8)), dtype=torch.uint8, device=masks.device)
    if masks.device.type == "cpu":
        # NumPy's packbits is a tight C loop; the tensor arithmetic below is for accelerators
        return torch.from_numpy(np.packbits(masks.reshape(count, -1).numpy(), axis=1, bitorder="little"))
    flat = masks.reshape(count, -1)
    pad = (-flat.shape[1]) % 8
    if pad:
        flat = F.pad(flat, (0, pad))
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=masks.device)
    return (flat.view(count, -1, 8).to(torch.uint8) * weights).sum(dim=2, dtype=torch.uint8)


def unpack_masks(packed: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    pixels = shape[0] * shape[1]
    packed = packed[:, : -(-pixels // 8)]
    if packed.device.type == "cpu":
        bits = np.unpackbits(packed.numpy(), axis=1, count=pixels, bitorder="little")
        return torch.from_numpy(bits.view(bool).reshape(packed.shape[0], *shape))
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) & weights) != 0
    return bits.flatten(1)[:, :pixels].reshape(packed.shape[0], *shape)


def near_crop_edge(boxes: torch.Tensor, crop_box: Sequence[int], image_box: Sequence[int]) -> torch.Tensor:
    """Boxes (image frame, xyxy) touching a crop border that is not also an image border."""
    crop = torch.as_tensor(crop_box, dtype=torch.float32, device=boxes.device)
    image = torch.as_tensor(image_box, dtype=torch.float32, device=boxes.device)
    boxes = boxes.float()
    at_crop = (boxes - crop).abs() <= CROP_EDGE_TOLERANCE
    at_image = (boxes - image).abs() <= CROP_EDGE_TOLERANCE
    return (at_crop & ~at_image).any(dim=1)


def remove_small_regions(mask: np.ndarray, min_area: int) -> tuple[np.ndarray, bool]:
    """Fill holes, then drop islands, smaller than min_area (8-connected); (mask, changed).

    As in the reference generator: a "hole" is any connected unmasked region (including one at
    the image border), and if every island is small the largest one is kept.
    """
    import cv2  # optional and heavy: only min_mask_region_area > 0 needs it

    changed = False
    background = (~mask).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(background, connectivity=8)
    small_holes = [label for label in range(1, count) if stats[label, cv2.CC_STAT_AREA] < min_area]
    if small_holes:
        mask = mask | np.isin(labels, small_holes)
        changed = True
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    small_islands = [label for label in range(1, count) if areas[label - 1] < min_area]
    if small_islands:
        kept = [label for label in range(1, count) if areas[label - 1] >= min_area]
        if not kept:
            kept = [int(np.argmax(areas)) + 1]
        mask = np.isin(labels, kept)
        changed = True
    return mask, changed


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
