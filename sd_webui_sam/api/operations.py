"""One method per route: validated request in, JSON-ready dict out (blocking; run in a worker thread)."""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Optional, Tuple

import numpy as np
import torch

from sd_webui_sam import batch as batch_module
from sd_webui_sam import images, matting, render, rle
from sd_webui_sam import masks as mask_ops
from sd_webui_sam.api import codec
from sd_webui_sam.api.codec import ForbiddenPathError
from sd_webui_sam.api.compat import model_to_dict
from sd_webui_sam.api.service import (
    ApiSettings,
    GpuGate,
    ImageStore,
    NotImplementedYetError,
    check_mask_budget,
    clock,
)
from sd_webui_sam.autosam import api_hooks
from sd_webui_sam.autosam.segmenters import PreprocessorFinder, no_host_preprocessors
from sd_webui_sam.engine import Engine, ManagedPredictor
from sd_webui_sam.errors import InvalidPromptError, SamUserError
from sd_webui_sam.predictor import Prediction
from sd_webui_sam.prompts import (
    Prompts,
    check_boxes,
    check_caption,
    check_labels,
    check_points,
    check_threshold,
    finite_tuples,
    mask_to_low_res_logits,
)
from sd_webui_sam.text_prompt import Detection, find_boxes, most_confident

MASK_FORMATS = ("png", "rle", "none")
#: The reference-compatible routes read a semi-transparent picture's raw colour channels.
REFERENCE_TRANSPARENCY = "ignore"


class SamApi:
    """The API's operations on one Engine; shared by the WebUI mount and the standalone server."""

    def __init__(self, engine: Engine, settings: Optional[ApiSettings] = None, *,
                 gpu_lock: Optional[ContextManager] = None,
                 autosam: Any = None,
                 metrics: Any = None,
                 find_preprocessor: PreprocessorFinder = no_host_preprocessors) -> None:
        self.engine = engine
        self.settings = settings or ApiSettings()
        self.images = ImageStore(self.settings.image_store_entries, self.settings.image_store_bytes)
        self._gpu_lock = gpu_lock
        self._gate = GpuGate(gpu_lock, self.settings.busy_timeout_s)
        self._autosam = autosam if autosam is not None else api_hooks.AutoSamRoutes(find_preprocessor)
        self.metrics = metrics

    # ---------------------------------------------------------------- helpers

    def gpu(self, what: str) -> ContextManager:
        """The host's GPU lock (A1111's queue_lock) around model work, if the host gave one,
        waited for at most ``settings.busy_timeout_s`` (then 503 naming ``what`` holds it)."""
        return self._gate.hold(what)

    @property
    def max_pixels(self) -> int:
        return self.engine.settings.max_image_pixels

    def read_image(self, text: Any, transparency: str = "white") -> np.ndarray:
        return codec.read_image_source(text, self.settings.source_policy, self.max_pixels, transparency)

    def image_from(self, image: Optional[str], image_id: Optional[str], transparency: str = "white"):
        if image is not None and image_id is not None:
            raise InvalidPromptError("Give either image or image_id, not both.")
        if image_id is not None:
            array = self.images.get(image_id)
            return image_id, array
        if image is None:
            raise InvalidPromptError("No image: send 'image' (base64) or an 'image_id' from /sam/v2/images.")
        array = self.read_image(image, transparency)
        return self.images.put(array), array

    def segment(self, model: ManagedPredictor, image: np.ndarray, prompts: Prompts, *, multimask: bool,
                options: Optional[dict] = None):
        objects = max(1, len(prompts.boxes) + (1 if len(prompts.points) else 0))
        check_mask_budget(objects, 3 if multimask else 1, image.shape[:2])
        with self.gpu("SAM segmentation"):
            # encode and decode as two steps (both serialised by the engine) so that the
            # metrics can tell the encoder's time from the decoder's
            start = clock()
            encoded = model.encode(image)
            encoded_at = clock()
            prediction = model.predict(encoded, prompts, multimask_output=multimask, options=options or {})
        if self.metrics is not None:
            self.metrics.observe_encode(encoded_at - start)
            self.metrics.observe_decode(clock() - encoded_at)
        return prediction

    def detect(self, image: np.ndarray, text: str, *, model: Optional[str], box_threshold: float, text_threshold: float = 0.25,
               like_reference: bool = False) -> List[Detection]:
        if model is not None and ("/" in model or "\\" in model or ".." in model):
            raise InvalidPromptError("GroundingDINO model names are names, not paths.")
        start = clock()
        with self.gpu("GroundingDINO detection"):
            detections = find_boxes(self.engine, image, text, detector=model, box_threshold=box_threshold,
                                    text_threshold=text_threshold, like_reference=like_reference)
        if self.metrics is not None:
            self.metrics.observe_detect(clock() - start)
        return detections

    # ---------------------------------------------------------------- reference routes

    def list_models(self) -> List[str]:
        """The usable models (the reference answers a plain list of names; files that are not
        models, with the reason, are listed by /sam/v2/models and /sam/v2/health)."""
        return self.engine.inventory(refresh=True)[0]

    def unusable_models(self, refresh: bool = False) -> List[Dict[str, str]]:
        return [{"name": name, "reason": why} for name, why in self.engine.inventory(refresh)[1]]

    def sam_predict(self, request) -> Dict[str, Any]:
        model = self.engine.model(request.sam_model_name)
        # the reference segments the raw colour channels of a semi-transparent picture
        image = self.read_image(request.input_image, REFERENCE_TRANSPARENCY)
        shape = image.shape[:2]
        positive = check_points(request.sam_positive_points, shape, "sam_positive_points")
        negative = check_points(request.sam_negative_points, shape, "sam_negative_points")
        boxes: List = []
        dropped = 0  # detections left out by max_objects
        dino_enabled = bool(request.dino_enabled) and request.dino_text_prompt is not None
        if dino_enabled:
            threshold = check_threshold(0.3 if request.dino_box_threshold is None else request.dino_box_threshold,
                                        "dino_box_threshold")
            detections = self.detect(image, request.dino_text_prompt, model=request.dino_model_name,
                                     box_threshold=threshold, like_reference=True)
            selection = request.dino_preview_boxes_selection
            if request.dino_preview_checkbox and selection is not None:
                keep = sorted({int(i) for i in selection if 0 <= int(i) < len(detections)})
                detections = [detections[i] for i in keep]
            # the reference's boxes may lie wholly outside the picture (clamped to a line here);
            # such a box has nothing for SAM to segment
            inside = [d for d in detections if d.has_area]
            kept, dropped = most_confident(inside, self.engine.settings.max_objects)
            boxes = [d.box for d in kept]
        if not boxes and not positive and not negative:
            if dino_enabled and request.dino_preview_checkbox:
                msg = ("GroundingDINO generated 0 box. Please lower the box threshold if you want any "
                       "segmentation for this image.")
            elif dino_enabled:
                msg = ("GroundingDINO found nothing for this prompt, and no point prompts were given. "
                       "Lower dino_box_threshold to get boxes.")
            else:
                msg = "You neither added point prompts nor enabled GroundingDINO. Segmentation cannot be generated."
            return {"msg": msg}
        prompts = Prompts(points=positive + negative, labels=[1] * len(positive) + [0] * len(negative), boxes=boxes)
        prediction = self.segment(model, image, prompts, multimask=True)
        merged = prediction.merged()
        candidates = merged.masks[0]
        blends = [images.png_base64(render.reference_blend(image, mask, boxes)) for mask in candidates]
        mask_images = [images.bool_mask_png_base64(mask, one_bit=True) for mask in candidates]
        mattes = [images.png_base64(render.cutout(image, mask)) for mask in candidates]
        left_out = (f" {dropped} less confident box(es) were left out (max objects {self.engine.settings.max_objects})."
                    if dropped else "")
        return {
            "msg": (f"SAM inference with {len(boxes)} box(es), {len(positive)} positive prompts, "
                    f"{len(negative)} negative prompts done.{left_out}"),
            "blended_images": blends,
            "masks": mask_images,
            "masked_images": mattes,
            "boxes": [[float(v) for v in box] for box in boxes],
            "scores": np.asarray(merged.scores[0], dtype=float).round(6).tolist(),
        }

    def dino_predict(self, request) -> Dict[str, Any]:
        image = self.read_image(request.input_image, REFERENCE_TRANSPARENCY)
        threshold = check_threshold(request.box_threshold, "box_threshold")
        detections = self.detect(image, request.text_prompt, model=request.dino_model_name, box_threshold=threshold,
                                 like_reference=True)
        boxes = [d.box for d in detections]
        preview = render.Image.fromarray(render.overlay(image, [], boxes=boxes, box_color=render.REFERENCE_BOX_COLOUR))
        return {
            "msg": "Done",
            "image_with_box": images.png_base64(preview),
            "boxes": [[float(v) for v in box] for box in boxes],
            "phrases": [d.phrase for d in detections],
            "scores": [round(float(d.score), 6) for d in detections],
        }

    def dilate_mask(self, request) -> Dict[str, Any]:
        image = self.read_image(request.input_image)
        mask = images.load_mask(request.mask, image.shape[:2], max_bytes=self.settings.source_policy.max_encoded_bytes)
        amount = request.dilate_amount
        if not 0 <= amount <= 2048:
            raise InvalidPromptError("dilate_amount must be between 0 and 2048.")
        if amount // 2 > 0:
            mask = mask_ops.expand(mask, amount // 2)  # the reference's amount is a kernel diameter
        return {
            "blended_image": images.png_base64(render.reference_blend(image, mask, [])),
            "mask": images.bool_mask_png_base64(mask, one_bit=True),
            "masked_image": images.png_base64(render.cutout(image, mask)),
        }

    def autosam(self, operation: str, payload, autosam_conf) -> Dict[str, Any]:
        handler = getattr(self._autosam, operation, None)
        if handler is None:
            raise NotImplementedYetError(
                f"/sam/{operation.replace('_', '-')} needs AutoSAM, which this version does not include yet."
            )
        self.engine.resolve_model(payload.sam_model_name)
        image = self.read_image(payload.input_image)
        if payload.pixel_perfect and (payload.target_W is None or payload.target_H is None):
            raise InvalidPromptError("pixel_perfect needs target_W and target_H.")
        if not 64 <= payload.processor_res <= 4096:
            raise InvalidPromptError("processor_res must be between 64 and 4096.")
        body = model_to_dict(payload)
        if body.get("segmentation_map") is not None:
            body["segmentation_map"] = self.read_image(body["segmentation_map"])
        with self.gpu(f"AutoSAM (/sam/{operation.replace('_', '-')})"):
            return handler(self.engine, image, body, model_to_dict(autosam_conf))

    def segment_everything_v2(self, request) -> Dict[str, Any]:
        model = self.engine.resolve_model(request.model)
        _, image = self.image_from(request.image, request.image_id, request.transparency)
        with self.gpu("AutoSAM segment-everything (/sam/v2/segment-everything)"):
            return api_hooks.segment_everything(self.engine, model, image, model_to_dict(request.autosam_conf),
                                                mask_format=request.mask_format, max_masks=request.max_masks)

    # ---------------------------------------------------------------- v2

    def health(self) -> Dict[str, Any]:
        stats = dict(self.engine.stats())
        memory: Dict[str, Any] = {}
        try:
            import resource  # POSIX only: absent on Windows

            memory["process_max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        except ImportError:  # Windows
            pass
        try:
            if torch.cuda.is_available():
                memory["cuda_allocated_mib"] = round(torch.cuda.memory_allocated() / 2**20, 1)
                memory["cuda_reserved_mib"] = round(torch.cuda.memory_reserved() / 2**20, 1)
        except Exception:  # health must answer even when torch is unhappy
            memory["cuda"] = "unavailable"
        return {
            "status": "ok",
            "models_available": self.engine.inventory()[0],
            "models_unusable": self.unusable_models(),
            "models_loaded": list(stats["loaded_models"]),
            "device": str(stats["device"]),
            "memory": memory,
            "loaded": self.engine.memory(),
            "engine": {k: v for k, v in stats.items() if isinstance(v, (int, float, str, bool, list, type(None)))},
            "images_stored": len(self.images),
            "python": platform.python_version(),
            "pid": os.getpid(),
        }

    def unload(self) -> Dict[str, Any]:
        """Free every loaded model and cached embedding; what was freed and the memory it took."""
        with self.gpu("freeing SAM memory (/sam/v2/unload)"):
            return {"freed": self.engine.unload()}

    def models(self) -> Dict[str, Any]:
        names = self.list_models()
        return {"models": [{"name": name, "label": self._label(name)} for name in names],
                "unusable": self.unusable_models()}

    def _label(self, name: str) -> str:
        try:
            return str(self.engine.model_label(name))
        except SamUserError:
            return name

    def upload_image(self, request) -> Dict[str, Any]:
        image = self.read_image(request.image, request.transparency)
        image_id = self.images.put(image)
        encoded = False
        if request.model is not None:
            model = self.engine.model(request.model)
            start = clock()
            with self.gpu("SAM image encoding"):
                model.encode(image)
            if self.metrics is not None:
                self.metrics.observe_encode(clock() - start)
            encoded = True
        return {"image_id": image_id, "width": int(image.shape[1]), "height": int(image.shape[0]), "encoded": encoded}

    def delete_image(self, image_id: str) -> Dict[str, Any]:
        return {"deleted": self.images.delete(image_id)}

    def detect_v2(self, request) -> Dict[str, Any]:
        image_id, image = self.image_from(request.image, request.image_id, request.transparency)
        detections = self.detect(image, request.text, model=request.dino_model,
                                 box_threshold=request.box_threshold, text_threshold=request.text_threshold,
                                 like_reference=request.detection_rule == "reference")
        return {
            "image_id": image_id,
            "detections": [{"box": [float(v) for v in d.box], "phrase": d.phrase, "score": float(d.score)}
                           for d in detections],
        }

    def predict_v2(self, request) -> Dict[str, Any]:
        if request.mask_format not in MASK_FORMATS:
            raise InvalidPromptError(f"mask_format must be one of {', '.join(MASK_FORMATS)}.")
        model = self.engine.model(request.model)
        image_id, image = self.image_from(request.image, request.image_id, request.transparency)
        shape = image.shape[:2]
        points = check_points(request.points, shape)
        labels = check_labels(request.labels, len(points))
        boxes = check_boxes(request.boxes, shape)
        detected: List = []
        if request.text is not None:
            detected = self.detect(image, request.text, model=request.dino_model,
                                   box_threshold=request.box_threshold, text_threshold=request.text_threshold,
                                   like_reference=request.detection_rule == "reference")
            # boxes lying wholly outside the picture (kept by the reference rule) segment nothing
            detected = [d for d in detected if d.has_area]
        max_objects = self.engine.settings.max_objects
        if len(boxes) > max_objects:
            raise InvalidPromptError(f"{len(boxes)} boxes in one request; at most {max_objects} objects are "
                                     "segmented per request (the 'max objects' setting).")
        room = max_objects - len(boxes)
        detected, dropped = most_confident(detected, room) if room > 0 else ([], len(detected))
        mask_input = None
        if request.previous_logits is not None and request.previous_mask is not None:
            raise InvalidPromptError("Give previous_mask or previous_logits, not both.")
        if request.previous_logits is not None:
            mask_input = codec.read_logits(request.previous_logits)
        elif isinstance(request.previous_mask, dict):
            mask_input = mask_to_low_res_logits(codec.read_rle_mask(request.previous_mask, shape))
        elif request.previous_mask is not None:
            previous = images.load_mask(request.previous_mask, shape, what="previous_mask",
                                        max_bytes=self.settings.source_policy.max_encoded_bytes)
            mask_input = mask_to_low_res_logits(previous)
        all_boxes = boxes + [d.box for d in detected]
        base = {"image_id": image_id, "width": int(shape[1]), "height": int(shape[0]), "model": model.name}
        if not points and not all_boxes:
            if request.text is not None:
                return {**base, "objects": [],
                        "msg": f"GroundingDINO found nothing for this text; lower box_threshold (now {request.box_threshold:g})."}
            raise InvalidPromptError("No prompt: give points, boxes, text, or points with a previous mask.")
        prompts = Prompts(points=points, labels=labels, boxes=all_boxes, mask_input=mask_input)
        options = {"hq_token_only": True} if request.hq_token_only else {}
        prediction = self.segment(model, image, prompts, multimask=request.multimask, options=options)
        objects = self._objects(request, image, prediction, boxes, detected)
        left_out = (f" {dropped} less confident detection(s) were left out "
                    f"(max objects {self.engine.settings.max_objects})." if dropped else "")
        return {**base, "objects": objects, "msg": "Done." + left_out if left_out else "Done"}

    def _objects(self, request, image, prediction: Prediction, boxes, detected) -> List[Dict[str, Any]]:
        count = len(prediction.masks)
        object_boxes = list(prediction.object_boxes)
        described = []
        for k in range(count):
            prompt_box = object_boxes[k] if k < len(object_boxes) else None
            phrase = score = None
            if k >= len(boxes) and k < len(boxes) + len(detected):
                phrase, score = detected[k - len(boxes)].phrase, float(detected[k - len(boxes)].score)
            described.append({
                "prompt_box": None if prompt_box is None else [float(v) for v in prompt_box],
                "phrase": phrase, "detection_score": score,
            })
        if request.best_only:
            prediction = prediction.best_per_object()
        if request.merge and count > 1:
            prediction = prediction.merged()
            described = [{"prompt_box": None, "phrase": None, "detection_score": None}]
        masks = np.asarray(prediction.masks, dtype=bool)
        scores = np.asarray(prediction.scores, dtype=np.float32)
        logits = np.asarray(prediction.low_res_logits, dtype=np.float32)
        post = model_to_dict(request.postprocess)
        objects = []
        for k in range(masks.shape[0]):
            candidates = []
            for c in range(masks.shape[1]):
                candidates.append(self._mask_out(request, image, masks[k, c], float(scores[k, c]), logits[k, c], post))
            objects.append({**described[k], "masks": candidates})
        return objects

    def _mask_out(self, request, image, mask, score, logits, post) -> Dict[str, Any]:
        soft = None
        if any(post[key] for key in ("expand", "feather", "fill_holes", "remove_islands", "invert")):
            processed = mask_ops.postprocess(mask, expand=post["expand"], feather=post["feather"],
                                             fill_holes=post["fill_holes"], min_island=post["remove_islands"],
                                             invert=post["invert"])
            if processed.dtype != bool:  # feathered: float 0..1 alpha
                soft = np.clip(processed, 0.0, 1.0)
                mask = soft >= 0.5
            else:
                mask = processed
        out: Dict[str, Any] = {"score": round(score, 6), "box": _json_box(mask_ops.mask_to_box(mask)), "area": int(mask.sum())}
        if request.mask_format == "png":
            out["mask"] = (images.array_png_base64((soft * 255 + 0.5).astype(np.uint8)) if soft is not None
                           else images.bool_mask_png_base64(mask))
        elif request.mask_format == "rle":
            out["mask"] = rle.encode(mask)
        if request.return_cutout and request.alpha == "soft":
            out["cutout"] = images.png_base64(matting.cutout(image, mask, "soft", request.alpha_band))
        elif request.return_cutout:
            out["cutout"] = images.png_base64(render.cutout(image, soft if soft is not None else mask))
        if request.return_blend:
            out["blend"] = images.png_base64(render.reference_blend(image, mask, []))
        if request.return_logits:
            out["logits"] = codec.logits_base64(logits)
        return out

    # ---------------------------------------------------------------- batch

    def batch(self, request, *, interrupt: Optional[Callable[[], bool]] = None) -> Dict[str, Any]:
        roots = tuple(Path(r).expanduser().resolve() for r in self.settings.batch_roots)
        if not roots:
            raise ForbiddenPathError("Batch over the API is off on this server; the owner can allow folders for it.")

        def inside(text: str, what: str) -> Path:
            path = Path(text).expanduser()
            if not path.is_absolute():
                raise InvalidPromptError(f"The {what} {text!r} must be an absolute path.")
            resolved = path.resolve()
            if not any(resolved == root or root in resolved.parents for root in roots):
                raise ForbiddenPathError(f"The {what} {text!r} is outside the folders allowed for batch.")
            return resolved

        if not request.inputs:
            raise InvalidPromptError("inputs is empty; give folders or image files.")
        inputs = [inside(item, "input") for item in request.inputs]
        output_dir = inside(request.output_dir, "output folder")
        options = batch_module.BatchOptions(
            inputs=inputs, output_dir=output_dir, recursive=request.recursive,
            model=self.engine.resolve_model(request.model),
            text=check_caption(request.text) if request.text is not None else None,
            dino_model=request.dino_model, box_threshold=request.box_threshold,
            text_threshold=request.text_threshold,
            points=[tuple(p) for p in finite_tuples(request.points, width=2, name="points")],
            labels=list(request.labels), boxes=[tuple(b) for b in finite_tuples(request.boxes, width=4, name="boxes")],
            everything=request.everything, multimask=request.multimask, per_object=request.per_object,
            outputs=tuple(request.outputs), naming=request.naming, expand=request.expand, invert=request.invert,
            overwrite=request.overwrite, autosam=dict(request.autosam_conf or {}),
            alpha=request.alpha, alpha_band=request.alpha_band,
        )
        report = batch_module.run_batch(self.engine, options, interrupt=interrupt,
                                        gpu_lock=self._gpu_lock)
        return report.to_dict()


def _json_box(box: Optional[Tuple[int, int, int, int]]) -> Optional[List[int]]:
    return None if box is None else list(box)
