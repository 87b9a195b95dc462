"""Random segmentation for EditAnything: a colour per segment, its blend over the image, and the
EditAnything ControlNet control map (segment id in R and G).

Segments are painted largest first, so a smaller segment inside a larger one stays visible; the
colours come from a seeded generator, so the same seed gives the same picture.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

MAX_SEGMENTS = 65535  # ids are stored in two bytes (R = id % 256, G = id // 256)


@dataclass(frozen=True)
class RandomSegmentation:
    colour_map: np.ndarray       # (H,W,3) uint8, black where no segment
    blend: np.ndarray            # (H,W,3) uint8, half image, half colour map
    control_map: np.ndarray      # (H,W,3) uint8, the EditAnything ControlNet input
    id_map: np.ndarray           # (H,W) uint16, 0 = no segment, 1..N by decreasing area


def _as_masks(masks: Iterable) -> list[np.ndarray]:
    return [np.asarray(m.mask() if hasattr(m, "mask") else m, dtype=bool) for m in masks]


def segment_id_map(shape: tuple[int, int], masks: Iterable) -> np.ndarray:
    """(H,W) uint16: segment ids 1..N in decreasing area, smaller segments painted over larger ones."""
    arrays = _as_masks(masks)
    arrays.sort(key=lambda mask: -int(mask.sum()))
    if len(arrays) > MAX_SEGMENTS:
        arrays = arrays[:MAX_SEGMENTS]
    ids = np.zeros(shape, dtype=np.uint16)
    for index, mask in enumerate(arrays, start=1):
        if mask.shape != tuple(shape):
            raise ValueError(f"mask of shape {mask.shape} does not match the image {tuple(shape)}")
        ids[mask] = index
    return ids


def editanything_control_map(id_map: np.ndarray) -> np.ndarray:
    control = np.zeros(id_map.shape + (3,), dtype=np.uint8)
    control[..., 0] = (id_map % 256).astype(np.uint8)
    control[..., 1] = (id_map // 256).astype(np.uint8)
    return control


def blend(image: np.ndarray, overlay: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    mixed = image.astype(np.float32) * (1.0 - alpha) + overlay.astype(np.float32) * alpha
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def random_segmentation(image: np.ndarray, masks: Iterable, seed: int = 0) -> RandomSegmentation:
    """The three EditAnything images for an (H,W,3) uint8 image and its automatic masks."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("random_segmentation expects an (H,W,3) image")
    ids = segment_id_map(image.shape[:2], masks)
    count = int(ids.max())
    rng = np.random.default_rng(seed)
    palette = np.zeros((count + 1, 3), dtype=np.uint8)
    palette[1:] = rng.integers(0, 256, size=(count, 3), dtype=np.uint8)
    colour_map = palette[ids]
    return RandomSegmentation(
        colour_map=colour_map,
        blend=blend(image, colour_map),
        control_map=editanything_control_map(ids),
        id_map=ids,
    )
