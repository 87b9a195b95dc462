"""Text prompt -> boxes -> masks: GroundingDINO's boxes clipped to the image, bounded, then one
batched SAM decode of them.

The panel's text prompt, "cut out after generation" (:mod:`sd_webui_sam.cutout`), the HTTP API
and batch all go through here, so a box means the same thing everywhere. There is one detection
type, :class:`Detection`, which the detector itself returns.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple

import numpy as np

from local_groundingdino.detector import Detection
from sd_webui_sam.predictor import Prediction
from sd_webui_sam.prompts import Box, Prompts, check_caption

if TYPE_CHECKING:  # the engine imports nothing from here; only the annotation needs it
    from sd_webui_sam.engine import Engine

__all__ = ["Detection", "DetectedBoxes", "find_boxes", "detect_boxes", "most_confident", "no_boxes_message",
           "segment_boxes"]


def clip_to_image(detection: Detection, shape: Tuple[int, int]) -> Detection:
    """``detection`` with its box clamped to an image of ``shape`` (height, width); GroundingDINO
    boxes can stick out of the picture, SAM wants them inside."""
    height, width = shape
    x1, y1, x2, y2 = (float(v) for v in detection.box)
    x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
    y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
    return dataclasses.replace(detection, box=(x1, y1, x2, y2), phrase=str(detection.phrase), score=float(detection.score))


def find_boxes(engine: "Engine", image: np.ndarray, caption: str, *, detector: Optional[str], box_threshold: float,
               text_threshold: float = 0.25, like_reference: bool = False) -> List[Detection]:
    """What ``caption`` names in ``image``, boxes clipped to the image, best first.

    like_reference: the reference extension's boxes, order and phrase strings (see
    ``Detector.detect``); a box lying wholly outside the image is then kept (clamped to an edge,
    :attr:`Detection.has_area` false) so that box indices stay the reference's; otherwise it is
    dropped.
    """
    found = engine.detect(detector, image, check_caption(caption), float(box_threshold), float(text_threshold),
                          like_reference=like_reference)
    clipped = [clip_to_image(detection, image.shape[:2]) for detection in found]
    if like_reference:
        return clipped
    kept = [detection for detection in clipped if detection.has_area]
    kept.sort(key=lambda detection: -detection.score)  # stable: equal scores keep the detector's order
    return kept


def most_confident(found: Sequence[Any], limit: int) -> Tuple[List[Any], int]:
    """(the ``limit`` highest-scoring of ``found``, in their given order; how many were left out).

    Every text prompt that leads to SAM is bounded this way: a low box threshold can let hundreds
    of boxes through, and each one costs a decode and full-size masks."""
    limit = max(1, int(limit))
    if len(found) <= limit:
        return list(found), 0
    ranked = sorted(range(len(found)), key=lambda index: -float(found[index].score))  # stable on ties
    keep = set(ranked[:limit])
    return [item for index, item in enumerate(found) if index in keep], len(found) - limit


@dataclass(frozen=True)
class DetectedBoxes:
    boxes: List[Detection]   # best first, at most the engine's ``max_objects``
    dropped: int             # boxes found beyond that bound, least confident

    def dropped_note(self) -> str:
        if not self.dropped:
            return ""
        return (f"Kept the {len(self.boxes)} most confident boxes; {self.dropped} more were left out "
                f"(the 'max objects' setting). Raise the box threshold to find fewer.")


def detect_boxes(engine: "Engine", detector: Optional[str], image: np.ndarray, caption: str, box_threshold: float,
                 text_threshold: float) -> DetectedBoxes:
    """:func:`find_boxes`, bounded by the engine's ``max_objects`` (the rest counted in ``dropped``)."""
    found = find_boxes(engine, image, caption, detector=detector, box_threshold=box_threshold,
                       text_threshold=text_threshold)
    kept, dropped = most_confident(found, engine.settings.max_objects)
    return DetectedBoxes(boxes=kept, dropped=dropped)


def no_boxes_message(caption: str, box_threshold: float) -> str:
    lower = max(0.0, round(float(box_threshold) - 0.1, 2))
    return (f"GroundingDINO found no boxes for '{caption}' at box threshold {float(box_threshold):.2f}. "
            f"Lower the box threshold (e.g. {lower:.2f}) or describe the object differently.")


def segment_boxes(engine: "Engine", sam_model: str, image: np.ndarray, boxes: Sequence[Box],
                  points: Sequence[Tuple[float, float]] = (), labels: Sequence[int] = (), *,
                  multimask_output: bool = True) -> Prediction:
    """Every box (and the points, which refine the box holding them) in one batched decode."""
    prompts = Prompts(points=list(points), labels=list(labels), boxes=[tuple(b) for b in boxes])
    return engine.segment(sam_model, image, prompts, multimask_output=multimask_output)
