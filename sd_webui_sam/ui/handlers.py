"""What the panel's buttons do, as plain functions of plain values (no gradio in here).

Every handler returns a status message instead of raising: the panel shows the message, the
WebUI keeps working, and a traceback only ever reaches the console.
"""
from __future__ import annotations

import base64
import collections
import json
import re
import logging
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from sd_webui_sam import images, matting, render
from sd_webui_sam import masks as mask_ops
from sd_webui_sam.devices import is_out_of_memory
from sd_webui_sam.errors import InvalidImageError, InvalidPromptError, ModelNotFoundError, OutOfMemoryError, SamUserError
from sd_webui_sam.prompts import Prompts, read_panel_prompts

LOG = logging.getLogger("sd_webui_sam.ui")

CANDIDATE_COUNT = 3
#: Longest side of the candidate masks sent to the browser: about the canvas's size on screen,
#: so a 4000x3000 photo costs the same small transfer as a 1024x768 one.
DISPLAY_MASK_SIDE = 1024
#: Longest side of the overlay, mask and cut-out a click shows under the canvas (they show at
#: about 320 px): PNG-encoding three 1024 px outputs took ~120 ms of CPU after every click, which
#: the next click's decoder then had to share. Downloads and sends get the full-size ones.
OUTPUT_PREVIEW_SIDE = 640
DEFAULT_PICTURE_NAME = "picture"
#: Longest side of the overlay output (the mask and the cut-out keep the picture's size).
OVERLAY_SIDE = 2048


@dataclass(frozen=True)
class MaskTools:
    """The live mask tools; ``expand`` < 0 shrinks."""

    expand: int = 0
    feather: float = 0.0
    fill_holes: bool = False
    min_island: int = 0
    invert: bool = False
    soft_edges: bool = False     # the cut-out as an alpha matte (sd_webui_sam.matting)
    edge_band: float = 0         # its band in pixels each side of the edge; 0 = automatic


@dataclass
class Candidates:
    """The last preview: what the mask tools and the send buttons work on.

    ``masks`` may be smaller than the picture (a click's answer is decoded at display size only);
    ``full_size`` then makes the picture-sized masks, once, when an output needs them.
    """

    image: np.ndarray            # (H, W, 3) uint8, the picture the prompts were placed on
    masks: np.ndarray            # (3, h, w) bool, at the picture's size or smaller
    scores: np.ndarray           # (3,) float32
    image_digest: str = ""
    prompt_summary: str = ""
    picture_name: str = DEFAULT_PICTURE_NAME  # file-name stem for the downloads
    #: When it was made, in its picture's answers and resets (SessionImage.answered["generation"]).
    sequence: int = 0
    #: (K, 3, h, w) bool: each object's (box's) own candidates before merging, at the size of
    #: ``masks``; None: one object.
    object_masks: Optional[np.ndarray] = None
    full_size: Optional[Callable[[], np.ndarray]] = field(default=None, repr=False, compare=False)
    #: The picture at the outputs' preview size (made once per upload: SessionImage.display_pixels);
    #: None: resized from ``image`` when a preview needs it.
    display_picture: Optional[Callable[[], np.ndarray]] = field(default=None, repr=False, compare=False)
    _full_masks: Optional[np.ndarray] = field(default=None, repr=False, compare=False)
    _full_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def best(self) -> int:
        return int(np.argmax(self.scores))

    def full_mask(self, index: int) -> np.ndarray:
        """Candidate ``index`` at the picture's size, (H, W) bool."""
        if self.masks.shape[1:] == self.image.shape[:2] or self.full_size is None:
            return self.masks[index]
        with self._full_lock:  # the mask tools' renders may ask at once: decode once
            if self._full_masks is None:
                self._full_masks = self.full_size()
        return self._full_masks[index]

    def index(self, choice: Any) -> int:
        """The candidate a choice (index or None) means; out of range falls back to the best."""
        try:
            index = int(choice)
        except (TypeError, ValueError):
            return self.best
        return index if 0 <= index < len(self.masks) else self.best


@dataclass(frozen=True)
class ChosenOutputs:
    overlay: Image.Image         # RGB: the picture with the mask tinted
    mask: Image.Image            # L: 255 = selected (soft edge when feathered)
    cutout: Image.Image          # RGBA: the picture, transparent outside the mask


@dataclass(frozen=True)
class SessionImage:
    """The uploaded picture, decoded once when it arrives and kept server-side (a ``gr.State``).

    Clicks then send only their prompts: re-sending and re-decoding a 1024x768 picture on every
    click cost more than the mask decoder itself.
    """

    pixels: np.ndarray           # (H, W, 3) uint8
    digest: str
    #: How many previews were answered for this picture. The upload-time encode reports its time
    #: only if none was answered meanwhile, so its message never replaces a click's result.
    answered: collections.Counter = field(default_factory=collections.Counter, compare=False, repr=False)
    _display: list = field(default_factory=list, compare=False, repr=False)
    _display_lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    @property
    def size(self) -> Tuple[int, int]:
        """(width, height)."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])

    def display_pixels(self) -> np.ndarray:
        """The picture at the size of a click's outputs (``OUTPUT_PREVIEW_SIDE``), made once (scaling
        a 4000x3000 photo down took ~0.3 s)."""
        with self._display_lock:
            if not self._display:
                self._display.append(resized_picture(self.pixels, display_size(*self.size, OUTPUT_PREVIEW_SIDE)))
            return self._display[0]


class ImageFiles:
    """Output pictures written once, in a format chosen for what each is for, for gradio to serve.

    Gradio's own encoding of a PIL image is PNG at the default (slow) compression for every
    output; a noisy 1024x768 overlay took ~250 ms. Downloads go out as lossless PNG with fast
    compression (``lossless=False`` gives a JPEG, for pictures only ever looked at). Each file gets
    a folder of its own, so it can keep the name the user downloads it under. Gradio copies (or
    inlines) a returned file while it sends the reply, so only the most recent ``keep`` files are
    kept on disk.
    """

    def __init__(self, keep: int = 96) -> None:
        # Made on first use: the WebUI builds panels it never shows (API default arguments).
        self._directory: Optional[tempfile.TemporaryDirectory] = None
        self._written: "collections.deque[Path]" = collections.deque()
        self._keep = max(8, int(keep))
        self._lock = threading.Lock()
        self._counter = 0

    def write(self, image: Image.Image, name: str, *, lossless: bool = True) -> str:
        with self._lock:
            if self._directory is None:
                self._directory = tempfile.TemporaryDirectory(prefix="sd_webui_sam_outputs_")
            self._counter += 1
            number = self._counter
            root = Path(self._directory.name)
        folder = root / str(number)
        folder.mkdir()
        if lossless:
            path = folder / f"{name}.png"
            image.save(path, format="PNG", compress_level=1)
        else:
            path = folder / f"{name}.jpg"
            image.convert("RGB").save(path, format="JPEG", quality=90)
        with self._lock:
            self._written.append(path)
            stale = [self._written.popleft() for _ in range(max(0, len(self._written) - self._keep))]
        for old in stale:
            old.unlink(missing_ok=True)
            try:
                old.parent.rmdir()
            except OSError:
                pass
        return str(path)


def change_device(engine, preference: str) -> Tuple[str, bool]:
    """The panel's device choice (the reference's "Use CPU for SAM", for every device).

    Returns (status line, whether SAM now runs where the user asked).
    """
    try:
        placement = engine.set_device(preference)
    except SamUserError as error:
        return str(error), False
    actual = str(placement.device)
    note = f" {placement.precision_note}" if placement.precision_note else ""
    if preference not in ("auto", actual.split(":")[0]):
        return f"{preference} is not available here; SAM runs on {actual}.{note}", False
    return f"SAM runs on {actual} now.{note}", True


def describe_failure(error: BaseException) -> str:
    """One line for the panel; the traceback goes to the console only."""
    if isinstance(error, OutOfMemoryError) or is_out_of_memory(error):
        return ("Out of memory while running Segment Anything. Choose a smaller model, set the device to "
                "CPU in Settings > Segment Anything, or free memory and try again.")
    if isinstance(error, SamUserError):
        return str(error)
    LOG.exception("Segment Anything failed")
    return f"Segment Anything failed ({type(error).__name__}: {error}). Details are in the console."


def guarded(function: Callable[..., Any], failure: Callable[[str], Any]) -> Callable[..., Any]:
    """Wrap a handler so that any failure becomes ``failure(message)`` instead of a traceback."""

    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except BaseException as error:  # noqa: BLE001 - the page must never see a traceback
            if isinstance(error, (KeyboardInterrupt, SystemExit)):
                raise
            return failure(describe_failure(error))

    run.__name__ = getattr(function, "__name__", "handler")
    run.__doc__ = getattr(function, "__doc__", None)
    return run


# ----- inputs ----------------------------------------------------------------------------------


def to_rgb_array(image: Any, max_pixels: Optional[int] = None) -> np.ndarray:
    """Any value an image control can hold (PIL, ndarray, path, base64 string) -> (H,W,3) uint8."""
    if image is None:
        raise InvalidImageError("No image: upload a picture into 'Image' first.")
    if isinstance(image, SessionImage):
        return image.pixels
    # a str is only ever base64 to images.load_image: a path from a request never opens a server file
    if max_pixels is None:
        return images.load_image(image)
    return images.load_image(image, max_pixels)


def session_image(image: Any, max_pixels: Optional[int] = None) -> Optional[SessionImage]:
    """What the image control now holds, decoded once; None when it was cleared."""
    if image is None:
        return None
    pixels = to_rgb_array(image, max_pixels)
    return SessionImage(pixels=pixels, digest=images.image_content_key(pixels))


def encode_ahead(engine, model_name: Optional[str], image: Optional[SessionImage]) -> Optional[float]:
    """Compute (and cache) the picture's embedding before the first click.

    Seconds the encoder took; None when there was nothing to do, or when a click got there first
    and the embedding was already cached (so no stale "encoded" message replaces its result).
    """
    if image is None or not model_name:
        return None
    previews_before = image.answered["previews"]
    predictor = engine.predictor(model_name)
    misses = engine.embeddings.stats()["misses"]
    start = time.perf_counter()
    predictor.encode(image.pixels, image_key=image.digest)
    seconds = time.perf_counter() - start
    if engine.embeddings.stats()["misses"] == misses:
        return None
    image.display_pixels()  # what every click's outputs are drawn on, ready before the first one
    # One throw-away decode: the decoder's first run pays one-off setup costs (measured ~1 s on
    # a loaded CPU) that would otherwise land on the user's first click.
    width, height = image.size
    predictor.predict(image.pixels, Prompts(points=[(width / 2, height / 2)], labels=[1]), image_key=image.digest)
    if image.answered["previews"] != previews_before:
        return None
    return seconds


def decode_base64_image(text: str) -> Image.Image:
    """A base64 picture (the WebUI API's script arguments) as an RGBA PIL image, within the size limits.
    Kept for ``compat.generation``; the decoding itself is ``images.load_image_rgba``."""
    return Image.fromarray(images.load_image_rgba(text), "RGBA")


def parse_prompts(text: Optional[str], image_shape: Tuple[int, int]) -> Prompts:
    """The panel's prompt JSON -> ``Prompts``, checked against the image the prompts were placed on."""
    read = read_panel_prompts(text, image_shape)
    if not read.points and not read.boxes:
        raise InvalidPromptError(
            "No prompt: left-click the object (positive point), right-click to exclude (negative point), "
            "or drag a box around it, then press Preview."
        )
    if not read.boxes and not any(read.labels):
        raise InvalidPromptError("Only negative points: add at least one positive point (left click) or a box.")
    return Prompts(points=read.points, labels=read.labels, boxes=read.boxes)


def summarise(prompts) -> str:
    positive = sum(1 for label in prompts.labels if label == 1)
    negative = len(prompts.labels) - positive
    parts = []
    if positive:
        parts.append(f"{positive} positive point{'s' if positive != 1 else ''}")
    if negative:
        parts.append(f"{negative} negative point{'s' if negative != 1 else ''}")
    if prompts.boxes:
        parts.append(f"{len(prompts.boxes)} box{'es' if len(prompts.boxes) != 1 else ''}")
    return ", ".join(parts)


# ----- segmentation ----------------------------------------------------------------------------


def require_model(model_name: Optional[str]) -> str:
    if not model_name:
        raise ModelNotFoundError(
            "No SAM model: put a checkpoint (e.g. sam_vit_b_01ec64.pth) in the model directory and press the "
            "refresh button, or download one under 'Download official checkpoints'."
        )
    return model_name


def segment(engine, model_name: Optional[str], image: Any, prompts_json: Optional[str]) -> Candidates:
    """Run the decoder on the (cached) embedding; several objects are merged per candidate."""
    model_name = require_model(model_name)
    pixels = to_rgb_array(image, engine.settings.max_image_pixels)
    prompts = parse_prompts(prompts_json, pixels.shape[:2])
    # A click's answer is only ever drawn at screen size: decoding the masks at the picture's
    # size (4000x3000: more than the decoder itself) waits until an output needs them.
    width, height = pixels.shape[1], pixels.shape[0]
    shown = display_size(width, height)

    def decode(mask_size: Optional[Tuple[int, int]] = None):
        # a single-output model gives one candidate (never the one mask shown three times)
        # the panel's picture has its digest already: no click hashes its pixels again (50-500 ms at 4000x3000)
        key = image.digest if isinstance(image, SessionImage) else None
        return engine.segment(model_name, pixels, prompts, multimask_output=True, mask_size=mask_size, image_key=key)

    prediction = decode(None if shown == (width, height) else (shown[1], shown[0]))
    merged = prediction.merged()
    sequence = 0
    if isinstance(image, SessionImage):
        image.answered["previews"] += 1
        image.answered["generation"] += 1
        sequence = image.answered["generation"]
    return Candidates(
        sequence=sequence,
        image=pixels,
        masks=merged.masks[0],
        scores=merged.scores[0],
        image_digest=image.digest if isinstance(image, SessionImage) else images.image_content_key(pixels),
        prompt_summary=summarise(prompts),
        picture_name=picture_name(prompts_json),
        object_masks=np.asarray(prediction.masks, dtype=bool) if len(prediction.masks) > 1 else None,
        full_size=lambda: decode().merged().masks[0],
        display_picture=image.display_pixels if isinstance(image, SessionImage) else None,
    )


def picture_name(prompts_json: Optional[str]) -> str:
    """The uploaded file's name stem, which the panel's script sends with the prompts."""
    try:
        data = json.loads(prompts_json) if prompts_json else {}
    except (TypeError, ValueError):
        data = {}
    return picture_stem(data.get("name") if isinstance(data, dict) else None)


def candidate_label(index: int, score: float) -> str:
    return f"Mask {index + 1} (score {score:.3f})"


def superseded(candidates: Optional[Candidates], image: Any) -> bool:
    """Whether a newer preview of the same picture was answered, or the outputs were reset, since
    ``candidates`` were made: their outputs would then be stale."""
    if candidates is None or not isinstance(image, SessionImage) or not candidates.sequence:
        return False
    return image.answered["generation"] > candidates.sequence


def invalidate(image: Any) -> None:
    """The outputs were emptied: any candidates made before are stale (see ``superseded``)."""
    if isinstance(image, SessionImage):
        image.answered["generation"] += 1


def candidates_status(candidates: Candidates, index: Any) -> str:
    """The status line for the candidate in use: what made them, their scores, which one is used."""
    chosen = candidates.index(index)
    scores = ", ".join(f"{i + 1}: {s:.3f}" for i, s in enumerate(candidates.scores))
    count = len(candidates.scores)
    made = f"{count} mask{'s' if count != 1 else ''} from {candidates.prompt_summary} (scores {scores})."
    if chosen == candidates.best:
        return f"{made} Using Mask {chosen + 1}, the best."
    return f"{made} Using Mask {chosen + 1}; Mask {candidates.best + 1} scored best."


def picture_stem(name: Any) -> str:
    """A safe file-name stem from the uploaded file's name ('My photo.jpg' -> 'My_photo')."""
    text = Path(str(name or "")).name
    dot = text.rfind(".")
    stem = text[:dot] if dot > 0 else text  # the same rule as the panel's script (pictureStem)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:80]
    return stem or DEFAULT_PICTURE_NAME


def display_size(width: int, height: int, side: int = DISPLAY_MASK_SIDE) -> Tuple[int, int]:
    scale = min(1.0, side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def resized_picture(pixels: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 scaled to ``size`` (width, height); the same array when it already is."""
    if (pixels.shape[1], pixels.shape[0]) == tuple(size):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize(size, Image.BILINEAR, reducing_gap=2.0))


def resized_mask(mask: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """(h, w) bool at ``size`` (width, height): area-weighted, then thresholded, so thin parts
    survive better than with nearest-neighbour."""
    if (mask.shape[1], mask.shape[0]) == tuple(size):
        return np.asarray(mask, dtype=bool)
    grey = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8) * 255).resize(size, Image.BOX)
    return np.asarray(grey) >= 128


def packed_mask(mask: np.ndarray, size: Tuple[int, int]) -> str:
    """One candidate at ``size`` (width, height) as the panel's script reads it: the pixels row by
    row as bits (1 inside; np.packbits' order, the first pixel in the high bit), zlib-compressed,
    base64. A few KB, and the browser turns it into the canvas layer with one pass over the bits:
    an image format would cost an image decode and a canvas read-back on every click first."""
    small = np.ascontiguousarray(resized_mask(mask, size))  # a click's answer is at this size
    return base64.b64encode(zlib.compress(np.packbits(small).tobytes(), 1)).decode("ascii")


def candidates_payload(candidates: Candidates, token: Any = "", server_ms: Optional[float] = None) -> str:
    """The JSON the panel's script reads to draw the candidates on the canvas and in the strip.

    ``token`` tells one answer from the next even when the masks are identical. ``server_ms``:
    how long the server took to find them, which the script reports with its own timings.
    """
    height, width = candidates.image.shape[:2]
    size = display_size(width, height)
    return json.dumps({
        "token": str(token),
        "width": width,
        "height": height,
        "maskWidth": size[0],
        "maskHeight": size[1],
        "scores": [round(float(score), 4) for score in candidates.scores],
        "best": candidates.best,
        "name": candidates.picture_name,
        "masks": [packed_mask(mask, size) for mask in candidates.masks],
        "serverMs": None if server_ms is None else round(server_ms, 1),
    })


def hover_payload(engine, model_name: Optional[str], image: Any, prompts_json: Optional[str], token: Any = "") -> str:
    """The mask under the pointer before any click: the best candidate for the prompts plus the
    hovered point, at screen size, as JSON for the panel's script ("" when there is no picture).

    Nothing is kept and no answer counter moves: a hover never supersedes a click's candidates.
    """
    if not isinstance(image, SessionImage):
        return ""
    model_name = require_model(model_name)
    prompts = parse_prompts(prompts_json, image.pixels.shape[:2])
    size = display_size(*image.size)
    merged = engine.segment(model_name, image.pixels, prompts, multimask_output=True,
                            mask_size=(size[1], size[0]), image_key=image.digest).merged()
    best = int(np.argmax(merged.scores[0]))
    return json.dumps({"token": str(token), "maskWidth": size[0], "maskHeight": size[1],
                       "mask": packed_mask(merged.masks[0][best], size)})


def processed_mask(candidates: Candidates, index: int, tools: MaskTools) -> np.ndarray:
    """The chosen candidate after the mask tools: (H, W) float32 in 0..1 (soft only when feathered)."""
    if not 0 <= index < len(candidates.masks):
        index = candidates.best
    result = mask_ops.postprocess(
        candidates.full_mask(index), expand=tools.expand, feather=tools.feather, fill_holes=tools.fill_holes,
        min_island=tools.min_island, invert=tools.invert,
    )
    return np.asarray(result, dtype=np.float32)


def chosen_outputs(candidates: Candidates, index: int, tools: MaskTools) -> ChosenOutputs:
    """Mask and cut-out at the picture's size; the overlay, a picture to look at, at most
    ``OVERLAY_SIDE`` px long (a 4000x3000 overlay took 4 s of PNG encoding after every click)."""
    alpha = processed_mask(candidates, index, tools)
    height, width = alpha.shape
    size = display_size(width, height, OVERLAY_SIDE)
    if size == (width, height):
        picture, small_alpha = candidates.image, alpha
    else:
        picture = np.asarray(Image.fromarray(candidates.image).resize(size, Image.BILINEAR))
        small_alpha = np.asarray(Image.fromarray(np.ascontiguousarray(alpha, dtype=np.float32)).resize(size, Image.BILINEAR))
    return ChosenOutputs(
        overlay=Image.fromarray(render.overlay(picture, small_alpha)),
        mask=render.mask_image(alpha),
        cutout=(matting.cutout(candidates.image, alpha >= 0.5, "soft", tools.edge_band) if tools.soft_edges
                else render.cutout(candidates.image, alpha)),
    )


def preview_outputs(candidates: Candidates, index: int, tools: MaskTools) -> ChosenOutputs:
    """The outputs a click shows: at most ``OUTPUT_PREVIEW_SIDE`` px long, from the masks the
    browser drew, never from the full-size decoder. A picture no larger than that gets its
    full-size outputs, which cost no more.

    The tools' pixel sizes are scaled with the picture, so the preview looks like the full-size result.
    """
    height, width = candidates.image.shape[:2]
    size = display_size(width, height, OUTPUT_PREVIEW_SIDE)
    if size == (width, height):
        return chosen_outputs(candidates, index, tools)
    if not 0 <= index < len(candidates.masks):
        index = candidates.best
    scale = size[0] / width
    small_tools = replace(tools, expand=int(round(tools.expand * scale)), feather=tools.feather * scale,
                          min_island=int(round(tools.min_island * scale * scale)), edge_band=tools.edge_band * scale)
    mask = resized_mask(candidates.masks[index], size)
    alpha = np.asarray(mask_ops.postprocess(mask, expand=small_tools.expand, feather=small_tools.feather,
                                            fill_holes=small_tools.fill_holes, min_island=small_tools.min_island,
                                            invert=small_tools.invert), dtype=np.float32)
    picture = (candidates.display_picture() if candidates.display_picture is not None
               else resized_picture(candidates.image, size))
    return ChosenOutputs(
        overlay=Image.fromarray(render.overlay(picture, alpha)),
        mask=render.mask_image(alpha),
        cutout=(matting.cutout(picture, alpha >= 0.5, "soft", small_tools.edge_band) if tools.soft_edges
                else render.cutout(picture, alpha)),
    )


def is_full_size(candidates: Candidates) -> bool:
    """Whether a click's outputs (``preview_outputs``) are already the full-size ones."""
    height, width = candidates.image.shape[:2]
    return display_size(width, height, OUTPUT_PREVIEW_SIDE) == (width, height)


def full_mask_image(candidates: Candidates, index: int, tools: MaskTools) -> Image.Image:
    """The chosen mask after the tools at the picture's size (L): what is sent to inpaint."""
    return render.mask_image(processed_mask(candidates, candidates.index(index), tools))


def chosen_output_files(candidates: Candidates, index: int, tools: MaskTools, files: ImageFiles, *,
                        full_size: bool = True) -> Tuple[str, str, str]:
    """(overlay, mask, cut-out) as PNG files named '<picture>_overlay.png' and so on: gradio 4 offers
    a file's own name as the download name (the panel's script sets it on gradio 3).

    ``full_size`` False: ``preview_outputs``, what a click shows (the panel's script asks for the
    full-size files when one is downloaded)."""
    chosen = chosen_outputs(candidates, index, tools) if full_size else preview_outputs(candidates, index, tools)
    stem = candidates.picture_name
    return (
        files.write(chosen.overlay, f"{stem}_overlay"),
        files.write(chosen.mask, f"{stem}_mask"),
        files.write(chosen.cutout, f"{stem}_cutout"),
    )


# ----- send to img2img -------------------------------------------------------------------------

LEAVE_SETTINGS = "Leave my settings"
FIX_DETAIL = "Fix a detail (face, hand)"
REPLACE_OBJECT = "Replace the object"
#: The mask is sent as its soft-edge alpha matte (sd_webui_sam.matting), which then blends the
#: inpainted pixels in, instead of img2img's uniform mask blur (set to 0).
SOFT_EDGES_BLUR = "Soft edges as the mask blur"
INPAINT_PRESETS = (LEAVE_SETTINGS, FIX_DETAIL, REPLACE_OBJECT, SOFT_EDGES_BLUR)

#: img2img control elem_id -> value, for each preset. Only controls named here are changed.
PRESET_VALUES: Mapping[str, Mapping[str, Any]] = {
    LEAVE_SETTINGS: {},
    FIX_DETAIL: {
        "img2img_mask_blur": 4,
        "img2img_inpaint_full_res": "Only masked",
        "img2img_inpaint_full_res_padding": 32,
        "img2img_inpainting_fill": "original",
        "img2img_denoising_strength": 0.45,
    },
    REPLACE_OBJECT: {
        "img2img_inpaint_full_res": "Whole picture",
        "img2img_denoising_strength": 0.75,
    },
    SOFT_EDGES_BLUR: {"img2img_mask_blur": 0},
}
PRESET_TARGETS: Sequence[str] = (
    "img2img_mask_blur",
    "img2img_inpaint_full_res",
    "img2img_inpaint_full_res_padding",
    "img2img_inpainting_fill",
    "img2img_denoising_strength",
)


def soft_inpaint_mask(picture: Image.Image, mask_image: Image.Image) -> Image.Image:
    """The binary mask's alpha matte on ``picture`` as an 8-bit L mask (automatic band)."""
    matte = matting.alpha_matte(np.asarray(picture.convert("RGB")), np.asarray(mask_image) >= 128)
    return Image.fromarray(np.round(matte.alpha * 255).astype(np.uint8), mode="L")


def mask_to_send(image: Any, mask: Any, candidates: Optional[Candidates], index: Any, tools: MaskTools) -> Any:
    """The mask to hand on: the mask output when it has the picture's size; else the chosen
    candidate built at full size now (a click's outputs are shown small, and are built only once
    its mask is drawn and the clicks pause: a send can come before them)."""
    if image is None or candidates is None:
        return mask
    width, height = (image.size if isinstance(image, Image.Image) else (np.asarray(image).shape[1], np.asarray(image).shape[0]))
    if candidates.image.shape[:2] != (height, width):
        return mask
    if mask is not None:
        shown = mask.size if isinstance(mask, Image.Image) else (np.asarray(mask).shape[1], np.asarray(mask).shape[0])
        if shown == (width, height):
            return mask
    return full_mask_image(candidates, index, tools)


def inpaint_pair(image: Any, mask: Any) -> Tuple[Image.Image, Image.Image]:
    """The picture and the processed mask as img2img's 'Inpaint upload' wants them."""
    if mask is None:
        raise SamUserError("No mask yet: press Preview and pick a mask before sending it.")
    pixels = to_rgb_array(image)
    mask_image = images.mask_grey(mask if isinstance(mask, Image.Image) else Image.fromarray(np.asarray(mask)))
    if mask_image.size != (pixels.shape[1], pixels.shape[0]):
        raise SamUserError("The mask belongs to another picture: press Preview again for the current image.")
    return Image.fromarray(pixels), mask_image
