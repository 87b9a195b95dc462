"""Detail each object: which objects a generated image holds, and how each one is inpainted.

Host-independent: a caption becomes GroundingDINO boxes and SAM masks (one batched decode), the
objects are filtered by area, bounded, ordered, and each gets its own inpaint mask (expanded,
feathered), crop, processing size, prompt and seed. compat/detailer.py turns each plan into one
img2img "only masked" pass inside the WebUI.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from sd_webui_sam import images, masks
from sd_webui_sam.text_prompt import detect_boxes, most_confident, no_boxes_message, segment_boxes
from sd_webui_sam.prompts import check_caption
from sd_webui_sam.detail_settings import ORDERS, SEED_RULES, SOURCES, DetailSettings
from sd_webui_sam.errors import SamUserError

#: Processing sizes are multiples of this (the latent is 1/8 of the picture).
SIZE_MULTIPLE = 8
MIN_SIDE = 64
SEPARATOR = re.compile(r"\s*\[SEP\]\s*")
MAIN_PROMPT = "[PROMPT]"

Box = Tuple[int, int, int, int]


@dataclass(frozen=True)
class FoundObject:
    box: Tuple[float, float, float, float]   # the detector's box, xyxy image pixels
    phrase: str
    score: float
    mask: np.ndarray                         # (H, W) bool, SAM's best mask for the box
    area_fraction: float


@dataclass
class FoundObjects:
    objects: List[FoundObject]               # in inpainting order
    notes: List[str] = field(default_factory=list)
    scaled_from: Optional[Tuple[int, int]] = None  # (width, height) of the panel's masks, when scaled


def _bounded(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


def find_objects(engine: Any, image: np.ndarray, settings: DetailSettings) -> FoundObjects:
    """The objects ``settings.caption`` names in ``image`` (H,W,3 uint8), filtered by area, the most
    confident ``max_objects`` of them, in the chosen order. Raises SamUserError for a missing model
    or an empty caption; nothing found is an empty list with a note saying why."""
    caption = check_caption(settings.caption)
    if not settings.sam_model:
        available = engine.list_models()
        if not available:
            raise SamUserError("Detail each object: no SAM model. Put one (e.g. sam_vit_b_01ec64.pth or "
                               "mobile_sam.pt) in models/sam and choose it in the section.")
        sam_model = available[0]
    else:
        sam_model = settings.sam_model
    detected = detect_boxes(engine, settings.dino_model or None, image, caption, settings.box_threshold,
                            settings.text_threshold)
    if not detected.boxes:
        return FoundObjects([], [no_boxes_message(caption, settings.box_threshold)])
    objects = segment_boxes(engine, sam_model, image, [box.box for box in detected.boxes]).best_per_object()
    height, width = image.shape[:2]
    found = [FoundObject(box=box.box, phrase=box.phrase, score=box.score, mask=mask,
                         area_fraction=float(mask.sum()) / float(height * width))
             for box, mask in zip(detected.boxes, objects.masks[:, 0])]
    notes = [detected.dropped_note()] if detected.dropped else []
    return select_objects(found, settings, notes, nothing=f"nothing found for '{caption}'.")


def select_objects(found: Sequence[FoundObject], settings: DetailSettings, notes: List[str], *,
                   nothing: str) -> FoundObjects:
    """``found`` filtered by 'min/max area', the most confident 'max objects' of them, in the chosen
    order; ``notes`` gains what was left out and why (``nothing`` when nothing was there at all)."""
    low, high = _bounded(settings.min_area, 0.0, 1.0), _bounded(settings.max_area, 0.0, 1.0)
    kept: List[FoundObject] = []
    too_small, too_large = [], []
    for obj in found:
        if not obj.mask.any() or obj.area_fraction < low:
            too_small.append(obj)
        elif obj.area_fraction > high:
            too_large.append(obj)
        else:
            kept.append(obj)
    notes = list(notes)
    if too_small:
        notes.append(f"{len(too_small)} object(s) too small to inpaint ("
                     + ", ".join(f"'{o.phrase}' {o.area_fraction:.4f}" for o in too_small)
                     + f" of the image, min area {low:g}); lower 'min area' to include them.")
    if too_large:
        notes.append(f"{len(too_large)} object(s) larger than 'max area' {high:g} left out.")
    kept, dropped = most_confident(kept, settings.max_objects)
    if dropped:
        notes.append(f"{dropped} less confident object(s) left out by 'max objects' ({settings.max_objects}).")
    if not kept and not too_small and not too_large:
        notes.append(nothing)
    return FoundObjects(order_objects(kept, settings.order), notes)


#: Aspect ratios closer than this (relative) count as the same shape: a panel mask is then scaled.
ASPECT_TOLERANCE = 0.01
NO_PANEL_MASK = ("'Objects' is 'the panel's masks' but the Segment Anything panel has no mask in this tab: upload "
                 "the picture there, click or box each object (one box per object) and press Preview; through the "
                 "API send 'panel_masks', a list of base64 PNG masks.")


def read_panel_masks(value: Any) -> List[np.ndarray]:
    """The panel's masks as bool (H, W) arrays: from the section's hidden box (a JSON list), or the
    API (a list, or one string) of base64 PNGs / data URLs; PIL images and arrays are taken as they are."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except ValueError:
            raise SamUserError("The panel's masks are not a readable JSON list.") from None
    items = value if isinstance(value, (list, tuple)) else [value]
    read: List[np.ndarray] = []
    for number, item in enumerate(items, start=1):
        if isinstance(item, np.ndarray) and item.ndim == 2:
            read.append(masks.as_mask(item))
            continue
        try:  # base64 / data URL / PIL, within the image size limits, transparency kept
            rgba = Image.fromarray(images.load_image_rgba(item), "RGBA")
        except SamUserError as error:
            raise SamUserError(f"panel mask {number}: {error}") from None
        read.append(np.asarray(images.mask_grey(rgba)) > 127)
    return read


def panel_objects(panel_masks: Sequence[np.ndarray], image_size: Tuple[int, int],
                  settings: DetailSettings) -> FoundObjects:
    """The panel's masks as the objects of an image of ``image_size`` (width, height): scaled when the
    image is larger or smaller but of the same shape (a note says so), refused when its shape differs."""
    if not panel_masks:
        raise SamUserError(NO_PANEL_MASK)
    width, height = image_size
    notes: List[str] = []
    found: List[FoundObject] = []
    scaled_from: Optional[Tuple[int, int]] = None
    for index, mask in enumerate(panel_masks):
        mask_height, mask_width = mask.shape[:2]
        if (mask_width, mask_height) != (width, height):
            aspect, wanted = mask_width / mask_height, width / height
            if abs(aspect - wanted) > ASPECT_TOLERANCE * wanted:
                raise SamUserError(f"the panel's masks are {mask_width}x{mask_height} but the generated image is "
                                   f"{width}x{height}, another shape: generate at the panel picture's aspect "
                                   "ratio, or make the masks on a picture of this one's.")
            if scaled_from is None:
                scaled_from = (mask_width, mask_height)
                notes.append(f"the panel's masks ({mask_width}x{mask_height}) were scaled to the generated image "
                             f"({width}x{height}).")
            grey = Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.BILINEAR)
            mask = np.asarray(grey) >= 128
        box = masks.mask_to_box(mask) or (0, 0, 0, 0)
        found.append(FoundObject(box=tuple(float(edge) for edge in box), phrase=f"panel object {index + 1}",
                                 score=1.0, mask=mask, area_fraction=float(mask.sum()) / float(width * height)))
    selected = select_objects(found, settings, notes, nothing="the panel's masks are empty.")
    selected.scaled_from = scaled_from
    return selected


def objects_to_detail(engine: Any, image: Image.Image, settings: DetailSettings) -> FoundObjects:
    """The objects of one generated image, from the source the settings name."""
    if settings.source == SOURCES[1]:
        return panel_objects(read_panel_masks(settings.panel_masks), image.size, settings)
    return find_objects(engine, np.asarray(image.convert("RGB")), settings)


def order_objects(objects: Sequence[FoundObject], order: str) -> List[FoundObject]:
    """Left to right (by the box's left edge, then top), largest mask first, or most confident first."""
    if order == ORDERS[1]:
        return sorted(objects, key=lambda o: -o.area_fraction)
    if order == ORDERS[2]:
        return sorted(objects, key=lambda o: -o.score)
    return sorted(objects, key=lambda o: (o.box[0], o.box[1]))


def object_prompts(template: str, main_prompt: str, count: int) -> List[str]:
    """Each object's prompt: ``template`` split at ``[SEP]``, part i for the i-th object (the last part
    for objects past the end); an empty part is the generation's prompt; ``[PROMPT]`` inserts it."""
    parts = SEPARATOR.split(template or "")
    resolved = [part.replace(MAIN_PROMPT, main_prompt) if part.strip() else main_prompt for part in parts]
    return [resolved[min(index, len(resolved) - 1)] for index in range(count)]


def object_seed(image_seed: int, index: int, rule: str) -> int:
    return int(image_seed) + index if rule == SEED_RULES[1] else int(image_seed)


def inpaint_mask(mask: np.ndarray, settings: DetailSettings) -> Image.Image:
    """The object's mask for its pass (L, 255 = repaint): expanded or shrunk, then feathered."""
    grown = masks.expand(mask, settings.mask_expand) if settings.mask_expand else masks.as_mask(mask)
    if settings.mask_feather > 0:
        alpha = masks.feather(grown, settings.mask_feather)
        return Image.fromarray(np.round(alpha * 255.0).astype(np.uint8), mode="L")
    return Image.fromarray(grown.astype(np.uint8) * 255, mode="L")


def crop_box(mask: Image.Image, padding: int) -> Optional[Box]:
    """The repainted area plus ``padding`` on every side, inside the image (None: nothing to repaint)."""
    box = mask.getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    pad = max(0, int(padding))
    return max(0, x1 - pad), max(0, y1 - pad), min(mask.width, x2 + pad), min(mask.height, y2 + pad)


def processing_size(crop: Box, resolution: int) -> Tuple[int, int]:
    """(width, height) the crop is inpainted at: its long side ``resolution``, its aspect kept, both
    sides multiples of 8 and at least 64 (the host then widens the crop to exactly this aspect)."""
    x1, y1, x2, y2 = crop
    width, height = max(1, x2 - x1), max(1, y2 - y1)
    scale = float(resolution) / float(max(width, height))

    def side(length: int) -> int:
        return max(MIN_SIDE, int(round(length * scale / SIZE_MULTIPLE)) * SIZE_MULTIPLE)

    return side(width), side(height)


@dataclass(frozen=True)
class PassPlan:
    index: int                 # 0-based, the object's place in the order
    phrase: str
    mask: Image.Image          # L, full image size
    crop: Box
    width: int
    height: int
    prompt: str
    negative_prompt: str
    seed: int


def plan_passes(found: Sequence[FoundObject], settings: DetailSettings, *, prompt: str, negative_prompt: str,
                seed: int) -> Tuple[List[PassPlan], List[str]]:
    """One plan per object that still has pixels to repaint after shrinking; notes for the others."""
    prompts = object_prompts(settings.prompt, prompt, len(found))
    negatives = object_prompts(settings.negative_prompt, negative_prompt, len(found))
    plans: List[PassPlan] = []
    notes: List[str] = []
    for index, obj in enumerate(found):
        mask = inpaint_mask(obj.mask, settings)
        crop = crop_box(mask, settings.padding)
        if crop is None:
            notes.append(f"object {index + 1} ('{obj.phrase}') is too small to inpaint: nothing is left after "
                         f"shrinking its mask by {-settings.mask_expand} px.")
            continue
        width, height = processing_size(crop, settings.resolution)
        plans.append(PassPlan(index=index, phrase=obj.phrase, mask=mask, crop=crop, width=width, height=height,
                              prompt=prompts[index], negative_prompt=negatives[index],
                              seed=object_seed(seed, index, settings.seed_rule)))
    return plans, notes
