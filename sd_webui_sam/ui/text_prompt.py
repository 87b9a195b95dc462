"""The panel's text prompt: GroundingDINO boxes the user ticks, then SAM on exactly those boxes.

'Preview boxes' detects once and keeps the result (boxes, phrases, scores, the picture's digest)
in a gr.State; 'Segment kept boxes' uses the ticked boxes from that state and never detects again,
so the numbers the user ticked are the boxes that get segmented. Points on the image refine the
box that contains them (the predictor's rule).

The handler functions (``preview_boxes``, ``kept_boxes``, ``segment_kept``) take plain values
and are what the tests drive; ``build_section`` only makes components and wires them.

Many kept boxes are segmented BOXES_PER_CALL at a time, with progress after each part and the
section's Stop (or the host's Interrupt) checked between parts; only the merged mask and each
object's best mask are kept, so memory grows with the boxes by one plane each, not three.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from local_groundingdino.store import CATALOGUE
from sd_webui_sam import images, render
from sd_webui_sam.compat import gradio_compat as grc
from sd_webui_sam.engine import Engine
from sd_webui_sam.errors import InvalidPromptError, JobStopped, SamUserError
from sd_webui_sam.prompts import check_caption, read_panel_prompts
from sd_webui_sam.predictor import Prediction
from sd_webui_sam.text_prompt import Detection, detect_boxes, no_boxes_message, segment_boxes
from sd_webui_sam.ui import handlers
from sd_webui_sam.ui.elements import CHOICES, elem, status_html
from sd_webui_sam.ui.jobs import StopSignal, guarded_with_progress

PER_OBJECT = "Per object"
MERGED = "Merged"
MODES = (MERGED, PER_OBJECT)
#: CSS px of the box picture, and of the scrolling box list beside it (style.css).
BOX_IMAGE_HEIGHT = 360
#: Kept boxes decoded per call: small enough for progress and Stop every few seconds on a CPU.
BOXES_PER_CALL = 16
BOX_COLOURS = ((255, 64, 64), (64, 160, 255), (255, 200, 0), (80, 220, 100), (200, 90, 255), (255, 140, 40))


@dataclass(frozen=True)
class BoxSelection:
    """One 'Preview boxes' result: what the tick boxes refer to."""

    image_digest: str
    caption: str
    detector: str
    boxes: Tuple[Detection, ...]

    def labels(self) -> List[str]:
        return [box_label(index, box) for index, box in enumerate(self.boxes)]


@dataclass
class BoxPreview:
    image: Image.Image
    selection: BoxSelection
    message: str


@dataclass
class TextSegmentation:
    candidates: handlers.Candidates          # objects merged per candidate (the panel's usual three)
    objects: List[Tuple[Image.Image, str]]   # per object: RGBA cut-out of its best mask, label
    object_masks: np.ndarray                 # (K, H, W) bool
    message: str


def box_label(index: int, box: Detection) -> str:
    return f"{index + 1}: {box.phrase} ({box.score:.2f})"


def _index_of(label: Any) -> Optional[int]:
    try:
        return int(str(label).split(":", 1)[0]) - 1
    except (TypeError, ValueError):
        return None


def draw_boxes(image: np.ndarray, boxes: Sequence[Detection]) -> Image.Image:
    """The picture with each box outlined and labelled '<number>: <phrase>'."""
    picture = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(picture)
    width = max(2, round(max(picture.size) / 300))
    font = ImageFont.load_default()
    for index, box in enumerate(boxes):
        colour = BOX_COLOURS[index % len(BOX_COLOURS)]
        x1, y1, x2, y2 = box.box
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        text = f"{index + 1}: {box.phrase}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        label_y = y1 - (bottom - top) - 4 if y1 - (bottom - top) - 4 >= 0 else y1
        draw.rectangle([x1, label_y, x1 + (right - left) + 4, label_y + (bottom - top) + 4], fill=colour)
        draw.text((x1 + 2, label_y + 2 - top), text, fill=(0, 0, 0), font=font)
    return picture


def preview_boxes(engine: Engine, detector: Optional[str], image: Any, caption: Any, box_threshold: float,
                  text_threshold: float) -> BoxPreview:
    """Detect once; the result is kept and reused exactly by the segmentation."""
    caption = check_caption(caption)
    pixels = handlers.to_rgb_array(image, engine.settings.max_image_pixels)
    name = engine.resolve_detector(detector or None)
    detected = detect_boxes(engine, name, pixels, caption, box_threshold, text_threshold)
    boxes = detected.boxes
    selection = BoxSelection(images.image_content_key(pixels), caption, name, tuple(boxes))
    if not boxes:
        return BoxPreview(Image.fromarray(pixels), selection, no_boxes_message(caption, box_threshold))
    phrases = sorted({box.phrase for box in boxes})
    message = " ".join(filter(None, (
        f"{len(boxes)} box{'es' if len(boxes) != 1 else ''} for {', '.join(phrases)}.", detected.dropped_note(),
        "Untick the ones to leave out, then press 'Segment kept boxes'.")))
    return BoxPreview(draw_boxes(pixels, boxes), selection, message)


def kept_boxes(selection: Optional[BoxSelection], ticked: Optional[Sequence[Any]]) -> List[Detection]:
    """The ticked boxes of the last preview, in their numbered order."""
    return [selection.boxes[i] for i in kept_indices(selection, ticked)]


def kept_indices(selection: Optional[BoxSelection], ticked: Optional[Sequence[Any]]) -> List[int]:
    if selection is None:
        raise InvalidPromptError("Press 'Preview boxes' first: the text prompt segments the boxes you keep there.")
    if not selection.boxes:
        raise InvalidPromptError("The last 'Preview boxes' found no boxes; lower the box threshold and preview again.")
    indices = sorted({i for i in (_index_of(label) for label in (ticked or [])) if i is not None and 0 <= i < len(selection.boxes)})
    if not indices:
        raise InvalidPromptError("No box is ticked: tick at least one box under 'Keep boxes'.")
    return indices


def segment_in_parts(engine: Engine, sam_model: str, pixels: np.ndarray, boxes: Sequence[Any], points, labels, *,
                     interrupt: Optional[Callable[[], bool]] = None,
                     progress: Optional[Callable[[int, int], None]] = None) -> Tuple[Prediction, np.ndarray]:
    """(all objects merged per candidate, each object's best mask (K,H,W)) for ``boxes`` and points.

    Without points, BOXES_PER_CALL boxes per decode on the one cached embedding: ``progress(done,
    total)`` after each part, ``interrupt()`` checked before the next. With points one call does
    all (a point refines whichever box holds it)."""
    parts = [list(boxes)]
    if not len(points):
        parts = [list(boxes[i:i + BOXES_PER_CALL]) for i in range(0, len(boxes), BOXES_PER_CALL)] or [[]]
    merged_masks = merged_logits = None
    score_sum = None
    objects: List[np.ndarray] = []
    done = 0
    for part in parts:
        if interrupt is not None and interrupt():
            raise JobStopped(f"Stopped after {done} of {len(boxes)} boxes; press 'Segment kept boxes' again to redo them.")
        prediction = segment_boxes(engine, sam_model, pixels, part, points, labels)
        merged = prediction.merged()
        count = len(prediction.scores)
        if merged_masks is None:
            merged_masks, merged_logits, score_sum = merged.masks, merged.low_res_logits, merged.scores * count
        else:
            merged_masks = merged_masks | merged.masks
            merged_logits = np.maximum(merged_logits, merged.low_res_logits)
            score_sum = score_sum + merged.scores * count
        objects.append(prediction.best_per_object().masks[:, 0])
        done += len(part)
        if progress is not None:
            progress(done, len(boxes))
    total = sum(len(masks) for masks in objects)
    merged = Prediction(masks=merged_masks, scores=(score_sum / max(total, 1)).astype(np.float32),
                        low_res_logits=merged_logits, object_boxes=[None])
    return merged, np.concatenate(objects)


def segment_kept(engine: Engine, sam_model: Optional[str], image: Any, selection: Optional[BoxSelection],
                 ticked: Optional[Sequence[Any]], prompts_json: Optional[str] = None, mode: str = MERGED, *,
                 interrupt: Optional[Callable[[], bool]] = None,
                 progress: Optional[Callable[[int, int], None]] = None) -> TextSegmentation:
    """SAM on the kept boxes (batched decodes on the cached embedding), points refining their box;
    ``progress(boxes done, total)`` and ``interrupt`` as in segment_in_parts."""
    sam_model = handlers.require_model(sam_model)
    pixels = handlers.to_rgb_array(image, engine.settings.max_image_pixels)
    numbers = kept_indices(selection, ticked)
    boxes = [selection.boxes[i] for i in numbers]
    if selection.image_digest != images.image_content_key(pixels):
        raise InvalidPromptError("The picture changed since 'Preview boxes'; press 'Preview boxes' again.")
    clicked = read_panel_prompts(prompts_json, pixels.shape[:2])
    points, labels, drawn = clicked.points, clicked.labels, clicked.boxes
    merged, object_masks = segment_in_parts(engine, sam_model, pixels, [b.box for b in boxes] + drawn, points, labels,
                                            interrupt=interrupt, progress=progress)
    candidates = handlers.Candidates(
        image=pixels, masks=merged.masks[0], scores=merged.scores[0],
        image_digest=selection.image_digest,
        prompt_summary=f"{len(boxes)} text box{'es' if len(boxes) != 1 else ''}"
                       + (f", {len(points)} point{'s' if len(points) != 1 else ''}" if points else ""),
    )
    names = [f"{i + 1}: {selection.boxes[i].phrase}" for i in numbers]
    names += [f"drawn box {i + 1}" for i in range(len(drawn))]
    names += ["points"] * (len(object_masks) - len(names))
    gallery = []
    if mode == PER_OBJECT:
        gallery = [(render.cutout(pixels, mask), name) for mask, name in zip(object_masks, names)]
    message = (f"{len(object_masks)} object{'s' if len(object_masks) != 1 else ''} from {candidates.prompt_summary}"
               + (", one cut-out each below." if mode == PER_OBJECT else ", merged into one mask."))
    return TextSegmentation(candidates=candidates, objects=gallery, object_masks=object_masks, message=message)


# ----- gradio ----------------------------------------------------------------------------------


def _detector_choices(engine: Callable[[], Any]) -> List[str]:
    try:
        return list(engine().list_detectors())
    except Exception as error:  # a broken folder must not break the tab
        handlers.describe_failure(error)
        return []


def _catalogue() -> Dict[str, str]:
    return {entry.label: entry.file_name for entry in CATALOGUE}


def build_section(panel: Any) -> Dict[str, Any]:
    """The text-prompt accordion inside ``panel`` (call within the panel's container)."""
    import gradio as gr  # heavy: only building the UI needs it

    options = panel.options
    prefix, engine = options.prefix, options.engine
    choices = _detector_choices(engine)
    catalogue = _catalogue()
    parts: Dict[str, Any] = {}
    # Opening the section is the only "enable" there is: its buttons work as soon as it is open.
    with gr.Accordion("Text prompt (GroundingDINO)", open=False, elem_id=elem(prefix, "text_section")):
        with gr.Row():
            parts["detector"] = gr.Dropdown(label="GroundingDINO model", choices=choices,
                                            value=choices[0] if choices else None, elem_id=elem(prefix, "text_model"))
            parts["refresh"] = gr.Button("Refresh models", elem_id=elem(prefix, "text_refresh"), scale=0, min_width=130)
        with gr.Row():
            parts["download_choice"] = gr.Dropdown(label="Download GroundingDINO", choices=list(catalogue),
                                                   value=next(iter(catalogue)), elem_id=elem(prefix, "text_download_choice"))
            parts["download"] = gr.Button("Download", elem_id=elem(prefix, "text_download"))
        parts["caption"] = gr.Textbox(label="Text prompt", placeholder="hand, face", lines=1,
                                      elem_id=elem(prefix, "text_caption"))
        with gr.Row():
            parts["box_threshold"] = gr.Slider(0.0, 1.0, value=0.3, step=0.01, label="Box threshold",
                                               elem_id=elem(prefix, "text_box_threshold"))
            parts["text_threshold"] = gr.Slider(0.0, 1.0, value=0.25, step=0.01, label="Text threshold",
                                                elem_id=elem(prefix, "text_text_threshold"))
        with gr.Row():
            parts["preview_boxes"] = gr.Button("Preview boxes", elem_id=elem(prefix, "text_preview_boxes"))
            parts["mode"] = gr.Radio(label="Masks", choices=list(MODES), value=MERGED, elem_id=elem(prefix, "text_mode"))
            parts["segment"] = gr.Button("Segment kept boxes", variant="primary", elem_id=elem(prefix, "text_segment"))
            parts["stop"] = gr.Button("Stop", elem_id=elem(prefix, "text_stop"), scale=0, min_width=80)
        with gr.Row(elem_classes=["sam-text-boxes-row"]):
            with gr.Column(scale=3, min_width=320):
                parts["box_image"] = grc.image_output("Boxes", elem_id=elem(prefix, "text_boxes"), height=BOX_IMAGE_HEIGHT)
            # The box list scrolls inside a fixed height beside the picture, however many boxes came.
            with gr.Column(scale=2, min_width=220):
                with gr.Row():
                    parts["keep_all"] = gr.Button("Select all", size="sm", elem_id=elem(prefix, "text_keep_all"),
                                                  min_width=60)
                    parts["keep_none"] = gr.Button("Select none", size="sm", elem_id=elem(prefix, "text_keep_none"),
                                                   min_width=60)
                parts["keep"] = gr.CheckboxGroup(label="Keep boxes", choices=[], value=[], elem_id=elem(prefix, "text_keep"),
                                                 elem_classes=["sam-box-list"])
        parts["objects"] = grc.gallery("Objects", elem_id=elem(prefix, "text_objects"), columns=4, height="auto")
        parts["status"] = gr.HTML("", elem_id=elem(prefix, "text_status"), elem_classes=["sam-status"])
        parts["selection"] = gr.State(None)
        if options.sd_controls:
            with gr.Accordion("Cut out after generation", open=False, elem_id=elem(prefix, "cutout_section")):
                parts["cutout_enabled"] = gr.Checkbox(
                    label="After each generated image, segment the text prompt below and save the RGBA cut-out "
                          "and the mask beside it", value=False, elem_id=elem(prefix, "cutout_enabled"))
                parts["cutout_caption"] = gr.Textbox(label="Cut out", placeholder="person", lines=1,
                                                     elem_id=elem(prefix, "cutout_caption"))
                with gr.Row():
                    parts["cutout_soft"] = gr.Checkbox(label="Soft edges (alpha matte: hair, fur, glass)", value=False,
                                                       elem_id=elem(prefix, "cutout_soft"))
                    parts["cutout_band"] = gr.Slider(label="Edge band (px each side, 0 = automatic)", minimum=0,
                                                     maximum=60, step=1, value=0, elem_id=elem(prefix, "cutout_band"))
    _wire(panel, parts, engine, status_html, grc)
    return parts


def cutout_script_args(panel: Any, parts: Dict[str, Any]) -> List[Any]:
    """What 'cut out after generation' adds to the script's arguments (script_args.CUTOUT_ARGS)."""
    if "cutout_enabled" not in parts:
        return []
    return [parts["cutout_enabled"], parts["cutout_caption"], panel.model, parts["detector"], parts["box_threshold"],
            parts["text_threshold"]]


def cutout_alpha_script_args(parts: Dict[str, Any]) -> List[Any]:
    """The cut-out's soft edges, after every other script argument (script_args.CUTOUT_ALPHA_ARGS)."""
    return [parts["cutout_soft"], parts["cutout_band"]] if "cutout_soft" in parts else []


def _wire(panel: Any, parts: Dict[str, Any], engine: Callable[[], Any], status_html: Callable, grc: Any) -> None:
    import gradio as gr  # heavy: only building the UI needs it

    prefix = panel.options.prefix
    answers = itertools.count(1)
    signal = StopSignal(panel.options.host_interrupted)
    parts["signal"] = signal

    def refresh(current):
        names = _detector_choices(engine)
        return grc.update(choices=names, value=current if current in names else (names[0] if names else None))

    grc.listen(parts["refresh"].click, refresh, [parts["detector"]], [parts["detector"]], show_progress=False)

    def download(label, current, progress=gr.Progress()):
        file_name = _catalogue().get(label)
        if file_name is None:
            raise SamUserError("Choose a GroundingDINO checkpoint to download.")

        def report(done: int, total: Optional[int]) -> None:
            if total:
                progress(done / total, desc=f"Downloading {file_name}")

        target = engine().download_detector(file_name, progress=report)
        names = _detector_choices(engine)
        return (grc.update(choices=names, value=target.name if target.name in names else current),
                status_html(f"Downloaded {target.name} to {target.parent}."))

    grc.listen(parts["download"].click,
               handlers.guarded(download, lambda message: (grc.update(), status_html(message, error=True))),
               [parts["download_choice"], parts["detector"]], [parts["detector"], parts["status"]])

    def preview(detector, image, caption, box_threshold, text_threshold):
        result = preview_boxes(engine(), detector, image, caption, box_threshold, text_threshold)
        labels = result.selection.labels()
        failed = not labels
        return (result.image, grc.update(choices=labels, value=labels), result.selection,
                status_html(result.message, error=failed))

    def preview_failure(message):
        return None, grc.update(choices=[], value=[]), None, status_html(message, error=True)

    grc.listen(parts["preview_boxes"].click, handlers.guarded(preview, preview_failure),
               [parts["detector"], panel.input_image, parts["caption"], parts["box_threshold"],
                parts["text_threshold"]],
               [parts["box_image"], parts["keep"], parts["selection"], parts["status"]])

    def keep_all(selection):
        return grc.update(value=selection.labels() if selection is not None else [])

    grc.listen(parts["keep_all"].click, keep_all, [parts["selection"]], [parts["keep"]], show_progress=False)
    def keep_none():
        return grc.update(value=[])

    grc.listen(parts["keep_none"].click, keep_none, [], [parts["keep"]], show_progress=False)

    # gradio finds a Progress parameter only among the positional ones: it comes first, the inputs follow.
    def segment(progress=gr.Progress(), *inputs):
        model, image, prompts_json, selection, ticked, mode, expand, feather, fill_holes, min_island, invert, *soft = inputs
        soft_edges, edge_band = (list(soft) + [False, 0])[:2]

        def show(done: int, total: int) -> None:
            progress(done / total, desc=f"{done}/{total} boxes segmented")

        result = segment_kept(engine(), model, image, selection, ticked, prompts_json, mode, interrupt=signal.start(),
                              progress=show)
        found = result.candidates
        tools = handlers.MaskTools(expand=int(expand or 0), feather=float(feather or 0), fill_holes=bool(fill_holes),
                                   min_island=int(min_island or 0), invert=bool(invert), soft_edges=bool(soft_edges),
                                   edge_band=float(edge_band or 0))
        chosen = handlers.chosen_outputs(found, found.best, tools)
        return (handlers.candidates_payload(found, token=f"text-{next(answers)}"), grc.update(value=CHOICES[found.best]),
                found, chosen.overlay, chosen.mask, chosen.cutout, result.objects, status_html(result.message))

    def segment_failure(message):
        return (grc.update(), grc.update(), grc.update(), grc.update(), grc.update(), grc.update(), [],
                status_html(message, error=True))

    inputs = [panel.model, panel.input_image, panel.prompts, parts["selection"], parts["keep"],
              parts["mode"], *panel.tools]
    # The clicks live in the browser: the panel's collect() puts them into the prompts input.
    collect_js = (
        f"(...args) => {{ const values = window.samPanel.collect({prefix!r}, args, {inputs.index(panel.prompts)}, "
        f"{len(inputs)}); if (window.samPanel.previewDone) window.samPanel.previewDone({prefix!r}); return values; }}"
    )
    masks_data = panel.extra["masks_data"]
    event = grc.listen(parts["segment"].click, guarded_with_progress(segment, segment_failure), inputs,
               [masks_data, panel.choice, panel.state, panel.overlay, panel.mask, panel.cutout, parts["objects"],
                parts["status"]], js=collect_js)
    grc.listen(event.then, None, [masks_data], [], js=f"(data) => window.samPanel.showCandidates({prefix!r}, data)")
    # Off the queue, so it answers while the segmentation still holds the queue's worker.
    grc.listen(parts["stop"].click, signal.stop, [], [], queue=False)
