"""Mask toolkit: grow, shrink, feather, clean up and combine binary masks.

Every function takes an ``np.ndarray`` of shape ``(H, W)`` (bool, or anything whose
non-zero pixels are the mask; floats count from 0.5) and returns a new array; inputs are
never modified. Every operation costs time linear in the number of pixels, whatever the
radius.

Radii are radii. The extension this one replaces had an "expand amount" that was a
*diameter*: it dilated with a disk kernel of ``amount x amount`` pixels, which grows a mask
by about ``amount / 2`` px. Here ``expand(mask, 10)`` adds every pixel whose centre lies
within 10 px (Euclidean) of a mask pixel's centre, so a single pixel becomes a disk exactly
21 px wide. A user coming from the old slider should halve the number.

The image border is not background: ``shrink`` does not eat into a mask from the edge of the
image (a sky mask keeps touching the top edge), and ``expand`` and ``shrink`` are exact
complements of each other, ``shrink(m, r) == invert(expand(invert(m), r))``.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Tuple

import cv2
import numpy as np

from sd_webui_sam.errors import InvalidImageError

Box = Tuple[int, int, int, int]

_MAX_THREADS = 4
_THREADED_PIXELS = 1 << 20  # below this, starting threads costs more than it saves


def as_plane(mask: np.ndarray) -> np.ndarray:
    """``mask`` as an (H, W) array of its own values (a single trailing channel is dropped)."""
    array = np.asarray(mask)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2:
        raise InvalidImageError(f"A mask must be a 2-D (height x width) array; this one has shape {array.shape}.")
    return array


def as_mask(mask: np.ndarray) -> np.ndarray:
    """``mask`` as an (H, W) bool array: non-zero pixels, or values >= 0.5 for floats."""
    array = as_plane(mask)
    if array.dtype == bool:
        return array
    if np.issubdtype(array.dtype, np.floating):
        return array >= 0.5
    return array != 0


def _same_shape(*masks: np.ndarray) -> None:
    shapes = {m.shape for m in masks}
    if len(shapes) > 1:
        listed = ", ".join(f"{h}x{w}" for h, w in sorted(shapes))
        raise InvalidImageError(f"Masks must all be the same size to combine them; got {listed} (height x width).")


def invert(mask: np.ndarray) -> np.ndarray:
    return ~as_mask(mask)


def union(*masks: np.ndarray) -> np.ndarray:
    if not masks:
        raise ValueError("union() needs at least one mask")
    arrays = [as_mask(m) for m in masks]
    _same_shape(*arrays)
    out = arrays[0].copy()
    for other in arrays[1:]:
        out |= other
    return out


def intersect(*masks: np.ndarray) -> np.ndarray:
    if not masks:
        raise ValueError("intersect() needs at least one mask")
    arrays = [as_mask(m) for m in masks]
    _same_shape(*arrays)
    out = arrays[0].copy()
    for other in arrays[1:]:
        out &= other
    return out


def subtract(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixels of ``a`` that are not in ``b``."""
    first, second = as_mask(a), as_mask(b)
    _same_shape(first, second)
    return first & ~second


def mask_to_box(mask: np.ndarray) -> Optional[Box]:
    """Tight box around the mask as pixel edges ``(x0, y0, x1, y1)``, x1/y1 exclusive.

    Pixel ``i`` spans ``[i, i + 1)``, so the box's width is ``x1 - x0`` and it can be passed
    straight on as a box prompt. ``None`` for an empty mask.
    """
    m = as_mask(mask)
    columns = np.flatnonzero(m.any(axis=0))
    if columns.size == 0:
        return None
    rows = np.flatnonzero(m.any(axis=1))
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1


# ---------------------------------------------------------------- exact disk dilation

def _doubling_steps(max_offset: int) -> list:
    """Powers of two whose subsets sum to every offset 1..max_offset."""
    steps, total, step = [], 0, 1
    while total < max_offset:
        steps.append(step)
        total += step
        step *= 2
    return steps


def _cone(values: np.ndarray, steps: list, axis: int) -> None:
    """In place: ``v[i] = max_j(v[j] - |i - j|)`` along ``axis``, saturating at 0.

    Each doubling step takes the best of a pixel and its neighbours ``s`` away, less ``s``;
    after steps 1, 2, 4, ... every offset up to their sum has been tried, so the result is
    exact for offsets that small. ``values`` should be small enough to stay in cache.
    """
    length = values.shape[axis]
    if min(values.shape) < 8:
        # OpenCV's bindings read arrays this thin as scalars; NumPy is fine at this size.
        _cone_numpy(values, steps, axis)
        return
    scratch = np.empty_like(values)
    for s in steps:
        if s >= length:
            break
        if axis == 1:
            head, tail, buf = values[:, : length - s], values[:, s:], scratch[:, : length - s]
        else:
            head, tail, buf = values[: length - s], values[s:], scratch[: length - s]
        cv2.subtract(tail, s, dst=buf)
        cv2.max(head, buf, dst=head)
        cv2.subtract(head, s, dst=buf)
        cv2.max(tail, buf, dst=tail)


def _cone_numpy(values: np.ndarray, steps: list, axis: int) -> None:
    length = values.shape[axis]
    for s in steps:
        if s >= length:
            break
        moved = np.moveaxis(values, axis, 0)
        head, tail = moved[: length - s], moved[s:]
        np.maximum(head, np.maximum(tail.astype(np.int64) - s, 0).astype(values.dtype), out=head)
        np.maximum(tail, np.maximum(head.astype(np.int64) - s, 0).astype(values.dtype), out=tail)


def _dilate_disk(mask: np.ndarray, radius: float) -> np.ndarray:
    """Pixels whose centre is within ``radius`` (Euclidean) of a mask pixel's centre.

    Exact, in two separable passes like a Euclidean distance transform thresholded at the
    radius: the column pass finds each pixel's vertical distance ``g`` to the mask in its
    column; a mask pixel ``g`` rows away covers ``floor(sqrt(r^2 - g^2))`` columns either
    side, and the row pass spreads that coverage. Both passes are "cones" computed by
    doubling steps, so the cost is pixels x log2(radius) cheap saturating byte operations,
    done in blocks of columns, then of rows, that stay in cache.
    """
    height, width = mask.shape
    radius_sq = math.floor(radius * radius + 1e-9)  # offsets are integers: dx²+dy² <= floor(r²)
    reach = math.isqrt(radius_sq)
    if reach == 0 or not mask.any():
        return mask.copy()
    longest = math.isqrt(height * height + width * width) + 1
    if reach > longest:  # a larger radius covers the same pixels
        reach, radius_sq = longest, longest * longest
    peak = reach + 1
    if peak > 65534:  # only for images tens of thousands of pixels on a side
        background = np.where(mask, 0, 255).astype(np.uint8)
        distance = cv2.distanceTransform(background, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        return distance * distance <= radius_sq + 0.5
    dtype = np.uint8 if peak <= 255 else np.uint16

    # Work only where the result can differ from "false": the mask's box grown by the reach.
    x0, y0, x1, y1 = mask_to_box(mask)
    x0, y0 = max(0, x0 - reach), max(0, y0 - reach)
    x1, y1 = min(width, x1 + reach), min(height, y1 + reach)
    region = mask[y0:y1, x0:x1]

    # Indexed by (peak - g): how many columns either side a pixel g rows from the mask covers, + 1.
    coverage = np.zeros(peak + 1, dtype=dtype)
    for level in range(1, peak + 1):
        g = peak - level
        coverage[level] = math.isqrt(radius_sq - g * g) + 1
    lut = None
    if dtype == np.uint8:
        lut = np.zeros(256, np.uint8)
        lut[: peak + 1] = coverage

    steps = _doubling_steps(reach)
    horizontal = np.empty(region.shape, dtype=dtype)
    out = np.zeros_like(mask)

    def column_block(start: int) -> None:
        columns = slice(start, start + 256)
        vertical = region[:, columns].astype(dtype) * dtype(peak)
        _cone(vertical, steps, axis=0)  # = max(0, peak - g)
        horizontal[:, columns] = cv2.LUT(vertical, lut) if lut is not None else coverage[vertical]

    def row_block(start: int) -> None:
        block = horizontal[start:start + 64]
        _cone(block, steps, axis=1)
        out[y0 + start:y0 + start + block.shape[0], x0:x1] = block > 0

    # Blocks write disjoint slices, and OpenCV releases the GIL, so they can run side by side.
    workers = min(_MAX_THREADS, os.cpu_count() or 1) if region.size >= _THREADED_PIXELS else 1
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(column_block, range(0, region.shape[1], 256)))
            list(pool.map(row_block, range(0, region.shape[0], 64)))
    else:
        for start in range(0, region.shape[1], 256):
            column_block(start)
        for start in range(0, region.shape[0], 64):
            row_block(start)
    return out


def expand(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Grow the mask by ``radius_px`` (a radius, Euclidean; see the module docstring).

    A negative radius shrinks. Adds every pixel whose centre lies within the radius of a
    mask pixel's centre.
    """
    m = as_mask(mask)
    if radius_px < 0:
        return shrink(m, -radius_px)
    return _dilate_disk(m, float(radius_px))


def shrink(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Remove every mask pixel within ``radius_px`` of a background pixel (negative: expand).

    Shrinking by more than half the mask's thickness leaves nothing.
    """
    m = as_mask(mask)
    if radius_px < 0:
        return expand(m, -radius_px)
    if m.all() or not m.any():
        return m.copy()
    # Background beyond the mask's box grown by the radius cannot reach into the mask, so
    # the complement is only needed there.
    reach = math.isqrt(math.floor(float(radius_px) ** 2 + 1e-9))
    height, width = m.shape
    x0, y0, x1, y1 = mask_to_box(m)
    x0, y0 = max(0, x0 - reach - 1), max(0, y0 - reach - 1)
    x1, y1 = min(width, x1 + reach + 1), min(height, y1 + reach + 1)
    out = np.zeros_like(m)
    out[y0:y1, x0:x1] = ~_dilate_disk(~m[y0:y1, x0:x1], float(radius_px))
    return out


# ---------------------------------------------------------------- feather

def _box_half_widths(radius: int) -> list:
    """Three box half-widths summing to ``radius`` (as equal as possible)."""
    base, extra = divmod(radius, 3)
    return [base + (1 if i < extra else 0) for i in range(3)]


def feather(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Soft alpha (float32, 0..1) from a mask (or an alpha): three box blurs in a row.

    Three box blurs approximate a Gaussian (sigma about radius / 2.4) and, unlike a Gaussian,
    stop exactly at the radius: across a straight edge the alpha falls from exactly 1 at
    ``radius_px`` inside to exactly 0 at ``radius_px`` outside, 0.5 at the edge. Box blurs
    cost the same per pixel whatever their width. Pixels beyond the image border count as
    copies of the border pixels, so a mask touching the edge stays solid there.
    """
    m = np.asarray(mask)
    alpha = as_mask(m).astype(np.float32) if m.dtype == bool or not np.issubdtype(m.dtype, np.floating) \
        else np.clip(m.astype(np.float32), 0.0, 1.0)
    radius = int(round(max(0.0, float(radius_px))))
    for half in _box_half_widths(radius):
        if half > 0:
            size = 2 * half + 1
            alpha = cv2.blur(alpha, (size, size), borderType=cv2.BORDER_REPLICATE)
    return np.clip(alpha, 0.0, 1.0)


# ---------------------------------------------------------------- holes and islands

def fill_holes(mask: np.ndarray, max_hole_area: Optional[int] = None) -> np.ndarray:
    """Fill background regions enclosed by the mask (not touching the image border).

    With ``max_hole_area`` only holes of at most that many pixels are filled. Holes are
    4-connected background regions, the counterpart of 8-connected mask regions, so a ring
    whose pixels touch only diagonally still encloses its inside.
    """
    m = as_mask(mask)
    count, labels, stats, _ = cv2.connectedComponentsWithStats((~m).astype(np.uint8), connectivity=4)
    if count <= 1:
        return m.copy()
    height, width = m.shape
    left, top = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    right = left + stats[:, cv2.CC_STAT_WIDTH]
    bottom = top + stats[:, cv2.CC_STAT_HEIGHT]
    enclosed = (left > 0) & (top > 0) & (right < width) & (bottom < height)
    if max_hole_area is not None:
        enclosed &= stats[:, cv2.CC_STAT_AREA] <= max_hole_area
    enclosed[0] = False  # label 0 is the mask itself
    return m | enclosed[labels]


def remove_islands(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop 8-connected mask regions smaller than ``min_area`` pixels."""
    m = as_mask(mask)
    if min_area <= 1:
        return m.copy()
    count, labels, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False
    return keep[labels]


# ---------------------------------------------------------------- pipeline

# postprocess() takes keyword arguments named like the operations (the panel's and the API's
# field names), which hide the functions inside it.
_expand, _feather, _fill_holes = expand, feather, fill_holes


def postprocess(
    mask: np.ndarray,
    expand: float = 0,
    feather: float = 0,
    fill_holes: bool = False,
    min_island: int = 0,
    invert: bool = False,
) -> np.ndarray:
    """The mask clean-up the panel and the API apply, always in this order:

    1. ``fill_holes``: fill enclosed holes of the selected object;
    2. ``min_island``: drop object fragments smaller than this many pixels;
    3. ``invert``: select everything but the object;
    4. ``expand``: grow (negative: shrink) the *resulting* mask by this radius in pixels, so
       with ``invert`` a positive value eats into the object, which hides halos when the
       background is repainted (the old "amount" was a diameter: halve old values);
    5. ``feather``: soften the edge over this radius.

    Steps 1-2 clean up the model's output, so they always act on the object. Returns a bool
    (H, W) mask, or a float32 alpha in 0..1 when ``feather > 0``.
    """
    result = as_mask(mask)
    if fill_holes:
        result = _fill_holes(result)
    if min_island and min_island > 1:
        result = remove_islands(result, int(min_island))
    if invert:
        result = ~result
    if expand:
        result = _expand(result, expand)
    if feather and feather > 0:
        return _feather(result, feather)
    return result.copy() if result is mask else result
