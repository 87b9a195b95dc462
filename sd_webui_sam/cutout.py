"""Text prompt -> cut-out: GroundingDINO boxes, one batched SAM decode, the objects' best masks.

Used by the panel's text prompt (per object or merged) and by "cut out after generation",
which runs it on every generated image and saves the RGBA cut-out and the mask beside it.
Nothing here knows about gradio or the WebUI.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from sd_webui_sam.prompts import MIN_BOX_SIDE, check_caption



@dataclass(frozen=True)
class TextBox:
    box: Tuple[float, float, float, float]   # xyxy, image pixels, inside the image
    phrase: str
    score: float


@dataclass(frozen=True)
class ObjectMasks:
    masks: np.ndarray                  # (K, H, W) bool: each object's best candidate
    scores: np.ndarray                 # (K,) float32 predicted IoU of that candidate
    boxes: List[Optional[Tuple[float, float, float, float]]]   # the prompt box of each object (None: points only)

    def merged(self) -> np.ndarray:
        return self.masks.any(axis=0) if len(self.masks) else np.zeros(self.masks.shape[1:], dtype=bool)


@dataclass(frozen=True)
class CutoutResult:
    mask: np.ndarray           # (H, W) bool, every found object
    cutout: Image.Image        # RGBA, transparent outside the mask
    mask_image: Image.Image    # L, 255 = object
    boxes: List[TextBox]
    dropped: int = 0           # boxes left out by the engine's max_objects


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
    boxes: List[TextBox]   # best first, at most the engine's ``max_objects``
    dropped: int           # boxes found beyond that bound, least confident

    def dropped_note(self) -> str:
        if not self.dropped:
            return ""
        return (f"Kept the {len(self.boxes)} most confident boxes; {self.dropped} more were left out "
                f"(the 'max objects' setting). Raise the box threshold to find fewer.")


def detect_boxes(engine: Any, detector: Optional[str], image: np.ndarray, caption: str, box_threshold: float,
                 text_threshold: float) -> DetectedBoxes:
    """GroundingDINO boxes clipped to the image, best first; boxes with no area left are dropped,
    and so are those past the engine's ``max_objects`` (counted in ``dropped``)."""
    height, width = image.shape[:2]
    found = []
    for detection in engine.detect(detector, image, check_caption(caption), float(box_threshold), float(text_threshold)):
        x1, y1, x2, y2 = (float(v) for v in detection.box_xyxy)
        x1, x2 = sorted((min(max(x1, 0.0), width), min(max(x2, 0.0), width)))
        y1, y2 = sorted((min(max(y1, 0.0), height), min(max(y2, 0.0), height)))
        if x2 - x1 < MIN_BOX_SIDE or y2 - y1 < MIN_BOX_SIDE:
            continue
        found.append(TextBox((x1, y1, x2, y2), str(detection.phrase), float(detection.score)))
    found.sort(key=lambda box: -box.score)  # stable: equal scores keep the detector's order
    kept, dropped = most_confident(found, engine.settings.max_objects)
    return DetectedBoxes(boxes=kept, dropped=dropped)


def no_boxes_message(caption: str, box_threshold: float) -> str:
    lower = max(0.0, round(float(box_threshold) - 0.1, 2))
    return (f"GroundingDINO found no boxes for '{caption}' at box threshold {float(box_threshold):.2f}. "
            f"Lower the box threshold (e.g. {lower:.2f}) or describe the object differently.")


def best_masks(prediction: Any) -> ObjectMasks:
    """Each object's highest-scoring candidate."""
    masks = np.asarray(prediction.masks, dtype=bool)
    scores = np.asarray(prediction.scores, dtype=np.float32)
    if masks.ndim == 3:
        masks, scores = masks[None], scores[None]
    best = scores.argmax(axis=1)
    picks = np.arange(masks.shape[0])
    boxes = list(getattr(prediction, "object_boxes", None) or [None] * masks.shape[0])
    return ObjectMasks(masks=masks[picks, best], scores=scores[picks, best], boxes=boxes)


def segment_boxes(engine: Any, sam_model: str, image: np.ndarray, boxes: Sequence[Tuple[float, float, float, float]],
                  points: Sequence[Tuple[float, float]] = (), labels: Sequence[int] = (), *,
                  multimask_output: bool = True):
    """Every box (and the points, which refine the box holding them) in one batched decode."""
    from sd_webui_sam.predictor import Prompts

    prompts = Prompts(points=list(points), labels=list(labels), boxes=[tuple(b) for b in boxes])
    return engine.segment(sam_model, image, prompts, multimask_output=multimask_output)


def text_cutout(engine: Any, image: np.ndarray, caption: str, *, sam_model: str, detector: Optional[str] = None,
                box_threshold: float = 0.3, text_threshold: float = 0.25, alpha: str = "hard",
                alpha_band: float = 0) -> Optional[CutoutResult]:
    """Cut out everything ``caption`` names in ``image``; None when GroundingDINO finds nothing.
    ``alpha="soft"``: the cut-out gets soft edges (sd_webui_sam.matting); the mask stays binary."""
    from sd_webui_sam import matting, render

    detected = detect_boxes(engine, detector, image, caption, box_threshold, text_threshold)
    if not detected.boxes:
        return None
    objects = best_masks(segment_boxes(engine, sam_model, image, [b.box for b in detected.boxes]))
    mask = objects.merged()
    return CutoutResult(mask=mask, cutout=matting.cutout(image, mask, alpha, alpha_band), mask_image=render.mask_image(mask),
                        boxes=detected.boxes, dropped=detected.dropped)
