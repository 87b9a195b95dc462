"""Encode an image once, then prompt it many times.

Geometry follows the official predictors exactly, so masks match them pixel for pixel. For a
model whose ``input_geometry`` is "longest_side" (SAM, ``SamPredictor``): the image is resized
(PIL bilinear on uint8) so that its longest side is the model's input size, normalised, and
zero-padded to a square at the bottom/right; prompt coordinates are scaled by the same
factors; low-res logits are upsampled to the padded square, cropped, and resized to the image.
For "stretch" (SAM 2, ``SAM2ImagePredictor``): the image, as [0, 1] floats, is resized to the
square on both sides (bilinear, antialiased) and normalised; coordinates scale per axis; the
low-res logits are resized straight to the image.
"""
from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from sd_webui_sam.devices import Placement, default_encode_batch, is_out_of_memory, release_memory
from sd_webui_sam.embedding_cache import CacheKey, EmbeddingCache, EncodedImage, dtype_name
from sd_webui_sam.errors import InvalidImageError, InvalidPromptError
from sd_webui_sam.images import image_content_key
from sd_webui_sam.modeling.segmenter import PromptableSegmenter
from sd_webui_sam.prompts import Box, CheckedPrompts, Prompts, check_prompts

STRETCH = "stretch"  # SAM 2's input geometry: both sides resized to the model's square input
_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR


@dataclass
class Prediction:
    masks: np.ndarray  # (K, C, H, W) bool; K objects, C candidates
    scores: np.ndarray  # (K, C) float32 predicted IoU
    low_res_logits: np.ndarray  # (K, C, 256, 256) float32
    object_boxes: List[Optional[Box]] = field(default_factory=list)  # the box of each object, or None

    def merged(self) -> "Prediction":
        """All objects as one, per candidate: candidate c is the union of every object's candidate
        c, scored by their mean (logits: their maximum). What a user who prompted several things
        at once gets as "the" masks."""
        return Prediction(
            masks=np.asarray(self.masks, dtype=bool).any(axis=0, keepdims=True),
            scores=np.asarray(self.scores, dtype=np.float32).mean(axis=0, keepdims=True),
            low_res_logits=np.asarray(self.low_res_logits, dtype=np.float32).max(axis=0, keepdims=True),
            object_boxes=[None],
        )

    def best_per_object(self) -> "Prediction":
        """Each object with only its highest-scoring candidate: (K, 1, H, W)."""
        scores = np.asarray(self.scores, dtype=np.float32)
        best = scores.argmax(axis=1)
        picks = np.arange(scores.shape[0])
        return Prediction(
            masks=np.asarray(self.masks, dtype=bool)[picks, best][:, None],
            scores=scores[picks, best][:, None],
            low_res_logits=np.asarray(self.low_res_logits, dtype=np.float32)[picks, best][:, None],
            object_boxes=list(self.object_boxes),
        )


@dataclass(frozen=True)
class ObjectPrompt:
    """One object to segment: an optional box and the indices of the points that shape it."""

    box: Optional[np.ndarray]  # (4,) xyxy, image pixels
    point_indices: np.ndarray  # int indices into the prompt's points, in the user's order


class ForeignEmbeddingsError(ValueError):
    """Embeddings handed to predict that another model, device or dtype computed."""


# -- geometry ---------------------------------------------------------------------------------


def resized_shape(height: int, width: int, long_side: int) -> Tuple[int, int]:
    """(h, w) with the longest side scaled to ``long_side``, rounded half up, at least 1 pixel.

    SamPredictor's rule alone gives a 0-pixel side for a picture more than 2 * long_side times
    longer than wide (1x3000); such a picture still has one row of pixels worth segmenting.
    """
    scale = long_side * 1.0 / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def resize_image(image: np.ndarray, long_side: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3) uint8 via PIL bilinear (with PIL's antialiasing), as SAM was trained."""
    height, width = resized_shape(image.shape[0], image.shape[1], long_side)
    return np.array(Image.fromarray(image).resize((width, height), _BILINEAR))


def scale_coords(coords: np.ndarray, original_size: Tuple[int, int], input_size: Tuple[int, int]) -> np.ndarray:
    """Image-pixel (..., 2) xy coordinates -> the resized input frame (float64)."""
    scaled = np.array(coords, dtype=np.float64, copy=True)
    scaled[..., 0] = scaled[..., 0] * (input_size[1] / original_size[1])
    scaled[..., 1] = scaled[..., 1] * (input_size[0] / original_size[0])
    return scaled


def upscale_logits(
    low_res: Tensor, image_size: int, input_size: Tuple[int, int], original_size: Tuple[int, int]
) -> Tensor:
    """(B, C, 256, 256) logits -> (B, C, H, W) float32, as SamPredictor's postprocessing.

    SamPredictor upsamples to the whole padded square and then crops. Bilinear upsampling by an
    exact factor only reads the source rows/columns next to each output pixel, so upsampling
    just the part of the source under the crop (+1 row/column) gives the same values for less work.
    """
    low_res = low_res.float()
    factor = image_size // low_res.shape[-1]
    height, width = input_size
    if factor * low_res.shape[-1] == image_size:
        rows = min(low_res.shape[-2], math.ceil(height / factor) + 1)
        cols = min(low_res.shape[-1], math.ceil(width / factor) + 1)
        upscaled = F.interpolate(low_res[..., :rows, :cols], (rows * factor, cols * factor), mode="bilinear", align_corners=False)
    else:
        upscaled = F.interpolate(low_res, (image_size, image_size), mode="bilinear", align_corners=False)
    upscaled = upscaled[..., :height, :width]
    if (height, width) != tuple(original_size):
        upscaled = F.interpolate(upscaled, tuple(original_size), mode="bilinear", align_corners=False)
    return upscaled


def stretched_pixels(image: np.ndarray, side: int, mean: Tensor, std: Tensor, device: torch.device) -> Tensor:
    """(H, W, 3) uint8 -> (1, 3, side, side) float32: SAM 2's input (0..1, both sides resized
    with antialiased bilinear, then normalised; ``mean``/``std`` on the 0..255 scale)."""
    # MPS lacks the antialiased kernel in torch 2.1; the CPU resizes for it.
    work = torch.device("cpu") if device.type == "mps" else device
    pixels = torch.from_numpy(image).to(work).permute(2, 0, 1)[None].float() / 255.0
    pixels = F.interpolate(pixels, (side, side), mode="bilinear", align_corners=False, antialias=True)
    pixels = (pixels - mean.to(work) / 255.0) / (std.to(work) / 255.0)
    return pixels.to(device)


def logits_to_image(low_res: Tensor, geometry: str, image_size: int, input_size: Tuple[int, int],
                    original_size: Tuple[int, int]) -> Tensor:
    """(B, C, h, w) low-res logits -> (B, C, H, W) float32 at the picture's size, per geometry."""
    if geometry == STRETCH:
        return F.interpolate(low_res.float(), tuple(original_size), mode="bilinear", align_corners=False)
    return upscale_logits(low_res, image_size, input_size, original_size)


# -- prompt checks and grouping ---------------------------------------------------------------


def group_objects(points: np.ndarray, labels: np.ndarray, boxes: np.ndarray) -> List[ObjectPrompt]:
    """Split prompts into objects; no point is ever dropped.

    * No box: one object made of all points.
    * One box: one object, the box with all points (what SamPredictor does with a box and
      points, and what the extension we replace did).
    * Several boxes: every box is one object. A point inside a box (borders included) refines
      every box that contains it, whatever its label. Negative points inside no box apply to
      every box. Positive points inside no box form one more object of their own (last,
      without a box), together with the negative points that lie in no box.
    """
    all_points = np.arange(len(points))
    if len(boxes) == 0:
        return [ObjectPrompt(box=None, point_indices=all_points)]
    if len(boxes) == 1:
        return [ObjectPrompt(box=boxes[0], point_indices=all_points)]
    x, y = points[:, 0][None, :], points[:, 1][None, :]
    inside = (x >= boxes[:, 0:1]) & (x <= boxes[:, 2:3]) & (y >= boxes[:, 1:2]) & (y <= boxes[:, 3:4])
    in_no_box = ~inside.any(axis=0)
    objects = [
        ObjectPrompt(box=box, point_indices=np.flatnonzero(inside[index] | (in_no_box & (labels == 0))))
        for index, box in enumerate(boxes)
    ]
    if np.any(in_no_box & (labels == 1)):
        objects.append(ObjectPrompt(box=None, point_indices=np.flatnonzero(in_no_box)))
    return objects


def prompt_token_groups(objects: Sequence[ObjectPrompt]) -> List[List[int]]:
    """Indices of ``objects`` grouped by their prompt-token layout (box or not, point count).

    A batch of prompts must share one token count; padding a shorter prompt with "not a
    point" tokens changes its masks, so objects are batched only with objects of the same shape.
    """
    groups: dict = {}
    for index, obj in enumerate(objects):
        groups.setdefault((obj.box is not None, len(obj.point_indices)), []).append(index)
    return list(groups.values())


# -- predictor --------------------------------------------------------------------------------


class Predictor:
    """Encode an image once (cached), prompt it many times.

    The model must already be on ``placement.device`` when encode or predict run (the model store
    moves it, its image encoder in ``placement.dtype``); the predictor only moves inputs there.
    Embeddings are cached in the dtype the encoder computed them in, keyed by it. The decoder,
    upsampling and thresholding run on that device in float32, so only boolean masks cross to the CPU.

    ``model_id`` names these exact weights in embedding cache keys (the model store passes one
    that changes when the file does); without it the model instance gets a random one.
    """

    def __init__(
        self,
        model: PromptableSegmenter,
        placement: Placement,
        cache: Optional[EmbeddingCache] = None,
        *,
        model_id: Optional[str] = None,
        encode_batch_size: Optional[int] = None,
    ) -> None:
        # eval() sets an attribute on every module (3 ms for MobileSAM), and even walking them all
        # to ask costs 1.5 ms, while the engine makes a predictor per click: the root's flag says.
        # (train() and eval() are only ever called on a whole model; the builders return it in eval.)
        self.model = model.eval() if model.training else model
        self.placement = placement
        #: Images per encoder pass in encode_many (None: the device's default); out of memory
        #: halves it, and it stays halved for this predictor's later calls.
        self.encode_batch_size = max(1, int(encode_batch_size or default_encode_batch(placement.device)))
        self.cache = cache if cache is not None else EmbeddingCache()
        if model_id is None:
            model_id = getattr(model, "cache_identity", None)
            if model_id is None:
                model_id = f"instance:{uuid.uuid4().hex}"
                model.cache_identity = model_id
        self.model_id = str(model_id)

    # -- encoding -------------------------------------------------------------------------------

    def cache_key(self, image: np.ndarray, image_key: Optional[str] = None) -> CacheKey:
        """``image_key``: the picture's ``image_content_key`` when the caller already holds it (the
        panel's picture): hashing a 4000x3000 photo on every click took 50-500 ms."""
        return CacheKey(
            image_hash=image_key or image_content_key(image),
            model_id=self.model_id,
            device=str(self.placement.device),
            dtype=dtype_name(self.model.encoder_dtype),
        )

    def encode(self, image: np.ndarray, image_key: Optional[str] = None) -> EncodedImage:
        """Embeddings of an (H, W, 3) uint8 RGB image; the encoder runs only on a cache miss.
        ``image_key``: see ``cache_key``."""
        image = _check_image(image)
        key = self.cache_key(image, image_key)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        with torch.inference_mode():
            pixels, input_size = self._model_input(image)
            features = self.model.encode_image(pixels)  # float32 in; the encoder casts to its dtype
        features = dict(features)
        encoded = EncodedImage(
            key=key,
            features=features,
            original_size=(int(image.shape[0]), int(image.shape[1])),
            input_size=input_size,
            nbytes=EncodedImage.size_of(features),
        )
        self.cache.put(encoded)
        return encoded

    def encode_many(self, images: Sequence[np.ndarray], max_batch: Optional[int] = None) -> List[EncodedImage]:
        """Embeddings of several images, in their order, equal to :meth:`encode` of each.

        Cached images are not encoded again (nor is a picture given twice); the others go
        through the encoder up to ``encode_batch_size`` (and ``max_batch``) at a time. Out of
        memory halves the batch size, frees what it can and tries the same images again; the
        smaller size is kept for later calls. Out of memory with one image propagates.
        """
        images = [_check_image(image) for image in images]
        keys = [self.cache_key(image) for image in images]
        found: List[Optional[EncodedImage]] = [self.cache.get(key) for key in keys]
        # each picture not cached -> where it is wanted (the first one is encoded)
        wanted: Dict[CacheKey, List[int]] = {}
        for index, (key, hit) in enumerate(zip(keys, found)):
            if hit is None:
                wanted.setdefault(key, []).append(index)
        todo = list(wanted)
        done = 0
        while done < len(todo):
            limit = self.encode_batch_size if max_batch is None else min(int(max_batch), self.encode_batch_size)
            chunk = todo[done:done + max(1, limit)]
            try:
                encoded = self._encode_together([images[wanted[key][0]] for key in chunk], chunk)
            except Exception as error:
                if len(chunk) <= 1 or not is_out_of_memory(error):
                    raise
                self.encode_batch_size = len(chunk) // 2
                encoded = None
            if encoded is None:
                # outside the handler: its traceback holds the failed pass's tensors until it ends
                release_memory()
                continue
            for key, item in zip(chunk, encoded):
                self.cache.put(item)
                for index in wanted[key]:
                    found[index] = item
            done += len(chunk)
        return [item for item in found if item is not None]

    def _encode_together(self, images: Sequence[np.ndarray], keys: Sequence[CacheKey]) -> List[EncodedImage]:
        """One encoder pass over ``images`` (their inputs stacked); each result owns its features."""
        with torch.inference_mode():
            inputs = [self._model_input(image) for image in images]
            pixels = torch.cat([model_input for model_input, _ in inputs])
            input_sizes = [input_size for _, input_size in inputs]
            del inputs  # the stacked copy is all the encoder needs
            per_image = self.model.encode_images(pixels)  # float32 in; the encoder casts to its dtype
            del pixels
            rows = [{name: _own_storage(tensor) for name, tensor in features.items()} for features in per_image]
        del per_image
        return [
            EncodedImage(
                key=key,
                features=row,
                original_size=(int(image.shape[0]), int(image.shape[1])),
                input_size=input_size,
                nbytes=EncodedImage.size_of(row),
            )
            for image, key, input_size, row in zip(images, keys, input_sizes, rows)
        ]

    def _model_input(self, image: np.ndarray) -> Tuple[Tensor, Tuple[int, int]]:
        """(1, 3, S, S) float32 encoder input on the device (S: the model's image size), and the
        (h, w) the picture takes in it before padding; see the module docstring for the geometry.
        Every picture gives the same S x S, so several stack into one batch."""
        image_size = int(self.model.image_size)
        device = self.placement.device
        mean = self.model.pixel_mean.to(device=device, dtype=torch.float32)
        std = self.model.pixel_std.to(device=device, dtype=torch.float32)
        if self.model.input_geometry == STRETCH:
            return stretched_pixels(image, image_size, mean, std, device), (image_size, image_size)
        resized = resize_image(image, image_size)
        input_size = (int(resized.shape[0]), int(resized.shape[1]))
        pixels = torch.from_numpy(resized).to(device).permute(2, 0, 1)[None].float()
        pixels = (pixels - mean) / std
        return F.pad(pixels, (0, image_size - input_size[1], 0, image_size - input_size[0])), input_size

    # -- prompting ------------------------------------------------------------------------------

    def predict(
        self,
        image_or_encoded: Union[np.ndarray, EncodedImage],
        prompts: Prompts,
        *,
        multimask_output: bool = True,
        options: Optional[Mapping] = None,
        mask_size: Optional[Tuple[int, int]] = None,
        image_key: Optional[str] = None,
    ) -> Prediction:
        """Masks for the prompts; see :func:`group_objects` for how points and boxes form objects.

        ``mask_size`` (height, width): the masks at that size instead of the picture's (the panel
        draws a 4000x3000 photo's masks at screen size; upsampling to full size cost more than the
        decoder). ``image_key``: see ``cache_key``.

        Objects with the same prompt tokens (box or not, number of points) go through one
        batched decoder call; nothing is padded, since "not a point" tokens change SAM's
        output, so each object's masks are exactly those of its own prompts sent alone.

        ``prompts.mask_input`` (low-res logits of an earlier prediction, (256, 256) or
        (1, 256, 256)) refines every object; (K, 256, 256) gives each of K objects its own.
        """
        if isinstance(image_or_encoded, EncodedImage):
            encoded = image_or_encoded
            self._check_encoded(encoded)
        else:
            encoded = self.encode(image_or_encoded, image_key)
        checked = check_prompts(prompts, encoded.original_size, int(self.model.image_size) // 4)
        objects = group_objects(checked.points, checked.labels, checked.boxes)
        if checked.mask_input is not None and checked.mask_input.shape[0] not in (1, len(objects)):
            raise InvalidPromptError(
                f"Got {checked.mask_input.shape[0]} previous masks for {len(objects)} objects; give one, or one per object."
            )
        options = dict(options or {})

        with torch.inference_mode():
            logits_parts, iou_parts, order = [], [], []
            for group in prompt_token_groups(objects):
                logits, iou = self._decode_group(encoded, checked, objects, group, multimask_output, options)
                logits_parts.append(logits)
                iou_parts.append(iou)
                order.extend(group)
            low_res = torch.cat(logits_parts) if len(logits_parts) > 1 else logits_parts[0]
            iou = torch.cat(iou_parts) if len(iou_parts) > 1 else iou_parts[0]
            # back to the order of `objects` (boxed first, then the box-less one)
            back = torch.as_tensor(np.argsort(order, kind="stable"), device=low_res.device)
            low_res, iou = low_res[back], iou[back]
            upscaled = logits_to_image(low_res, self.model.input_geometry, int(self.model.image_size),
                                       encoded.input_size, tuple(mask_size or encoded.original_size))
            masks = (upscaled > self.model.mask_threshold).cpu().numpy()
            limit = self.model.low_res_logit_limit
            low_res_logits = (low_res.float() if limit is None else low_res.float().clamp(-limit, limit)).cpu().numpy()
            scores = iou.float().cpu().numpy()
        object_boxes = [tuple(float(v) for v in obj.box) if obj.box is not None else None for obj in objects]
        return Prediction(masks=masks, scores=scores, low_res_logits=low_res_logits, object_boxes=object_boxes)

    def _decode_group(
        self,
        encoded: EncodedImage,
        checked: CheckedPrompts,
        objects: List[ObjectPrompt],
        group: List[int],
        multimask_output: bool,
        options: Mapping,
    ) -> Tuple[Tensor, Tensor]:
        device = self.placement.device
        members = [objects[index] for index in group]
        point_coords = point_labels = boxes = mask_input = None
        if len(members[0].point_indices):
            # every member has as many points (prompt_token_groups), so nothing is padded
            coords = np.stack([checked.points[obj.point_indices] for obj in members])
            labels = np.stack([checked.labels[obj.point_indices] for obj in members])
            coords = scale_coords(coords, encoded.original_size, encoded.input_size)
            point_coords = torch.as_tensor(coords, dtype=torch.float32).to(device)
            point_labels = torch.as_tensor(labels, dtype=torch.int32).to(device)
        if members[0].box is not None:
            corners = np.stack([obj.box for obj in members]).reshape(-1, 2, 2)
            corners = scale_coords(corners, encoded.original_size, encoded.input_size).reshape(-1, 4)
            boxes = torch.as_tensor(corners, dtype=torch.float32).to(device)
        if checked.mask_input is not None:
            masks = checked.mask_input if checked.mask_input.shape[0] == 1 else checked.mask_input[group]
            mask_input = torch.as_tensor(masks[:, None]).to(device=device, dtype=self.model.dtype)
            if mask_input.shape[0] != len(members):
                mask_input = mask_input.expand(len(members), -1, -1, -1)
        return self.model.decode(
            encoded.features,
            point_coords=point_coords,
            point_labels=point_labels,
            boxes=boxes,
            mask_input=mask_input,
            multimask_output=multimask_output,
            options=options,
        )

    def _check_encoded(self, encoded: EncodedImage) -> None:
        key = encoded.key
        if (key.model_id, key.device, key.dtype) != (self.model_id, str(self.placement.device), dtype_name(self.model.encoder_dtype)):
            raise ForeignEmbeddingsError(
                f"These embeddings were computed by another model or placement ({key.model_id} on {key.device}/{key.dtype}); "
                "encode the image with this predictor."
            )


def _own_storage(tensor: Tensor) -> Tensor:
    """The tensor, copied if it is a view into a larger one (an image's slice of a batch): a cached
    slice would keep the whole batch alive, and cost more memory than the cache counts."""
    if tensor.untyped_storage().nbytes() > tensor.numel() * tensor.element_size():
        return tensor.clone()
    return tensor


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise InvalidImageError(
            f"Expected an RGB image as an (H, W, 3) uint8 array, got shape {shape} ({dtype}); load it with sd_webui_sam.images.load_image."
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidImageError("The image is empty (zero width or height).")
    return np.ascontiguousarray(image)
