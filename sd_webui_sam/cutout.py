"""Text prompt -> cut-out: the objects a caption names, each object's best mask, merged, as an
RGBA cut-out and a mask picture.

"Cut out after generation" runs it on every generated image and saves both beside it; the
detection and the decode are :mod:`sd_webui_sam.text_prompt`'s. Nothing here knows about gradio
or the WebUI.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional

import numpy as np
from PIL import Image

from sd_webui_sam import matting, render
from sd_webui_sam.text_prompt import Detection, detect_boxes, segment_boxes

if TYPE_CHECKING:  # the engine imports nothing from here; only the annotation needs it
    from sd_webui_sam.engine import Engine

__all__ = ["CutoutResult", "text_cutout"]


@dataclass(frozen=True)
class CutoutResult:
    mask: np.ndarray           # (H, W) bool, every found object
    cutout: Image.Image        # RGBA, transparent outside the mask
    mask_image: Image.Image    # L, 255 = object
    boxes: List[Detection]
    dropped: int = 0           # boxes left out by the engine's max_objects


def text_cutout(engine: "Engine", image: np.ndarray, caption: str, *, sam_model: str, detector: Optional[str] = None,
                box_threshold: float = 0.3, text_threshold: float = 0.25, alpha: str = "hard",
                alpha_band: float = 0) -> Optional[CutoutResult]:
    """Cut out everything ``caption`` names in ``image``; None when GroundingDINO finds nothing.
    ``alpha="soft"``: the cut-out gets soft edges (sd_webui_sam.matting); the mask stays binary."""
    detected = detect_boxes(engine, detector, image, caption, box_threshold, text_threshold)
    if not detected.boxes:
        return None
    prediction = segment_boxes(engine, sam_model, image, [b.box for b in detected.boxes])
    mask = prediction.best_per_object().merged().masks[0, 0]
    return CutoutResult(mask=mask, cutout=matting.cutout(image, mask, alpha, alpha_band), mask_image=render.mask_image(mask),
                        boxes=detected.boxes, dropped=detected.dropped)
