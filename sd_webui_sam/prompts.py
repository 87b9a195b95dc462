"""Prompts: what a user may ask SAM and GroundingDINO for, checked and parsed in one place.

Every entry point (the panel, the text prompt, the HTTP API, batch, the predictor itself)
validates points, labels, boxes, captions and previous masks with these functions, so the same
input gets the same answer and the same message everywhere.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from sd_webui_sam.errors import InvalidPromptError

Box = Tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels

MAX_POINTS = 1024
MAX_BOXES = 100
MAX_CAPTION_CHARS = 1000
#: A box narrower or lower than this (pixels), once clipped to the image, has nothing to segment.
MIN_BOX_SIDE = 1.0
#: SAM's mask logits (and a previous mask given back to it) are a quarter of the 1024 input side.
LOW_RES_SIDE = 256
#: Logit magnitude given to a binary previous mask: confidently inside / outside, like the
#: logits SAM itself produces for a clear mask.
PREVIOUS_MASK_LOGIT = 10.0


@dataclass
class Prompts:
    points: Sequence[Tuple[float, float]] = ()  # image pixels (x, y)
    labels: Sequence[int] = ()  # 1 positive, 0 negative
    boxes: Sequence[Box] = ()  # xyxy, image pixels
    mask_input: Optional[np.ndarray] = None  # (256, 256) low-res logits from a previous call


# -- single values ----------------------------------------------------------------------------


def check_caption(caption: Any) -> str:
    """The caption, stripped, or a message that says what to type (never a silent run on '.')."""
    text = caption.strip() if isinstance(caption, str) else ""
    if not text.strip(" .,;\t\n"):
        raise InvalidPromptError("The text prompt is empty. Type what to find, e.g. 'hand, face'.")
    if len(text) > MAX_CAPTION_CHARS:
        raise InvalidPromptError(f"The text prompt is longer than {MAX_CAPTION_CHARS} characters.")
    return text


def check_threshold(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidPromptError(f"{name} must be a number between 0 and 1.") from None
    if not np.isfinite(number) or not 0.0 <= number <= 1.0:
        raise InvalidPromptError(f"{name} must be between 0 and 1.")
    return number


def clip_box(box: Sequence[float], shape: Tuple[int, int]) -> Box:
    """``box`` with its corners sorted and clamped to an (H, W) image."""
    height, width = shape
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = sorted((min(max(x0, 0.0), width), min(max(x1, 0.0), width)))
    y0, y1 = sorted((min(max(y0, 0.0), height), min(max(y1, 0.0), height)))
    return x0, y0, x1, y1


def has_area(box: Sequence[float]) -> bool:
    """False for a (clipped) box flattened to a line: it lay outside the picture, nothing to segment."""
    return box[2] - box[0] >= MIN_BOX_SIDE and box[3] - box[1] >= MIN_BOX_SIDE


# -- lists ------------------------------------------------------------------------------------


def finite_tuples(values: Any, *, width: int, name: str) -> List[tuple]:
    """A list of fixed-width number lists (points or boxes), checked for length and finiteness."""
    if not isinstance(values, (list, tuple)):
        raise InvalidPromptError(f"{name} must be a list.")
    out = []
    for index, item in enumerate(values):
        if not isinstance(item, (list, tuple)) or len(item) != width:
            raise InvalidPromptError(f"{name}[{index}] must have {width} numbers.")
        try:
            numbers = [float(v) for v in item]
        except (TypeError, ValueError):
            raise InvalidPromptError(f"{name}[{index}] must have {width} numbers.") from None
        if not all(np.isfinite(numbers)):
            raise InvalidPromptError(f"{name}[{index}] contains NaN or infinity.")
        out.append(tuple(numbers))
    return out


def check_points(points: Any, shape: Tuple[int, int], name: Optional[str] = "points") -> List[Tuple[float, float]]:
    """Points inside an (H, W) image (the far edge counts); ``name`` says which field, None for the panel."""
    height, width = shape
    checked = finite_tuples(list(points) if isinstance(points, tuple) else points, width=2, name=name or "points")
    if len(checked) > MAX_POINTS:
        raise InvalidPromptError(f"At most {MAX_POINTS} points per request.")
    for index, (x, y) in enumerate(checked):
        if not (0 <= x <= width and 0 <= y <= height):
            where = f"{name}[{index}] = " if name else "Point "
            raise InvalidPromptError(f"{where}({x:g}, {y:g}) lies outside the {width}x{height} image.")
    return checked


def check_labels(labels: Optional[Sequence[Any]], count: int) -> List[int]:
    """One label per point, 1 (positive) or 0 (negative); none given means all positive."""
    if not labels:
        return [1] * count
    if len(labels) != count:
        raise InvalidPromptError(f"{count} points but {len(labels)} labels; give one label per point.")
    if any(label not in (0, 1) for label in labels):
        raise InvalidPromptError("Labels must be 1 (positive) or 0 (negative).")
    return [int(label) for label in labels]


def check_boxes(boxes: Any, shape: Tuple[int, int], name: Optional[str] = "boxes") -> List[Box]:
    """Boxes clipped to an (H, W) image; a box with no area inside it is an error."""
    height, width = shape
    checked = finite_tuples(list(boxes) if isinstance(boxes, tuple) else boxes, width=4, name=name or "boxes")
    if len(checked) > MAX_BOXES:
        raise InvalidPromptError(f"At most {MAX_BOXES} boxes per request.")
    clipped = [clip_box(box, shape) for box in checked]
    for index, box in enumerate(clipped):
        if not has_area(box):
            where = f"{name}[{index}]" if name else f"Box {index + 1}"
            raise InvalidPromptError(f"{where} has no area inside the {width}x{height} image.")
    return clipped


def mask_to_low_res_logits(mask: np.ndarray, side: int = LOW_RES_SIDE) -> np.ndarray:
    """A full-size bool mask in the model's low-res prompt frame (longest side = ``side``, padded)."""
    height, width = mask.shape
    scale = side / max(height, width)
    new_w, new_h = max(1, int(width * scale + 0.5)), max(1, int(height * scale + 0.5))
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((new_w, new_h), Image.BILINEAR)
    logits = np.full((side, side), -PREVIOUS_MASK_LOGIT, dtype=np.float32)
    logits[:new_h, :new_w] = np.where(np.asarray(resized) >= 128, PREVIOUS_MASK_LOGIT, -PREVIOUS_MASK_LOGIT)
    return logits


# -- the panel's prompt JSON ------------------------------------------------------------------


@dataclass(frozen=True)
class PanelPrompts:
    points: List[Tuple[float, float]]
    labels: List[int]
    boxes: List[Box]


def read_panel_prompts(text: Optional[str], shape: Tuple[int, int]) -> PanelPrompts:
    """The panel's prompt JSON (``{"points": [[x, y, label]], "boxes": [[x0, y0, x1, y1]], "width", "height"}``),
    checked against the (H, W) picture the prompts are for. Nothing is required here: the caller
    says what it needs (points or boxes for a click, nothing for a text prompt)."""
    height, width = shape
    try:
        data = json.loads(text) if text else {}
        if not isinstance(data, dict):
            raise TypeError(type(data).__name__)
        entries = data.get("points") or []
        drawn = data.get("boxes") or []
        placed_on = (int(data.get("height") or 0), int(data.get("width") or 0))
        points = [(entry[0], entry[1]) for entry in entries]
        labels = [1 if int(entry[2]) == 1 else 0 for entry in entries]
        boxes = [tuple(entry[:4]) for entry in drawn]
    except (TypeError, ValueError, IndexError, KeyError) as error:
        raise InvalidPromptError("The prompts could not be read; click on the image again.") from error
    if (points or boxes) and placed_on not in ((0, 0), (height, width)):
        raise InvalidPromptError(
            f"The prompts were placed on a {placed_on[1]}x{placed_on[0]} picture but the image is {width}x{height}; "
            "clear them and click again."
        )
    return PanelPrompts(points=check_points(points, shape, name=None), labels=labels,
                        boxes=check_boxes(boxes, shape, name=None))


# -- the predictor's check ---------------------------------------------------------------------


@dataclass(frozen=True)
class CheckedPrompts:
    points: np.ndarray  # (N, 2) float64
    labels: np.ndarray  # (N,) int64
    boxes: np.ndarray  # (M, 4) float64, clipped to the image
    mask_input: Optional[np.ndarray]  # (1 or K, 256, 256) float32


def check_prompts(prompts: Prompts, original_size: Tuple[int, int], low_res_side: int = LOW_RES_SIDE) -> CheckedPrompts:
    """Validate prompts against an (H, W) image; raises :class:`InvalidPromptError`.

    Points must lie inside the image (0 <= x <= W, 0 <= y <= H; coordinates are continuous, so
    the far edge counts): a point outside almost always means the prompts were placed on an
    image of another size, and silently moving it would segment the wrong thing. Boxes, often
    dragged past an edge or proposed by a detector, are clipped to the image; a box with no
    area inside the image (see :func:`has_area`) is refused. Corners given in any order are sorted.
    """
    height, width = original_size
    try:
        points = np.asarray(() if prompts.points is None else prompts.points, dtype=np.float64)
        labels = np.asarray(() if prompts.labels is None else prompts.labels, dtype=np.float64)
        boxes = np.asarray(() if prompts.boxes is None else prompts.boxes, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InvalidPromptError(f"Prompts must be numbers: points as (x, y), boxes as (x0, y0, x1, y1) ({error}).") from error
    if points.size == 0:
        points = np.zeros((0, 2))
    elif points.ndim != 2 or points.shape[1] != 2:
        raise InvalidPromptError("Each point must be an (x, y) pair.")
    labels = labels.reshape(-1)
    if len(labels) != len(points):
        raise InvalidPromptError(
            f"Got {len(points)} point(s) but {len(labels)} label(s); give one label per point (1 positive, 0 negative)."
        )
    if not np.all(np.isfinite(points)) or not np.all(np.isfinite(labels)):
        raise InvalidPromptError("A point coordinate or label is not a finite number (NaN or infinity); remove that point.")
    if not np.all(np.isin(labels, (0, 1))):
        raise InvalidPromptError("Point labels must be 1 (positive) or 0 (negative).")
    outside = (points[:, 0] < 0) | (points[:, 0] > width) | (points[:, 1] < 0) | (points[:, 1] > height)
    if np.any(outside):
        x, y = points[np.argmax(outside)]
        raise InvalidPromptError(
            f"Point ({x:g}, {y:g}) lies outside the {width}x{height} image; "
            "the prompts were probably placed on a differently sized image. Place them again."
        )
    if boxes.size % 4:
        raise InvalidPromptError("Each box must be four numbers: x0, y0, x1, y1.")
    boxes = boxes.reshape(-1, 4)
    if not np.all(np.isfinite(boxes)):
        raise InvalidPromptError("A box coordinate is not a finite number (NaN or infinity); remove that box.")
    boxes = np.array([clip_box(box, original_size) for box in boxes], dtype=np.float64).reshape(-1, 4)
    for index, box in enumerate(boxes):
        if not has_area(box):
            raise InvalidPromptError(
                f"Box {index + 1} has no area inside the {width}x{height} image; draw it on the image."
            )
    mask_input = None
    if prompts.mask_input is not None:
        mask_input = np.asarray(prompts.mask_input, dtype=np.float32)
        if mask_input.ndim == 2:
            mask_input = mask_input[None]
        if mask_input.ndim == 4 and mask_input.shape[1] == 1:
            mask_input = mask_input[:, 0]
        if mask_input.ndim != 3 or mask_input.shape[1:] != (low_res_side, low_res_side):
            raise InvalidPromptError(
                f"The previous mask must be the {low_res_side}x{low_res_side} low-res logits of an earlier prediction, "
                f"got shape {tuple(np.shape(prompts.mask_input))}."
            )
        if not np.all(np.isfinite(mask_input)):
            raise InvalidPromptError("The previous mask holds NaN or infinite values; run the prediction again without it.")
    if len(points) == 0 and len(boxes) == 0 and mask_input is None:
        raise InvalidPromptError("No prompt given: click at least one point or draw a box.")
    return CheckedPrompts(points=points, labels=labels.astype(np.int64), boxes=boxes, mask_input=mask_input)
