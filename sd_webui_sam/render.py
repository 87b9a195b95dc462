"""Pictures for people: the overlay preview, the mask image and the RGBA cut-out.

Previews are opaque RGB. (The extension this one replaces blended over all four channels,
so its previews came out 80% transparent, alpha 204, in masked areas.)
"""
from __future__ import annotations

import colorsys
from typing import Iterable, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from PIL import Image

from sd_webui_sam.errors import InvalidImageError, InvalidPromptError
from sd_webui_sam.images import load_image, load_image_rgba
from sd_webui_sam.masks import as_plane

Colour = Tuple[int, int, int]

POSITIVE_COLOUR: Colour = (0, 200, 0)
NEGATIVE_COLOUR: Colour = (230, 0, 0)
BOX_COLOUR: Colour = (30, 144, 255)
REFERENCE_BOX_COLOUR: Colour = (255, 0, 0)
_GOLDEN_RATIO_CONJUGATE = 0.618033988749895


def palette(count: int, seed: int = 0) -> np.ndarray:
    """``count`` distinct, saturated colours as (count, 3) uint8; the same for the same seed.

    Hues step by the golden ratio from a seeded start, so neighbours in the list are far
    apart on the colour wheel however many colours are asked for.
    """
    start = float(np.random.default_rng(seed).random())
    colours = []
    for index in range(count):
        hue = (start + index * _GOLDEN_RATIO_CONJUGATE) % 1.0
        value = 0.95 if index % 2 == 0 else 0.8
        colours.append([round(c * 255) for c in colorsys.hsv_to_rgb(hue, 0.85, value)])
    return np.array(colours, dtype=np.uint8).reshape(count, 3)


# ---------------------------------------------------------------- helpers

def _as_alpha(mask: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """A mask (bool / int: non-zero) or an alpha (float 0..1) as float32 0..1 of ``shape``."""
    array = np.asarray(mask)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.shape != shape:
        raise InvalidImageError(
            f"The mask is {array.shape[1] if array.ndim > 1 else '?'}x{array.shape[0]} but the image is "
            f"{shape[1]}x{shape[0]} (width x height); they must match."
        )
    if np.issubdtype(array.dtype, np.floating):
        return np.minimum(np.fmax(array.astype(np.float32, copy=False), 0.0), 1.0)  # NaN -> 0
    return (array != 0).astype(np.float32)


def _as_mask_or_alpha(mask: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """Bool masks stay bool (the fast path); float alphas become float32 0..1."""
    array = np.asarray(mask)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if np.issubdtype(array.dtype, np.floating):
        return _as_alpha(array, shape)
    if array.shape != shape:
        _as_alpha(array, shape)  # raises the size message
    return array if array.dtype == bool else array != 0


def _tint(canvas: np.ndarray, mask: np.ndarray, colour: np.ndarray, weight: float,
          kernel: Optional[np.ndarray], border: int) -> None:
    """In place, within the mask's box: blend ``colour`` at ``weight``, edge in full colour."""
    solid = mask if mask.dtype == bool else mask >= 0.5
    covered = mask if mask.dtype == bool else mask > 0
    rows = np.flatnonzero(covered.any(axis=1))
    if rows.size == 0:
        return
    columns = np.flatnonzero(covered.any(axis=0))
    height, width = covered.shape
    # The box grown by the outline width, so the erosion sees background around the mask.
    y0, y1 = max(0, rows[0] - border), min(height, rows[-1] + 1 + border)
    x0, x1 = max(0, columns[0] - border), min(width, columns[-1] + 1 + border)
    region = canvas[y0:y1, x0:x1]
    colour_u8 = np.asarray(np.clip(np.rint(colour), 0, 255), dtype=np.uint8)
    flat = np.empty_like(region)
    flat[:] = colour_u8
    if mask.dtype == bool:
        blended = cv2.addWeighted(region, 1.0 - weight, flat, weight, 0.0)
        np.copyto(region, blended, where=covered[y0:y1, x0:x1, None])
    else:
        w = mask[y0:y1, x0:x1, None] * np.float32(weight)
        mixed = region.astype(np.float32)
        mixed += (flat.astype(np.float32) - mixed) * w
        region[:] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    if kernel is not None:
        inside = solid[y0:y1, x0:x1].astype(np.uint8)
        edge = inside.astype(bool) & ~cv2.erode(inside, kernel, borderType=cv2.BORDER_REPLICATE).astype(bool)
        region[edge] = colour_u8


def _mask_list(masks) -> list:
    if masks is None:
        return []
    if isinstance(masks, np.ndarray):
        if masks.ndim == 2:
            return [masks]
        if masks.ndim == 3:
            return list(masks)
        raise InvalidImageError(f"Masks must be (H, W) or (N, H, W); got shape {masks.shape}.")
    return list(masks)


def _line_width(height: int, width: int, fraction: float) -> int:
    return max(1, int(round(min(height, width) * fraction)))


def _pixel(value: float) -> int:
    """The pixel a coordinate falls on (coordinates name pixel centres, as SAM reads them)."""
    return int(np.floor(float(value) + 0.5))


# ---------------------------------------------------------------- overlay

def overlay(
    image_rgb,
    masks=(),
    *,
    boxes: Iterable[Sequence[float]] = (),
    points: Iterable[Sequence[float]] = (),
    labels: Iterable[int] = (),
    alpha: float = 0.5,
    colors: Optional[Sequence[Colour]] = None,
    box_color: Colour = BOX_COLOUR,
    outline: bool = True,
) -> np.ndarray:
    """Opaque (H, W, 3) uint8 preview: coloured masks with outlines, boxes, point markers.

    ``masks``: one (H, W) mask, an (N, H, W) stack or a list; bool masks or float alphas
    (a feathered mask shows its softness). Each mask is tinted with its colour at ``alpha``
    and outlined inside its edge. ``boxes`` are xyxy rectangles; ``points`` are (x, y) pixel
    positions, drawn as green (label 1) or red (label 0) dots with a white ring, centred on
    the pixel. Nothing else in the picture changes.
    """
    base = load_image(image_rgb, max_pixels=np.iinfo(np.int64).max)
    height, width = base.shape[:2]
    mask_list = _mask_list(masks)
    colours = np.asarray(colors, dtype=np.float32).reshape(-1, 3) if colors is not None \
        else palette(len(mask_list)).astype(np.float32)
    if len(colours) < len(mask_list):
        raise InvalidImageError(f"{len(mask_list)} masks but only {len(colours)} colours were given.")
    blend_weight = float(np.clip(alpha, 0.0, 1.0))

    result = base
    border = _line_width(height, width, 1 / 400)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * border + 1, 2 * border + 1))
    for mask, colour in zip(mask_list, colours):
        _tint(result, _as_mask_or_alpha(mask, (height, width)), colour, blend_weight,
              kernel if outline else None, border)
    result = np.ascontiguousarray(result)

    box_width = _line_width(height, width, 1 / 300)
    for box in boxes:
        if len(box) != 4:
            raise InvalidPromptError(f"A box needs 4 numbers (x0, y0, x1, y1); got {list(box)}.")
        x0, y0, x1, y1 = (_pixel(v) for v in box)
        cv2.rectangle(result, (x0, y0), (x1, y1), tuple(int(c) for c in box_color), box_width, cv2.LINE_8)

    point_list = [tuple(p) for p in points]
    label_list = list(labels) if labels else [1] * len(point_list)
    if len(label_list) != len(point_list):
        raise InvalidPromptError(f"{len(point_list)} points but {len(label_list)} labels; give one label per point.")
    radius = max(3, int(round(min(height, width) / 120)))
    ring = max(1, radius // 3)
    for (x, y), label in zip(point_list, label_list):
        centre = (_pixel(x), _pixel(y))
        fill = POSITIVE_COLOUR if int(label) == 1 else NEGATIVE_COLOUR
        cv2.circle(result, centre, radius + ring, (255, 255, 255), -1, cv2.LINE_8)
        cv2.circle(result, centre, radius, fill, -1, cv2.LINE_8)
    return result


def reference_blend(image_rgb, mask: np.ndarray, boxes: Iterable[Sequence[float]] = ()) -> Image.Image:
    """The old routes' "blended image": the mask tinted, its boxes in red; opaque RGB PIL."""
    return Image.fromarray(overlay(image_rgb, [mask], boxes=boxes, box_color=REFERENCE_BOX_COLOUR))


# ---------------------------------------------------------------- mask image and cut-out

def mask_image(mask: np.ndarray) -> Image.Image:
    """PIL mode "L": 255 in the mask, 0 outside (a float alpha keeps its grey levels)."""
    array = as_plane(mask)
    alpha = _as_alpha(array, array.shape)
    return Image.fromarray(np.rint(alpha * 255).astype(np.uint8), mode="L")


def cutout(image: Union[np.ndarray, Image.Image], mask_or_alpha: np.ndarray) -> Image.Image:
    """RGBA picture, transparent outside the mask.

    A float alpha (a feathered mask) gives soft edges; where the source already had
    transparency, the two multiply. Fully transparent pixels are stored as (0, 0, 0, 0).
    """
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 4:
        rgba = image.copy()
    elif isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        rgba = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2RGBA)
    else:
        rgba = load_image_rgba(image, max_pixels=np.iinfo(np.int64).max)
    weight = _as_mask_or_alpha(mask_or_alpha, rgba.shape[:2])
    if weight.dtype == bool:
        keep = np.ascontiguousarray(weight).view(np.uint8)
    else:
        mask_alpha = cv2.convertScaleAbs(weight, alpha=255.0)  # rounds and saturates to 0..255
        rgba[:, :, 3] = cv2.multiply(np.ascontiguousarray(rgba[:, :, 3]), mask_alpha, scale=1.0 / 255.0)
        keep = rgba[:, :, 3].copy()
    # Zero everywhere outside: fully transparent pixels are stored as (0, 0, 0, 0).
    return Image.fromarray(cv2.bitwise_and(rgba, rgba, mask=keep), mode="RGBA")
