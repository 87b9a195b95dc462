"""Segment everything: masks for a whole image from a grid of single-point prompts.

Same algorithm, parameters and defaults as ``segment_anything.SamAutomaticMaskGenerator`` (so the
same weights and settings give the same masks), organised for speed:

* every crop's grid is decoded in large batches straight through ``PromptableSegmenter.decode``;
* the predicted-IoU filter runs on the low-resolution output, so a mask it discards is never
  upsampled; the first upsampling step only computes the rows and columns that survive the
  un-padding crop, and the second step is skipped when the sizes already match;
* stability score, boxes, the crop-edge filter and both NMS passes stay on the model's device;
* surviving masks are kept bit-packed on the device until NMS has decided, and only the final
  masks are copied to the host and (in ``coco_rle`` mode) run-length encoded.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms

from sd_webui_sam.autosam.generator_helpers import (
    crop_boxes,
    layer_point_grids,
    mask_boxes,
    near_crop_edge,
    pack_masks,
    remove_small_regions,
    stability_scores,
    synchronize,
    unpack_masks,
    upsample_logits,
)
from sd_webui_sam.autosam.progress import GenerationClock, JobControl, work_plan
from sd_webui_sam.devices import default_points_per_batch, is_out_of_memory, release_memory
from sd_webui_sam.embedding_cache import EmbeddingCache, EncodedImage
from sd_webui_sam.errors import SamUserError
from sd_webui_sam.predictor import Predictor
from sd_webui_sam.rle import decode as rle_decode, encode as rle_encode

__all__ = [
    "OUTPUT_MODES", "AutoMaskGenerator", "AutoSamConfig", "CropEncoder", "EncodedCrop", "GenerationTimings",
    "MaskRecord", "generate_masks", "generate_masks_with_engine",
]

OUTPUT_MODES = ("binary_mask", "coco_rle", "none")

# Upsampled float logits are the largest temporary; this many masks are upsampled at once.
UPSAMPLE_CHUNK = 64

# Bounds that keep one request from asking for an unbounded amount of work or memory
# (the reference's defaults are 32, 64 and 0).
MAX_POINTS_PER_SIDE = 256
MAX_POINTS_PER_BATCH = 4096
MAX_CROP_LAYERS = 4


@dataclass(frozen=True)
class AutoSamConfig:
    """The reference generator's parameters, with its defaults (and the WebUI panel's)."""

    points_per_side: Optional[int] = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    output_mode: str = "binary_mask"
    # Explicit grids of points in [0, 1]^2, one per crop layer; exclusive with points_per_side.
    point_grids: Optional[Sequence[np.ndarray]] = None
    # Prompts decoded per model call (the masks do not depend on it). None: chosen for the
    # device, see effective_decode_batch.
    decode_batch_size: Optional[int] = None
    # Family switches passed through to decode (e.g. HQ-SAM's hq_token_only).
    decode_options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> "AutoSamConfig":
        """Build from a request body / UI values; unknown keys are ignored, None keeps the default."""
        known = {f.name for f in fields(cls)}
        chosen = {key: value for key, value in (values or {}).items() if key in known and value is not None}
        return cls(**chosen).validated()

    def validated(self) -> "AutoSamConfig":
        problems = []
        if (self.points_per_side is None) == (self.point_grids is None):
            problems.append("give exactly one of points_per_side and point_grids")
        if self.points_per_side is not None and not 1 <= int(self.points_per_side) <= MAX_POINTS_PER_SIDE:
            problems.append(f"points_per_side must be between 1 and {MAX_POINTS_PER_SIDE}")
        if not 1 <= int(self.points_per_batch) <= MAX_POINTS_PER_BATCH:
            problems.append(f"points_per_batch must be between 1 and {MAX_POINTS_PER_BATCH}")
        if not np.isfinite(float(self.stability_score_offset)):
            problems.append("stability_score_offset must be a finite number")
        if int(self.crop_n_layers) > MAX_CROP_LAYERS:
            problems.append(f"crop_n_layers must be at most {MAX_CROP_LAYERS}")
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "crop_nms_thresh"):
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                problems.append(f"{name} must be between 0 and 1 (got {value})")
        if not 0.0 <= float(self.crop_overlap_ratio) < 1.0:
            problems.append("crop_overlap_ratio must be in [0, 1)")
        if int(self.crop_n_layers) < 0:
            problems.append("crop_n_layers must be 0 or more")
        if int(self.crop_n_points_downscale_factor) < 1:
            problems.append("crop_n_points_downscale_factor must be at least 1")
        if int(self.min_mask_region_area) < 0:
            problems.append("min_mask_region_area must be 0 or more")
        if self.output_mode not in OUTPUT_MODES:
            problems.append(f"output_mode must be one of {', '.join(OUTPUT_MODES)} (got {self.output_mode!r})")
        if self.point_grids is not None and len(self.point_grids) != int(self.crop_n_layers) + 1:
            problems.append("point_grids needs one grid per crop layer (crop_n_layers + 1)")
        if self.points_per_side is not None and not problems:  # the factor and the layers are in range
            deepest = int(int(self.points_per_side) / int(self.crop_n_points_downscale_factor) ** int(self.crop_n_layers))
            if deepest < 1:
                problems.append("crop_n_points_downscale_factor leaves no points in the deepest crop layer")
        if problems:
            raise SamUserError("Invalid AutoSAM settings: " + "; ".join(problems) + ".")
        return self

    def effective_decode_batch(self, device: torch.device) -> int:
        """Prompts per decoder call: ``decode_batch_size`` if set, else the device's
        (devices.default_points_per_batch: small on a CPU, large on an accelerator)."""
        if self.decode_batch_size is not None:
            return max(1, int(self.decode_batch_size))
        return default_points_per_batch(device, int(self.points_per_batch))


@dataclass
class MaskRecord:
    """One automatic mask, in the reference generator's annotation terms."""

    segmentation: Any                            # (H,W) bool, a COCO RLE dict, or None ("none" mode)
    area: int
    bbox: tuple[int, int, int, int]              # x, y, w, h (inclusive pixel box, w = x1 - x0)
    predicted_iou: float
    stability_score: float
    point_coords: tuple[float, float]            # the grid point that produced it, image pixels
    crop_box: tuple[int, int, int, int]          # x, y, w, h of the crop it was found in

    def mask(self) -> np.ndarray:
        """The mask as (H,W) bool, whatever the output mode."""
        if isinstance(self.segmentation, np.ndarray):
            return self.segmentation
        if isinstance(self.segmentation, Mapping):
            return rle_decode(self.segmentation)
        raise ValueError("This record was generated without masks (output_mode='none').")

    def to_dict(self) -> dict:
        """The reference generator's annotation dict (JSON-ready except a binary segmentation)."""
        return {
            "segmentation": self.segmentation,
            "area": int(self.area),
            "bbox": [int(v) for v in self.bbox],
            "predicted_iou": float(self.predicted_iou),
            "point_coords": [[float(self.point_coords[0]), float(self.point_coords[1])]],
            "stability_score": float(self.stability_score),
            "crop_box": [int(v) for v in self.crop_box],
        }


@dataclass
class GenerationTimings:
    """Where the time went (seconds), and how many masks each stage let through."""

    encoder_s: float = 0.0
    decoder_s: float = 0.0
    postprocess_s: float = 0.0
    total_s: float = 0.0
    crops: int = 0
    candidates: int = 0
    after_iou: int = 0
    after_stability: int = 0
    after_edge: int = 0
    final: int = 0

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class EncodedCrop:
    """What decoding needs from an encoded image: the features and the resized (unpadded) size."""

    features: Mapping[str, torch.Tensor]
    input_size: tuple[int, int]      # (h, w) after the longest side was resized to image_size


CropEncoder = Callable[[np.ndarray], EncodedCrop]


# ---------------------------------------------------------------------------------------------
# The generator


@dataclass
class _Survivors:
    """Candidates of one crop (or of all crops) that passed the filters so far, on the device."""

    packed: torch.Tensor          # (N, bytes) bit-packed masks, crop frame
    boxes: torch.Tensor           # (N,4) int64 xyxy, crop frame (image frame after uncrop)
    iou: torch.Tensor             # (N,) float
    stability: torch.Tensor       # (N,) float
    points: torch.Tensor          # (N,2) float64 grid point, crop frame (image frame after uncrop)
    crop_index: torch.Tensor      # (N,) int64

    def select(self, keep: torch.Tensor) -> "_Survivors":
        return _Survivors(*(getattr(self, f.name)[keep] for f in fields(self)))

    @staticmethod
    def concat(parts: Sequence["_Survivors"]) -> "_Survivors":
        # crops differ in size, so their packed rows are padded to the widest
        width = max(part.packed.shape[1] for part in parts)
        packed = torch.cat([F.pad(part.packed, (0, width - part.packed.shape[1])) for part in parts])
        rest = (torch.cat([getattr(part, f.name) for part in parts]) for f in fields(_Survivors)[1:])
        return _Survivors(packed, *rest)


class AutoMaskGenerator:
    """Segment everything with one model; ``encode`` turns a crop (H,W,3 uint8) into features."""

    def __init__(self, model: torch.nn.Module, encode: CropEncoder, config: AutoSamConfig | None = None):
        self.model = model
        self.encode = encode
        self.config = (config or AutoSamConfig()).validated()
        #: prompts per decoder call once an out-of-memory error halved one (None: not yet)
        self._decode_limit: Optional[int] = None
        if self.config.point_grids is not None:
            self.grids = [np.asarray(grid, dtype=np.float64) for grid in self.config.point_grids]
        else:
            self.grids = layer_point_grids(int(self.config.points_per_side), int(self.config.crop_n_layers),
                                           int(self.config.crop_n_points_downscale_factor))
        if self.config.min_mask_region_area > 0:
            import cv2  # noqa: F401  (optional and heavy; checked here to fail before the model runs, not after)

    @property
    def mask_threshold(self) -> float:
        return float(getattr(self.model, "mask_threshold", 0.0))

    @property
    def model_input_side(self) -> int:
        return int(getattr(self.model, "image_size", 1024))

    @torch.no_grad()
    def generate(self, image: np.ndarray, timings: GenerationTimings | None = None, *,
                 control: Optional[JobControl] = None) -> list[MaskRecord]:
        """``control``: progress after each crop encode and point batch, and the interrupt checked
        between them (a stop raises GenerationInterrupted and returns nothing)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError("generate expects an (H,W,3) uint8 RGB image")
        timings = timings if timings is not None else GenerationTimings()
        started = time.perf_counter()
        height, width = image.shape[:2]
        crops = crop_boxes((height, width), int(self.config.crop_n_layers), float(self.config.crop_overlap_ratio))
        timings.crops = len(crops)
        counters = self._counters(image.shape[:2], control)
        counters.control.check()

        parts = []
        crop_shapes = []
        for crop_index, (box, layer) in enumerate(crops):
            part = self._process_crop(image, box, layer, crop_index, timings, counters)
            crop_shapes.append((box[3] - box[1], box[2] - box[0]))
            if part is not None:
                parts.append(part)

        post_started = time.perf_counter()
        if not parts:
            timings.postprocess_s += time.perf_counter() - post_started
            timings.total_s = time.perf_counter() - started
            return []
        survivors = _Survivors.concat(parts)
        crop_table = torch.tensor([box for box, _ in crops], dtype=torch.int64, device=survivors.boxes.device)

        if len(crops) > 1:
            # Prefer masks from smaller crops.
            crop_of_mask = crop_table[survivors.crop_index]
            crop_areas = (crop_of_mask[:, 2] - crop_of_mask[:, 0]) * (crop_of_mask[:, 3] - crop_of_mask[:, 1])
            keep = batched_nms(survivors.boxes.float(), 1 / crop_areas,
                               torch.zeros(len(crop_areas), dtype=torch.int64, device=crop_areas.device),
                               iou_threshold=float(self.config.crop_nms_thresh))
            survivors = survivors.select(keep)

        masks = self._full_frame_masks(survivors, crops, crop_shapes, (height, width))
        boxes = survivors.boxes.cpu()
        if self.config.min_mask_region_area > 0:
            masks, boxes, order = self._clean_small_regions(masks, boxes)
        else:
            order = list(range(len(masks)))

        records = self._records(masks, boxes, survivors, crops, order)
        timings.final = len(records)
        timings.postprocess_s += time.perf_counter() - post_started
        timings.total_s = time.perf_counter() - started
        return records

    def _counters(self, image_shape, control: Optional[JobControl]) -> GenerationClock:
        """The counters of a run on an image of ``image_shape`` (crops and point batches to do)."""
        weights = next(iter(self.model.parameters()), None) if isinstance(self.model, torch.nn.Module) else None
        device = weights.device if weights is not None else torch.device("cpu")
        return GenerationClock(work_plan(self.config, image_shape, device), control)

    # -- per crop ---------------------------------------------------------------------------

    def _process_crop(self, image, box, layer, crop_index, timings, counters: GenerationClock) -> Optional[_Survivors]:
        config = self.config
        x0, y0, x1, y1 = box
        crop = np.ascontiguousarray(image[y0:y1, x0:x1])
        crop_h, crop_w = crop.shape[:2]

        clock = time.perf_counter()
        encoded = self.encode(crop)
        features = encoded.features
        device = next(iter(features.values())).device
        synchronize(device)
        encode_s = time.perf_counter() - clock
        timings.encoder_s += encode_s
        counters.encoded(encode_s)

        in_h, in_w = encoded.input_size
        grid_points = self.grids[layer] * np.array([crop_w, crop_h], dtype=np.float64)
        model_points = grid_points.copy()
        model_points[:, 0] *= in_w / crop_w
        model_points[:, 1] *= in_h / crop_h
        grid_points_t = torch.as_tensor(grid_points, device=device)
        model_points_t = torch.as_tensor(model_points, device=device)

        image_box = (0, 0, image.shape[1], image.shape[0])
        whole_image = tuple(box) == image_box
        parts = []
        start = 0
        while start < len(model_points):
            # an out-of-memory error earlier in this generation lowered the batch for the rest of it
            batch = min(config.effective_decode_batch(device), self._decode_limit or len(model_points))
            stop = min(start + batch, len(model_points))
            clock = time.perf_counter()
            coords = model_points_t[start:stop, None, :]
            labels = torch.ones(coords.shape[:2], dtype=torch.int64, device=device)
            low_res, iou = self._decode(features, coords, labels)
            synchronize(device)
            decode_s = time.perf_counter() - clock
            timings.decoder_s += decode_s

            clock = time.perf_counter()
            per_point = low_res.shape[1]
            low_res = low_res.flatten(0, 1)
            iou = iou.flatten(0, 1).float()
            point_index = torch.arange(start, stop, device=device).repeat_interleave(per_point)
            timings.candidates += len(iou)
            if config.pred_iou_thresh > 0.0:
                keep = iou > config.pred_iou_thresh
                low_res, iou, point_index = low_res[keep], iou[keep], point_index[keep]
            timings.after_iou += len(iou)
            for chunk in range(0, len(iou), UPSAMPLE_CHUNK):
                part = self._filter_chunk(low_res[chunk:chunk + UPSAMPLE_CHUNK], iou[chunk:chunk + UPSAMPLE_CHUNK],
                                          point_index[chunk:chunk + UPSAMPLE_CHUNK], (in_h, in_w), (crop_h, crop_w),
                                          box, image_box, whole_image, crop_index, grid_points_t, timings)
                if part is not None:
                    parts.append(part)
            synchronize(device)
            timings.postprocess_s += time.perf_counter() - clock
            counters.decoded(decode_s, stop - start)  # checks the interrupt: the next batch starts only if not stopped
            start = stop

        clock = time.perf_counter()
        if not parts:
            return None
        survivors = _Survivors.concat(parts)
        keep = batched_nms(survivors.boxes.float(), survivors.iou,
                           torch.zeros(len(survivors.iou), dtype=torch.int64, device=device),
                           iou_threshold=float(config.box_nms_thresh))
        survivors = survivors.select(keep)
        offset = torch.tensor([x0, y0, x0, y0], dtype=torch.int64, device=device)
        survivors.boxes = survivors.boxes + offset
        survivors.points = survivors.points + offset[:2].to(survivors.points.dtype)
        synchronize(device)
        timings.postprocess_s += time.perf_counter() - clock
        return survivors

    def _decode(self, features, coords: torch.Tensor, labels: torch.Tensor):
        """Decode a batch of single-point prompts; out of memory, halve the batch (for the rest of
        the generation too) and go on."""
        try:
            return self.model.decode(features, point_coords=coords, point_labels=labels, boxes=None, mask_input=None,
                                     multimask_output=True, options=dict(self.config.decode_options))
        except Exception as error:
            if len(coords) <= 1 or not is_out_of_memory(error):
                raise
        release_memory()
        self._decode_limit = min(self._decode_limit or len(coords), len(coords) // 2)
        outputs = []
        start = 0
        while start < len(coords):
            stop = start + self._decode_limit  # read again each time: a piece may lower it further
            outputs.append(self._decode(features, coords[start:stop], labels[start:stop]))
            start = stop
        return torch.cat([logits for logits, _ in outputs]), torch.cat([iou for _, iou in outputs])

    def _filter_chunk(self, low_res, iou, point_index, input_size, crop_size, box, image_box, whole_image,
                      crop_index, grid_points, timings) -> Optional[_Survivors]:
        config = self.config
        if len(iou) == 0:
            return None
        logits = upsample_logits(low_res, self.model_input_side, input_size, crop_size,
                                 getattr(self.model, "input_geometry", "longest_side"))
        stability = stability_scores(logits, self.mask_threshold, float(config.stability_score_offset))
        if config.stability_score_thresh > 0.0:
            keep = stability >= config.stability_score_thresh
            logits, iou, point_index, stability = logits[keep], iou[keep], point_index[keep], stability[keep]
        timings.after_stability += len(iou)
        masks = logits > self.mask_threshold
        del logits
        boxes = mask_boxes(masks)
        if not whole_image:
            offset = torch.tensor([box[0], box[1], box[0], box[1]], dtype=torch.int64, device=boxes.device)
            keep = ~near_crop_edge(boxes + offset, box, image_box)
            masks, boxes, iou, point_index, stability = masks[keep], boxes[keep], iou[keep], point_index[keep], stability[keep]
        timings.after_edge += len(iou)
        if len(iou) == 0:
            return None
        return _Survivors(
            packed=pack_masks(masks),
            boxes=boxes,
            iou=iou,
            stability=stability.float(),
            points=grid_points[point_index],
            crop_index=torch.full((len(iou),), crop_index, dtype=torch.int64, device=boxes.device),
        )

    # -- after NMS --------------------------------------------------------------------------

    def _full_frame_masks(self, survivors: _Survivors, crops, crop_shapes, image_size) -> list[np.ndarray]:
        """Unpack the final masks and place each crop-frame mask into the whole image, on the host."""
        height, width = image_size
        masks: list[np.ndarray] = [None] * len(survivors.iou)  # type: ignore[list-item]
        crop_index = survivors.crop_index.cpu().numpy()
        for index in np.unique(crop_index):
            rows = np.nonzero(crop_index == index)[0]
            (x0, y0, x1, y1), _ = crops[int(index)]
            unpacked = unpack_masks(survivors.packed[torch.as_tensor(rows, device=survivors.packed.device)],
                                    crop_shapes[int(index)]).cpu().numpy()
            for row, crop_mask in zip(rows, unpacked):
                if (x0, y0, x1, y1) == (0, 0, width, height):
                    masks[row] = crop_mask
                else:
                    full = np.zeros((height, width), dtype=bool)
                    full[y0:y1, x0:x1] = crop_mask
                    masks[row] = full
        return masks

    def _clean_small_regions(self, masks: list[np.ndarray], boxes: torch.Tensor):
        """Fill small holes, drop small islands, then NMS again preferring untouched masks."""
        min_area = int(self.config.min_mask_region_area)
        cleaned, untouched = [], []
        for mask in masks:
            mask, changed = remove_small_regions(mask, min_area)
            cleaned.append(mask)
            untouched.append(0.0 if changed else 1.0)
        new_boxes = mask_boxes(torch.as_tensor(np.stack(cleaned)))
        keep = batched_nms(new_boxes.float(), torch.as_tensor(untouched),
                           torch.zeros(len(cleaned), dtype=torch.int64),
                           iou_threshold=max(float(self.config.box_nms_thresh), float(self.config.crop_nms_thresh)))
        boxes = boxes.clone()
        for index in keep.tolist():
            if untouched[index] == 0.0:
                boxes[index] = new_boxes[index]
            else:
                cleaned[index] = masks[index]
        return cleaned, boxes, keep.tolist()

    def _records(self, masks, boxes, survivors: _Survivors, crops, order) -> list[MaskRecord]:
        mode = self.config.output_mode
        iou = survivors.iou.cpu().tolist()
        stability = survivors.stability.cpu().tolist()
        points = survivors.points.cpu().tolist()
        crop_index = survivors.crop_index.cpu().tolist()
        boxes = boxes.tolist()
        records = []
        for index in order:
            mask = masks[index]
            x0, y0, x1, y1 = boxes[index]
            cx0, cy0, cx1, cy1 = crops[crop_index[index]][0]
            if mode == "binary_mask":
                segmentation = mask
            elif mode == "coco_rle":
                segmentation = rle_encode(mask)
            else:
                segmentation = None
            records.append(MaskRecord(
                segmentation=segmentation,
                area=int(np.count_nonzero(mask)),
                bbox=(int(x0), int(y0), int(x1 - x0), int(y1 - y0)),
                predicted_iou=float(iou[index]),
                stability_score=float(stability[index]),
                point_coords=(float(points[index][0]), float(points[index][1])),
                crop_box=(int(cx0), int(cy0), int(cx1 - cx0), int(cy1 - cy0)),
            ))
        return records


# ---------------------------------------------------------------------------------------------
# Entry points


def generate_masks(predictor, image: np.ndarray, config: AutoSamConfig | None = None, *,
                   timings: GenerationTimings | None = None, control: Optional[JobControl] = None,
                   encoded: Optional[EncodedImage] = None) -> list[MaskRecord]:
    """Segment everything in an (H,W,3) uint8 RGB image with a :class:`~sd_webui_sam.predictor.Predictor`.

    Crops are encoded through the predictor, so the whole image reuses an embedding the panel
    already computed for the same image and model; ``encoded``: the whole image's embeddings
    when the caller has them (batch encodes several images together), used if they are this
    image's with this predictor's model, device and dtype.
    """
    whole_image_shape = image.shape
    crop_predictor = None

    def encode(crop: np.ndarray):
        nonlocal crop_predictor
        if crop.shape == whole_image_shape:
            if encoded is not None and encoded.key == predictor.cache_key(crop):
                return encoded
            return predictor.encode(crop)
        if crop_predictor is None:
            # crop embeddings are used once: keep them out of the shared cache
            crop_predictor = Predictor(predictor.model, predictor.placement, EmbeddingCache(max_entries=0),
                                       model_id=predictor.model_id)
        return crop_predictor.encode(crop)

    return AutoMaskGenerator(predictor.model, encode, config).generate(image, timings, control=control)


def generate_masks_with_engine(engine, model_name: str, image: np.ndarray, config: AutoSamConfig | None = None, *,
                               timings: GenerationTimings | None = None, control: Optional[JobControl] = None,
                               encoded: Optional[EncodedImage] = None) -> list[MaskRecord]:
    """The same through the :class:`~sd_webui_sam.engine.Engine`: the model stays on the compute
    device, and other users of the engine wait, for the whole generation."""
    config = (config or AutoSamConfig()).validated()
    with engine.use_predictor(model_name, advice="a smaller image or fewer points per side") as predictor:
        return generate_masks(predictor, image, config, timings=timings, control=control, encoded=encoded)
