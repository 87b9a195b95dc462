"""AutoSAM behind the reference routes ``/sam/controlnet-seg`` and ``/sam/category-mask``.

``sd_webui_sam.api.operations.SamApi.autosam`` decodes the request and calls these with the
Engine, the input image (H,W,3 uint8) and the two request bodies as plain dicts. Answers use
the reference's keys; images are bare base64 PNGs, at the input image's resolution (the
reference answered at the preprocessor's). Failures raise SamUserError subclasses, which the
route turns into 4xx answers with a message (the reference answered 500 on several of them).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import numpy as np
from PIL import Image

from sd_webui_sam import images, render, rle
from sd_webui_sam.autosam import pipelines, semantic
from sd_webui_sam.autosam.generator import AutoSamConfig
from sd_webui_sam.autosam.segmenters import (
    PROCESSORS,
    PreprocessorFinder,
    SemanticSegmenter,
    UploadedMapSegmenter,
    get_segmenter,
    no_host_preprocessors,
    pixel_perfect_resolution,
)
from sd_webui_sam.engine import Engine
from sd_webui_sam.errors import InvalidImageError, InvalidPromptError

RANDOM = "random"


def _png(array: np.ndarray) -> str:
    return images.array_png_base64(array)


def autosam_config(values: Optional[Mapping[str, Any]]) -> AutoSamConfig:
    """The generator settings of a request ({} = the reference defaults)."""
    return AutoSamConfig.from_mapping(dict(values or {}))


def _model(engine: Engine, payload: Mapping[str, Any]) -> str:
    return engine.resolve_model(payload.get("sam_model_name"))


def resolution(image: np.ndarray, payload: Mapping[str, Any]) -> int:
    """The preprocessor resolution: processor_res, or the pixel-perfect one from the target size."""
    if payload.get("pixel_perfect"):
        target_w, target_h = payload.get("target_W"), payload.get("target_H")
        if not target_w or not target_h or int(target_w) < 1 or int(target_h) < 1:
            raise InvalidPromptError("pixel_perfect needs target_W and target_H (the generation's size), both positive.")
        mode = payload.get("resize_mode")
        return max(64, pixel_perfect_resolution(image.shape[:2], (int(target_h), int(target_w)), 1 if mode is None else int(mode)))
    value = int(payload.get("processor_res") or 512)
    if not 64 <= value <= 4096:
        raise InvalidPromptError("processor_res must be between 64 and 4096.")
    return value


def segmenter_for(payload: Mapping[str, Any], image: np.ndarray,
                  find_preprocessor: PreprocessorFinder = no_host_preprocessors) -> SemanticSegmenter:
    """An uploaded colour-coded map when the request has one, else the host's preprocessor."""
    processor = str(payload.get("processor") or "seg_ofade20k")
    colour_map = payload.get("segmentation_map")
    if colour_map is not None:
        dataset = payload.get("segmentation_dataset") or (PROCESSORS[processor].dataset if processor in PROCESSORS else "ade20k")
        array = np.asarray(colour_map)
        if array.ndim != 3 or array.shape[2] < 3:
            raise InvalidImageError("segmentation_map must be a colour image (decoded by the route).")
        return UploadedMapSegmenter(np.ascontiguousarray(array[..., :3]), str(dataset))
    if processor not in PROCESSORS:
        raise InvalidPromptError(f"Unknown processor {processor!r}; use random, {', '.join(PROCESSORS)}.")
    return get_segmenter(processor, find_preprocessor)


def controlnet_seg(engine: Engine, image: np.ndarray, payload: Mapping[str, Any], autosam_conf: Mapping[str, Any],
                   find_preprocessor: PreprocessorFinder = no_host_preprocessors) -> Dict[str, Any]:
    processor = str(payload.get("processor") or "seg_ofade20k")
    config = autosam_config(autosam_conf)
    if processor == RANDOM:
        model = _model(engine, payload)
        result = pipelines.random_segmentation(engine, model, image, config, seed=int(payload.get("seed") or 0))
        segments = int(result.id_map.max())
        return {
            "msg": (f"Random segmentation with {segments} segments done. blended_images is the blend, random_seg the "
                    "colour map, edit_anything_control the Edit-Anything ControlNet input."),
            "blended_images": _png(result.blend),
            "random_seg": _png(result.colour_map),
            "edit_anything_control": _png(result.control_map),
        }
    segmenter = segmenter_for(payload, image, find_preprocessor)
    res = resolution(image, payload)
    model = _model(engine, payload)
    result = pipelines.semantic_segmentation(engine, model, image, segmenter, res, config)
    return {
        "msg": (f"{segmenter.label} semantic segmentation of {result.dataset.key} done. sem_presam is the segmentation "
                "before SAM, sem_postsam after SAM."),
        "sem_presam": _png(result.before_colour),
        "sem_postsam": _png(result.after_colour),
        "blended_presam": _png(result.before_blend),
        "blended_postsam": _png(result.after_blend),
    }


def category_mask(engine: Engine, image: np.ndarray, payload: Mapping[str, Any], autosam_conf: Mapping[str, Any],
                  find_preprocessor: PreprocessorFinder = no_host_preprocessors) -> Dict[str, Any]:
    if str(payload.get("processor") or "") == RANDOM:
        raise InvalidPromptError("Mask by category needs a semantic processor (seg_*), not 'random'.")
    config = autosam_config(autosam_conf)
    segmenter = segmenter_for(payload, image, find_preprocessor)
    # a typo in the categories fails before any model runs
    semantic.parse_categories(payload.get("category") or "", semantic.dataset(segmenter.dataset))
    res = resolution(image, payload)
    model = _model(engine, payload)
    result = pipelines.category_mask(engine, model, image, segmenter, res, payload.get("category") or "", config)
    names = ", ".join(result.semantic.dataset.short_names[i] for i in result.class_ids)
    return {
        "msg": f"Done: mask of {names} ({int(result.mask.sum())} pixels).",
        "blended_image": images.png_base64(render.reference_blend(image, result.mask, [])),
        "mask": images.bool_mask_png_base64(result.mask, one_bit=True),
        "masked_image": images.png_base64(render.cutout(image, result.mask)),
        # the reference's resized input matched its mask; ours is at the input's resolution
        "resized_input": images.png_base64(Image.fromarray(image)),
    }


def segment_everything(engine: Engine, model: str, image: np.ndarray, autosam_conf: Mapping[str, Any], *,
                       mask_format: str = "rle", max_masks: Optional[int] = None) -> Dict[str, Any]:
    """/sam/v2/segment-everything: one record per mask (largest first) with its area, box (xyxy),
    predicted IoU, stability, the grid point that found it, and the mask as RLE or PNG."""
    if mask_format not in ("rle", "png", "none"):
        raise InvalidPromptError("mask_format must be one of rle, png, none.")
    records = pipelines.segment_everything(engine, model, image, autosam_config(autosam_conf))
    records = sorted(records, key=lambda r: -int(r.area))
    total = len(records)
    if max_masks is not None:
        records = records[: int(max_masks)]
    out = []
    for record in records:
        x, y, w, h = (int(v) for v in record.bbox)
        item: Dict[str, Any] = {
            "area": int(record.area),
            "box": [x, y, x + w, y + h],
            "bbox": [x, y, w, h],
            "predicted_iou": round(float(record.predicted_iou), 6),
            "stability_score": round(float(record.stability_score), 6),
            "point": [float(record.point_coords[0]), float(record.point_coords[1])],
            "crop_box": [int(v) for v in record.crop_box],
        }
        if mask_format == "rle":
            item["mask"] = rle.encode(record.mask())
        elif mask_format == "png":
            item["mask"] = images.bool_mask_png_base64(record.mask())
        out.append(item)
    return {"width": int(image.shape[1]), "height": int(image.shape[0]), "model": model, "count": total,
            "masks": out, "msg": f"{total} masks."}


class AutoSamRoutes:
    """The AutoSAM routes' work with the host's segmenters: ``find_preprocessor`` is handed in by
    the WebUI adapter (compat.controlnet_preprocessors); outside a WebUI there are none."""

    def __init__(self, find_preprocessor: PreprocessorFinder = no_host_preprocessors) -> None:
        self.find_preprocessor = find_preprocessor

    def controlnet_seg(self, engine: Engine, image: np.ndarray, payload: Mapping[str, Any],
                       autosam_conf: Mapping[str, Any]) -> Dict[str, Any]:
        return controlnet_seg(engine, image, payload, autosam_conf, self.find_preprocessor)

    def category_mask(self, engine: Engine, image: np.ndarray, payload: Mapping[str, Any],
                      autosam_conf: Mapping[str, Any]) -> Dict[str, Any]:
        return category_mask(engine, image, payload, autosam_conf, self.find_preprocessor)
