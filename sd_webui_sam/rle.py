"""COCO run-length encoding, byte-compatible with pycocotools (which is not needed).

A mask is flattened column by column (Fortran order) and stored as the lengths of
alternating runs, background first (so a mask starting with foreground begins with a 0 run).
The compressed form is pycocotools' string: each count (from the fourth on, as the difference
from the count two before) in little-endian groups of 5 bits, 6 bits per character offset by
48, with a continuation bit. ``{"size": [h, w], "counts": str}`` is what COCO JSON and the
API carry; the uncompressed form has ``counts`` as a list of ints.
"""
from __future__ import annotations

from typing import List, Mapping, Sequence, Union

import numpy as np

from sd_webui_sam.errors import InvalidImageError

Rle = Mapping[str, object]

_MAX_GROUPS = 13  # 13 x 5 bits holds any signed 64-bit difference
_CHUNK = 1 << 16


# ---------------------------------------------------------------- runs

def _runs(mask: np.ndarray) -> np.ndarray:
    """Alternating run lengths (background first) of the column-major flattening."""
    array = np.asarray(mask)
    if array.ndim != 2:
        raise InvalidImageError(f"Only 2-D masks can be run-length encoded; got shape {array.shape}.")
    flat = (array != 0).ravel(order="F")
    if flat.size == 0:
        return np.zeros(0, np.int64)
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(edges)
    if flat[0]:
        counts = np.concatenate(([0], counts))
    return counts.astype(np.int64)


def encode_uncompressed(mask: np.ndarray) -> dict:
    """``{"size": [h, w], "counts": [int, ...]}``."""
    height, width = np.asarray(mask).shape[:2]
    return {"size": [int(height), int(width)], "counts": [int(c) for c in _runs(mask)]}


def encode(mask: np.ndarray) -> dict:
    """``{"size": [h, w], "counts": str}`` as ``pycocotools.mask.encode`` makes it (as text)."""
    height, width = np.asarray(mask).shape[:2]
    return {"size": [int(height), int(width)], "counts": counts_to_string(_runs(mask))}


# ---------------------------------------------------------------- counts string

def counts_to_string(counts: Sequence[int]) -> str:
    values = np.asarray(counts, dtype=np.int64)
    if values.size == 0:
        return ""
    deltas = values.copy()
    deltas[3:] -= values[1:-2]
    # Chunks keep the (values x groups) scratch arrays small for masks with millions of runs.
    return "".join(_deltas_to_string(deltas[i:i + _CHUNK]) for i in range(0, deltas.size, _CHUNK))


def _deltas_to_string(deltas: np.ndarray) -> str:
    """Per value, the 5-bit groups and whether more follow, exactly as pycocotools decides:
    stop once the remaining bits are all copies of the sign bit of the last group."""
    largest = int(np.abs(deltas).max())
    group_count = min(_MAX_GROUPS, (largest.bit_length() + 1) // 5 + 1)
    groups = np.empty((deltas.size, group_count), np.int64)
    more = np.empty((deltas.size, group_count), bool)
    remaining = deltas.copy()
    for k in range(group_count):
        group = remaining & 0x1F
        remaining = remaining >> 5
        groups[:, k] = group
        more[:, k] = np.where(group & 0x10, remaining != -1, remaining != 0)
    more[:, -1] = False  # group_count is enough for every value here
    lengths = np.argmin(more, axis=1) + 1  # the first group with no continuation ends it
    used = np.arange(group_count)[None, :] < lengths[:, None]
    chars = groups | np.where(more, 0x20, 0)
    return (chars[used] + 48).astype(np.uint8).tobytes().decode("ascii")


def string_to_counts(text: Union[str, bytes]) -> np.ndarray:
    data = np.frombuffer(text.encode("ascii") if isinstance(text, str) else bytes(text), np.uint8)
    if data.size == 0:
        return np.zeros(0, np.int64)
    codes = data.astype(np.int64) - 48
    if (codes < 0).any() or (codes > 63).any():
        raise InvalidImageError("The RLE counts string has characters outside the COCO alphabet.")
    last = (codes & 0x20) == 0
    if not last[-1]:
        raise InvalidImageError("The RLE counts string is cut off in the middle of a number.")
    value_index = np.concatenate(([0], np.cumsum(last)[:-1]))
    starts = np.flatnonzero(np.concatenate(([True], last[:-1])))
    position = np.arange(codes.size) - starts[value_index]
    if position.max(initial=0) >= _MAX_GROUPS:
        raise InvalidImageError("The RLE counts string holds a number too large for a mask.")
    contributions = (codes & 0x1F) << (5 * position)
    values = np.add.reduceat(contributions, starts)
    ends = np.flatnonzero(last)
    negative = (codes[ends] & 0x10) != 0
    width = 5 * (position[ends] + 1)
    values = np.where(negative, values - (np.int64(1) << width), values)
    counts = values.copy()
    # Undo the differences: counts[i] += counts[i - 2] for i >= 3, i.e. running sums of the
    # odd-indexed values from 1 and of the even-indexed values from 2.
    counts[1::2] = np.cumsum(values[1::2])
    counts[2::2] = np.cumsum(values[2::2])
    return counts


# ---------------------------------------------------------------- decode, area, box

def _counts_of(rle: Rle) -> np.ndarray:
    counts = rle.get("counts") if isinstance(rle, Mapping) else None
    if counts is None or "size" not in rle:
        raise InvalidImageError('An RLE must be {"size": [height, width], "counts": ...}.')
    if isinstance(counts, (str, bytes, bytearray)):
        values = string_to_counts(counts)
    else:
        values = np.asarray(list(counts), dtype=np.int64)
    if (values < 0).any():
        raise InvalidImageError("An RLE has a negative run length.")
    return values


def _size_of(rle: Rle) -> tuple:
    try:
        height, width = (int(v) for v in rle["size"])
    except (TypeError, ValueError, KeyError):
        raise InvalidImageError('An RLE "size" must be [height, width].') from None
    if height < 0 or width < 0:
        raise InvalidImageError('An RLE "size" cannot be negative.')
    return height, width


def decode(rle: Rle) -> np.ndarray:
    """(H, W) bool mask from a compressed or uncompressed RLE."""
    height, width = _size_of(rle)
    counts = _counts_of(rle)
    total = int(counts.sum())
    if total != height * width:
        raise InvalidImageError(
            f"The RLE covers {total} pixels but its size {height}x{width} has {height * width}."
        )
    values = np.zeros(counts.size, bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return np.ascontiguousarray(flat.reshape((width, height)).T)


def area(rle: Rle) -> int:
    """Number of mask pixels."""
    return int(_counts_of(rle)[1::2].sum())


def to_bbox(rle: Rle) -> List[float]:
    """COCO box ``[x, y, width, height]`` of the mask pixels (zeros for an empty mask)."""
    height, _ = _size_of(rle)
    counts = _counts_of(rle)
    ends = np.cumsum(counts)
    starts = ends - counts
    foreground = np.arange(counts.size) % 2 == 1
    foreground &= counts > 0
    if height == 0 or not foreground.any():
        return [0.0, 0.0, 0.0, 0.0]
    first = starts[foreground]
    last = ends[foreground] - 1
    first_x, first_y = first // height, first % height
    last_x, last_y = last // height, last % height
    x0, x1 = int(first_x.min()), int(last_x.max())
    y0, y1 = int(first_y.min()), int(last_y.max())
    if (last_x > first_x).any():  # a run that wraps into the next column covers both ends of it
        y0, y1 = 0, height - 1
    return [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)]
