"""Text prompt -> boxes: the detector API the panel, the HTTP API and batch jobs call.

``load_detector(path, placement)`` reads a checkpoint (official ``.pth`` or a ``.safetensors``
copy), identifies Swin-T / Swin-B from its tensors and returns a :class:`Detector`;
``Detector.detect(image, "hand, face")`` returns one :class:`Detection` per found object,
in image pixels, best first.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from local_groundingdino.checkpoint import GroundingDinoSpec, build_model, identify_checkpoint
from local_groundingdino.model import GroundingDino, GroundingOutput
from local_groundingdino.tokenizer import CaptionTokens, WordPieceTokenizer, reference_caption_tokens, tokenize_caption
from sd_webui_sam import checkpoints
from sd_webui_sam.devices import Placement
from sd_webui_sam.errors import InvalidImageError, InvalidPromptError, UnrecognisedCheckpointError

logger = logging.getLogger(__name__)

DEFAULT_BOX_THRESHOLD = 0.3
DEFAULT_TEXT_THRESHOLD = 0.25
#: The detector was trained on images resized to a short side of 800 (long side at most 1333).
DEFAULT_SHORT_SIDE = 800
DEFAULT_MAX_SIDE = 1333


@dataclass(frozen=True)
class Detection:
    """One object a text prompt named: the detection type of the whole extension (the detector
    returns it; ``sd_webui_sam.text_prompt`` clips it to the image for the panel, API and batch)."""

    box: Tuple[float, float, float, float]   # xyxy, image pixels (clamped to the image, except the reference rule)
    phrase: str                              # the caption phrase this box matched
    score: float                             # box confidence in [0, 1]

    @property
    def has_area(self) -> bool:
        """False for a box clamped to a line (it lay wholly outside the picture): nothing to segment."""
        return self.box[2] - self.box[0] >= 1 and self.box[3] - self.box[1] >= 1


def detection_size(width: int, height: int, short_side: int = DEFAULT_SHORT_SIDE, max_side: int = DEFAULT_MAX_SIDE) -> Tuple[int, int]:
    """(width, height) the image is resized to: short side ``short_side`` unless the long side would pass ``max_side``."""
    short, long = min(width, height), max(width, height)
    target = float(short_side)
    if long / short * target > max_side:
        target = round(max_side * short / long)
    if target < 1:
        # a picture over max_side/2 times longer than wide (1x3000): one pixel across, the long side capped
        return (1, max_side) if width < height else (max_side, 1)
    if width < height:
        return int(target), int(target * height / width)
    return int(target * width / height), int(target)


def _check_image(image_rgb: np.ndarray) -> np.ndarray:
    if not isinstance(image_rgb, np.ndarray) or image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.size == 0:
        raise InvalidImageError("The image for text prompts must be an RGB picture (height x width x 3).")
    if image_rgb.dtype != np.uint8:
        raise InvalidImageError("The image for text prompts must have 8-bit colour channels.")
    return image_rgb


def _check_threshold(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise InvalidPromptError(f"The {name} must be between 0 and 1 (got {value}).")
    return value


class Detector:
    """A loaded GroundingDINO with its tokenizer and placement. Calls are serialised."""

    def __init__(self, model: GroundingDino, spec: GroundingDinoSpec, tokenizer: WordPieceTokenizer, placement: Placement,
                 name: str = "", short_side: int = DEFAULT_SHORT_SIDE, max_side: int = DEFAULT_MAX_SIDE):
        if tokenizer.size != spec.shape.bert.vocab_size:
            raise InvalidPromptError(
                f"The tokenizer vocabulary has {tokenizer.size} entries but {name or 'the model'} expects "
                f"{spec.shape.bert.vocab_size}; point the tokenizer setting at the matching vocab.txt or clear it."
            )
        self.spec = spec
        self.tokenizer = tokenizer
        self.placement = placement
        self.name = name
        self.short_side = short_side
        self.max_side = max_side
        self._lock = threading.Lock()
        self.model = model.place(placement.storage_device, placement.dtype).eval()

    @property
    def label(self) -> str:
        return f"{self.spec.label} ({self.name})" if self.name else self.spec.label

    def offload(self) -> None:
        """Move the weights to where they rest between calls (the CPU under offload)."""
        self.model.to(self.placement.storage_device)

    def _pixels(self, image_rgb: np.ndarray) -> torch.Tensor:
        height, width = image_rgb.shape[:2]
        size = detection_size(width, height, self.short_side, self.max_side)
        resized = Image.fromarray(image_rgb).resize(size, Image.BILINEAR) if size != (width, height) else Image.fromarray(image_rgb)
        pixels = torch.from_numpy(np.asarray(resized).copy()).to(self.placement.device).permute(2, 0, 1).float() / 255.0
        pixels = (pixels - self.model.pixel_mean.float()) / self.model.pixel_std.float()
        return pixels[None]  # float32: the backbone casts to its own dtype

    def run(self, image_rgb: np.ndarray, caption: str, *, like_reference: bool = False) -> Tuple[CaptionTokens, GroundingOutput]:
        """The raw model output for one image and caption (logits (1,Q,T), boxes (1,Q,4) cxcywh normalised).

        ``like_reference``: the caption is tokenized whole, as the reference extension does
        (see :func:`reference_caption_tokens`), instead of split into phrases.
        """
        image_rgb = _check_image(image_rgb)
        tokens = (reference_caption_tokens if like_reference else tokenize_caption)(self.tokenizer, caption)
        if tokens.truncated:
            logger.warning(
                "The text prompt is longer than %d tokens; phrases past the limit are ignored.", 256
            )
        with self._lock:
            self.model.to(self.placement.device)
            try:
                with torch.inference_mode():
                    output = self.model(self._pixels(image_rgb), tokens.model_inputs(self.placement.device))
            finally:
                if self.placement.offload_to_cpu:
                    self.offload()
        return tokens, output

    def detect(self, image_rgb: np.ndarray, caption: str, box_threshold: float = DEFAULT_BOX_THRESHOLD,
               text_threshold: float = DEFAULT_TEXT_THRESHOLD, nms_threshold: Optional[float] = None,
               like_reference: bool = False) -> List[Detection]:
        """Boxes of the objects named in ``caption`` ('hand, face' or 'hand . face'), best first.

        A box is kept when its best token score passes ``box_threshold``; it is named after the
        phrase with the highest token score, which must pass ``text_threshold`` (boxes matching
        no phrase that well are dropped). ``nms_threshold`` (IoU) removes overlapping boxes of
        the same phrase.

        ``like_reference``: the reference extension's answer instead (the caption tokenized
        whole, every box past ``box_threshold`` kept in the model's query order, not clamped,
        named by the text of its tokens past ``text_threshold``; no NMS). See
        :func:`postprocess_like_reference`.
        """
        box_threshold = _check_threshold("box threshold", box_threshold)
        text_threshold = _check_threshold("text threshold", text_threshold)
        if nms_threshold is not None:
            nms_threshold = _check_threshold("NMS threshold", nms_threshold)
        tokens, output = self.run(image_rgb, caption, like_reference=like_reference)
        height, width = image_rgb.shape[:2]
        if like_reference:
            return postprocess_like_reference(self.tokenizer, tokens, output, width, height, box_threshold, text_threshold)
        return postprocess(tokens, output, width, height, box_threshold, text_threshold, nms_threshold)


def postprocess(tokens: CaptionTokens, output: GroundingOutput, width: int, height: int, box_threshold: float,
                text_threshold: float, nms_threshold: Optional[float]) -> List[Detection]:
    probabilities = output.logits[0].float().sigmoid().cpu()        # Q, T
    boxes = output.boxes[0].float().cpu()                            # Q, 4
    scores = probabilities.max(-1)[0]
    spans = tokens.kept_phrase_spans()
    if not spans:
        return []
    phrase_scores = torch.stack([probabilities[:, start:end].max(-1)[0] for _, (start, end) in spans], -1)
    best_score, best_phrase = phrase_scores.max(-1)
    keep = (scores > box_threshold) & (best_score > text_threshold)
    if not bool(keep.any()):
        return []
    cx, cy, w, h = boxes[keep].unbind(-1)
    xyxy = torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), -1) * torch.tensor([width, height, width, height])
    xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
    xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
    kept_scores = scores[keep]
    phrase_index = best_phrase[keep]
    order = torch.argsort(kept_scores, descending=True)
    if nms_threshold is not None:
        from torchvision.ops import batched_nms  # only NMS needs torchvision; detection runs without it

        order = batched_nms(xyxy, kept_scores, phrase_index, nms_threshold)
    return [
        Detection(
            box=tuple(float(v) for v in xyxy[i].tolist()),
            phrase=tokens.phrases[spans[int(phrase_index[i])][0]],
            score=float(kept_scores[i]),
        )
        for i in order.tolist()
    ]


def postprocess_like_reference(tokenizer: WordPieceTokenizer, tokens: CaptionTokens, output: GroundingOutput,
                               width: int, height: int, box_threshold: float, text_threshold: float) -> List[Detection]:
    """Detections as GroundingDINO's own ``predict`` gives them, for drop-in routes.

    Every query whose best token score passes ``box_threshold`` is kept, in query order (a
    client's box indices refer to this order); its phrase is the decoded text of the tokens
    whose score passes ``text_threshold``, with "." removed (it can be empty; no box is
    dropped for it); boxes are in pixels and not clamped.
    """
    probabilities = output.logits[0].float().sigmoid().cpu()        # Q, T
    boxes = output.boxes[0].float().cpu()                            # Q, 4
    scores = probabilities.max(-1)[0]
    ids = torch.tensor(tokens.input_ids[: probabilities.shape[-1]], dtype=torch.long)
    detections = []
    for query in torch.nonzero(scores > box_threshold).flatten().tolist():
        cx, cy, w, h = boxes[query].tolist()
        box = ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
        named = ids[probabilities[query, : len(ids)] > text_threshold].tolist()
        detections.append(Detection(box=box, phrase=tokenizer.decode(named).replace(".", ""),
                                    score=float(scores[query])))
    return detections


def load_detector(path: Path, placement: Placement, tokenizer_dir: Optional[Path] = None,
                  short_side: int = DEFAULT_SHORT_SIDE, max_side: int = DEFAULT_MAX_SIDE) -> Detector:
    """Read, identify and build a GroundingDINO checkpoint. Needs no file but the checkpoint (and no network)."""
    path = Path(path)
    state_dict = checkpoints.load_state_dict(path)
    spec = identify_checkpoint({name: tuple(tensor.shape) for name, tensor in state_dict.items()})
    if spec is None:
        raise UnrecognisedCheckpointError(
            f"{path.name} is not a GroundingDINO checkpoint. Use groundingdino_swint_ogc.pth or "
            "groundingdino_swinb_cogcoor.pth in the models/grounding-dino folder."
        )
    model = build_model(spec, state_dict, path.name)
    del state_dict
    tokenizer = WordPieceTokenizer.from_directory(tokenizer_dir)
    return Detector(model, spec, tokenizer, placement, name=path.name, short_side=short_side, max_side=max_side)
