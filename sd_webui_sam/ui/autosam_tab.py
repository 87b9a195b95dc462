"""The panel's "Auto SAM" tab: segment everything (EditAnything), semantic segmentation refined by
SAM, image layout (PNG layers + PSD) and mask by category.

The handlers (``run_*``) are plain functions of the Engine and the control values, so tests call
them directly; ``build`` only creates components and wires them. A category mask can be handed to
the main panel (its image and mask), from where the panel's own send-to-inpaint / ControlNet
controls take it on. A sub-tab whose own picture is empty works on the panel's picture (its
``image_state``), and its status says so. A single-image layout is also offered to the browser as
``<picture>_layers.zip`` (``LayoutDownloads``). Inside the WebUI with ControlNet, the colour map,
the EditAnything map or the SAM-refined semantic map can be sent to a ControlNet unit as its
control image (``control_map_components``, the ``script_args.CONTROL_MAP_ARGS``).

Every run shows its progress (crops and point batches done, and the time left from this run's
own speed) and stops at the next point batch when Stop (or the host's Interrupt) is pressed.
The expected time of the next run is shown before it starts, from the speed this session
measured (``SpeedRecord``), or after 'Estimate time' times one encode and one point batch.
"""
from __future__ import annotations

import collections
import re
import shutil
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from sd_webui_sam import render
from sd_webui_sam.autosam import pipelines, semantic
from sd_webui_sam.autosam.generator import AutoSamConfig
from sd_webui_sam.autosam.progress import (
    GenerationProgress,
    JobControl,
    SpeedRecord,
    WorkPlan,
    calibrate,
    default_points_per_side,
    format_seconds,
    work_plan,
)
from sd_webui_sam.autosam.segmenters import (
    NO_SEGMENTER_MESSAGE,
    PROCESSORS,
    PreprocessorFinder,
    UploadedMapSegmenter,
    discover_segmenters,
    get_segmenter,
    no_host_preprocessors,
)
from sd_webui_sam.errors import InvalidImageError, InvalidPromptError, SamUserError
from sd_webui_sam.script_args import CONTROL_MAP_ARGS
from sd_webui_sam.ui import handlers
from sd_webui_sam.ui.elements import elem, status_html, unit_choices
from sd_webui_sam.ui.jobs import StopSignal, guarded_with_progress

__all__ = [
    "COLOUR_MAP", "CONFIG_FIELDS", "CONTROL_MAP_KINDS", "EDITANYTHING_MAP", "PANEL_PICTURE_NOTE", "REFINED_MAP",
    "UPLOADED", "ConfigField", "LayoutDownloads", "build", "category_choices", "config_from_values",
    "control_map_components", "control_map_for", "estimate_time", "expected_time", "picture_for", "planned_work",
    "random_maps", "run_category", "run_layout", "run_random", "run_semantic", "segmenter_choices", "selection_from",
    "to_panel", "zip_layout",
]

UPLOADED = "Uploaded colour-coded map"
COLOUR_MAP = "Random colour map"
EDITANYTHING_MAP = "EditAnything map"
REFINED_MAP = "SAM-refined semantic map"
#: The maps a ControlNet unit can take, in the order the Radio shows them.
CONTROL_MAP_KINDS = (COLOUR_MAP, EDITANYTHING_MAP, REFINED_MAP)
DATASETS = ("ade20k", "coco")
LAYOUT_MODES = ("Single image", "Batch folder")
#: px: wide enough for a setting's label, help line and number box.
CONFIG_MIN_WIDTH = 220
#: A sub-tab whose own picture is empty works on the panel's, and its status starts with this.
PANEL_PICTURE_NOTE = "Using the panel's picture (this tab's own is empty)."
#: How many single-image layouts stay on disk for the browser to download.
KEPT_DOWNLOADS = 4


@dataclass(frozen=True)
class ConfigField:
    name: str            # the generator's parameter (and the control's elem_id)
    kind: str            # "int" | "float" | "slider"
    default: float
    label: str           # what the panel shows
    help: str            # one line under the label


# The reference's "Auto SAM Config" accordion, in its order and with its defaults; the label and
# help each setting shows in the panel (every tab that offers the settings takes them from here).
CONFIG_FIELDS: Tuple[ConfigField, ...] = (
    ConfigField("points_per_side", "int", 32, "Points per side",
                "A grid of N x N prompt points; more finds smaller objects, the time grows with N squared."),
    ConfigField("points_per_batch", "int", 64, "Points per decoder call",
                "Points the mask decoder takes at once: more is faster but needs more memory."),
    ConfigField("pred_iou_thresh", "slider", 0.88, "Quality threshold",
                "Masks whose predicted quality (IoU) is lower are dropped; lower keeps more, rougher masks."),
    ConfigField("stability_score_thresh", "slider", 0.95, "Stability threshold",
                "Masks that change a lot when their cut-off moves are dropped; lower keeps more of them."),
    ConfigField("stability_score_offset", "float", 1.0, "Stability offset",
                "How far the cut-off is moved to measure a mask's stability."),
    ConfigField("box_nms_thresh", "slider", 0.7, "Duplicate overlap",
                "Masks whose boxes overlap more than this count as duplicates; the better one is kept."),
    ConfigField("crop_n_layers", "int", 0, "Crop layers",
                "0: the whole picture only; 1 or more also segments zoomed crops to find small objects (slower)."),
    ConfigField("crop_nms_thresh", "slider", 0.7, "Duplicate overlap between crops",
                "The same, for masks found in different crops."),
    ConfigField("crop_overlap_ratio", "slider", 512 / 1500, "Crop overlap",
                "How much neighbouring crops overlap, as a share of the crop's size."),
    ConfigField("crop_n_points_downscale_factor", "int", 1, "Fewer points in crops",
                "Each crop layer divides the points per side by this factor."),
    ConfigField("min_mask_region_area", "int", 0, "Smallest region, px",
                "Islands and holes smaller than this many pixels are removed from each mask (0: off)."),
)


def config_from_values(values: Sequence[Any]) -> AutoSamConfig:
    """The accordion's values (in CONFIG_FIELDS order) -> validated AutoSamConfig."""
    chosen: Dict[str, Any] = {}
    for spec, value in zip(CONFIG_FIELDS, values):
        if value is None or value == "":
            continue
        try:
            chosen[spec.name] = int(value) if spec.kind == "int" else float(value)
        except (TypeError, ValueError):
            raise InvalidPromptError(f"AutoSAM setting '{spec.label}' must be a number.") from None
    return AutoSamConfig.from_mapping(chosen)


def picture_for(image: Any, panel_image: Any) -> Tuple[Any, str]:
    """The tab's own picture when one was uploaded, else the panel's current one (a
    ``handlers.SessionImage``), and the words the status starts with when it is the panel's."""
    if image is not None:
        return image, ""
    if panel_image is not None:
        return panel_image, PANEL_PICTURE_NOTE + " "
    return None, ""


def _rgb(image: Any, engine: Any, what: str = "Image") -> np.ndarray:
    if image is None:
        where = " (or into the panel above)" if what == "Image" else ""
        raise InvalidImageError(f"No image: upload a picture into '{what}'{where} first.")
    return handlers.to_rgb_array(image, engine.settings.max_image_pixels)


def _model(model_name: Optional[str]) -> str:
    if not model_name:
        raise SamUserError("Choose a SAM model at the top of the panel first.")
    return model_name


def _pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(array))


# ----------------------------------------------------------------------------- handlers


def run_random(engine, model_name, image, seed, config_values, *, panel_image: Any = None,
               control: Optional[JobControl] = None) -> Tuple[List[Image.Image], str]:
    """[blend, colour map, EditAnything control map] and a status line. ``panel_image``: the
    panel's picture, used when ``image`` (the tab's own) is empty; likewise for every run_*."""
    image, note = picture_for(image, panel_image)
    rgb = _rgb(image, engine)
    result = pipelines.random_segmentation(engine, _model(model_name), rgb, config_from_values(config_values),
                                           seed=int(seed or 0), control=control)
    count = int(result.id_map.max())
    message = (f"{note}{count} segments. 1: blend, 2: random colour map, 3: EditAnything control map "
               "(for control_v11p_sd15_sam / Edit-Anything ControlNet models).")
    return [_pil(result.blend), _pil(result.colour_map), _pil(result.control_map)], message


def random_maps(gallery: Sequence[Image.Image]) -> Dict[str, Image.Image]:
    """The two maps of ``run_random``'s gallery, by the kind the ControlNet choice names."""
    return {COLOUR_MAP: gallery[1], EDITANYTHING_MAP: gallery[2]}


def control_map_for(kind: Optional[str], maps: Optional[Dict[str, Image.Image]],
                    refined: Optional[Image.Image]) -> Tuple[Optional[Image.Image], str]:
    """The map of ``kind`` that goes to ControlNet (None when it was not made yet) and a status line."""
    if kind not in CONTROL_MAP_KINDS:
        raise InvalidPromptError(f"Unknown map {kind!r}; choose one of: {', '.join(CONTROL_MAP_KINDS)}.")
    chosen = refined if kind == REFINED_MAP else (maps or {}).get(kind)
    if chosen is None:
        where = "Semantic segmentation → Segment" if kind == REFINED_MAP else "Segment everything"
        return None, f"No {kind.lower()} yet: run {where} first."
    picture = chosen if isinstance(chosen, Image.Image) else _pil(np.asarray(chosen))
    return picture.convert("RGB"), (f"{kind} ({picture.size[0]}x{picture.size[1]}) goes to the ControlNet unit at "
                                    "the next generation while 'Send the map to ControlNet' is ticked.")


def control_map_components(panel: Any) -> Dict[str, Any]:
    """The components of ``script_args.CONTROL_MAP_ARGS``, by name; none outside the WebUI."""
    parts = (panel.extra.get("autosam") or {}).get("controlnet")
    if not parts:
        return {}
    return dict(zip((arg.name for arg in CONTROL_MAP_ARGS), (parts["enabled"], parts["unit"], parts["map"])))


def segmenter_choices(find_preprocessor: PreprocessorFinder = no_host_preprocessors) -> List[str]:
    """Host preprocessors found (by reference name), then the uploaded-map option (always there)."""
    return sorted(discover_segmenters(find_preprocessor)) + [UPLOADED]


def _segmenter(source: Optional[str], dataset_key: Optional[str], colour_map: Any, engine,
               find_preprocessor: PreprocessorFinder):
    if source == UPLOADED or not source:
        if colour_map is None:
            raise InvalidImageError("Upload the colour-coded segmentation map (ADE20K or COCO palette) first. "
                                    + ("" if source == UPLOADED else NO_SEGMENTER_MESSAGE))
        return UploadedMapSegmenter(_rgb(colour_map, engine, "Segmentation map"), dataset_key or "ade20k")
    if source not in PROCESSORS:
        raise InvalidPromptError(f"Unknown segmenter {source!r}.")
    return get_segmenter(source, find_preprocessor)


def run_semantic(engine, model_name, image, source, dataset_key, colour_map, resolution, config_values, *,
                 find_preprocessor: PreprocessorFinder = no_host_preprocessors, panel_image: Any = None,
                 control: Optional[JobControl] = None) -> Tuple[List[Image.Image], Optional[Image.Image], str]:
    """[before, after, blend before, blend after], the SAM-refined map alone (to send on), status.
    ``find_preprocessor``: how to reach the host's segmenters (none outside a WebUI)."""
    image, note = picture_for(image, panel_image)
    rgb = _rgb(image, engine)
    segmenter = _segmenter(source, dataset_key, colour_map, engine, find_preprocessor)
    result = pipelines.semantic_segmentation(engine, _model(model_name), rgb, segmenter, int(resolution or 512),
                                             config_from_values(config_values), control=control)
    changed = float((result.before != result.after).mean()) * 100
    message = (f"{note}{segmenter.label}, {result.dataset.label}: 1 before SAM, 2 after SAM ({changed:.1f}% of pixels "
               "changed class), 3-4 their blends. Map 2 is the input for a ControlNet segmentation model.")
    return [_pil(a) for a in result.gallery()], _pil(result.after_colour), message


class LayoutDownloads:
    """Folders for the single-image layouts offered as a browser download, in one temporary
    directory made on first use. Only the most recent ``keep`` stay on disk: gradio copies a
    returned file while it sends the reply, and the disk must not fill up over a session."""

    def __init__(self, keep: int = KEPT_DOWNLOADS) -> None:
        self._directory: Optional[tempfile.TemporaryDirectory] = None
        self._folders: "collections.deque[Path]" = collections.deque()
        self._keep = max(1, int(keep))
        self._lock = threading.Lock()
        self._counter = 0

    def folder(self) -> Path:
        """A new empty folder; the oldest beyond ``keep`` are removed."""
        with self._lock:
            if self._directory is None:
                self._directory = tempfile.TemporaryDirectory(prefix="sd_webui_sam_layouts_")
            self._counter += 1
            folder = Path(self._directory.name) / str(self._counter)
            folder.mkdir()
            self._folders.append(folder)
            stale = [self._folders.popleft() for _ in range(max(0, len(self._folders) - self._keep))]
        for old in stale:
            shutil.rmtree(old, ignore_errors=True)
        return folder


def zip_layout(result: Any, path: Path) -> Path:
    """The layer PNGs and the PSD of a ``layers.LayoutResult`` in one zip, written file by file
    (memory stays bounded by one file's buffer). PNGs are stored as they are: they are compressed."""
    members = list(result.png_paths) + ([result.psd_path] if result.psd_path else [])
    with zipfile.ZipFile(path, "w") as archive:
        for member in members:
            member = Path(member)
            kind = zipfile.ZIP_STORED if member.suffix.lower() == ".png" else zipfile.ZIP_DEFLATED
            archive.write(member, arcname=member.name, compress_type=kind)
    return path


def run_layout(engine, model_name, mode, image, input_dir, output_dir, write_psd, config_values,
               soft_edges: bool = False, *, panel_image: Any = None, downloads: Optional[LayoutDownloads] = None,
               control: Optional[JobControl] = None) -> Tuple[str, Optional[str]]:
    """Writes the layers; the status lists what was written (nothing is ever overwritten), and for
    a single image the path of ``<picture>_layers.zip`` (layer PNGs and PSD) for the browser to
    download (None without ``downloads``, and for a folder, which stays in its output folder).
    With ``downloads`` a single image needs no output folder: its layers go into the zip only."""
    alpha = "soft" if soft_edges else "hard"
    folder_given = bool(output_dir and str(output_dir).strip())
    single = mode != LAYOUT_MODES[1]
    if not folder_given and not (single and downloads is not None):
        raise InvalidPromptError("Enter an output folder for the layers.")
    config = config_from_values(config_values)
    model = _model(model_name)
    if not single:
        if not input_dir or not str(input_dir).strip():
            raise InvalidPromptError("Enter the input folder of the batch.")
        output = Path(str(output_dir).strip()).expanduser()
        report = pipelines.layout_folder(engine, model, Path(str(input_dir).strip()).expanduser(), output, config,
                                         bool(write_psd), alpha, control=control)
        lines = [f"{len(report.done)} layout(s) written" + (" before Stop" if report.stopped else "") + ":"]
        lines += [f"  {path}" for path in report.done] + report.errors
        return "\n".join(lines), None
    image, note = picture_for(image, panel_image)
    rgb = _rgb(image, engine)
    stem = Path(getattr(image, "filename", "") or "layout").stem or "layout"
    download = downloads.folder() if downloads is not None else None
    output = Path(str(output_dir).strip()).expanduser() if folder_given else download
    output.mkdir(parents=True, exist_ok=True)
    result = pipelines.layout(engine, model, rgb, output, stem, config, bool(write_psd), alpha, control=control)
    archive = str(zip_layout(result, download / f"{stem}_layers.zip")) if download is not None else None
    written = list(result.png_paths) + ([result.psd_path] if result.psd_path else [])
    if folder_given:
        lines = [f"{note}{result.layer_count} layers in {result.directory}:"] + [f"  {p}" for p in written]
    else:
        lines = [f"{note}{result.layer_count} layers, {len(written)} files: download {Path(archive).name} below "
                 "(enter an output folder to also keep them on the server):"] + [f"  {Path(p).name}" for p in written]
    return "\n".join(lines), archive


def planned_work(engine, image_shape: Tuple[int, int], config: AutoSamConfig) -> WorkPlan:
    """Crops and point batches one run does on a picture of (H, W) with this engine's device."""
    return work_plan(config, image_shape, engine.placement.device)


def expected_time(engine, model_name, image, config_values, speeds: SpeedRecord, panel_image: Any = None) -> str:
    """The line shown before a run: the work it will do, and its expected time where this
    session has measured the model's speed."""
    image, _ = picture_for(image, panel_image)
    if image is None:
        return "Upload a picture to see the expected time."
    config = config_from_values(config_values)
    plan = planned_work(engine, _rgb(image, engine).shape[:2], config)
    work = (f"{plan.points} points in {plan.batches} decoder call{'s' if plan.batches != 1 else ''}, "
            f"{plan.crops} crop{'s' if plan.crops != 1 else ''} to encode")
    seconds = speeds.estimate(model_name, plan)
    if seconds is None:
        return (f"{work}. Expected time: not measured yet for this model in this session; press 'Estimate time' "
                "(it encodes the picture once, which the run reuses, and times one point batch).")
    speed = speeds.speeds[model_name]
    return (f"{work}. Expected time: about {format_seconds(seconds)} (an estimate from this session's measured speed: "
            f"{speed.encode_s:.2f} s an encode, {speed.decode_s_per_point * 1000:.1f} ms a point; "
            f"fewer points per side is faster).")


def estimate_time(engine, model_name, image, config_values, speeds: SpeedRecord, panel_image: Any = None) -> str:
    """Measure the model's speed on this picture (one encode, one point batch), then expected_time."""
    image, _ = picture_for(image, panel_image)
    rgb = _rgb(image, engine)
    model = _model(model_name)
    config = config_from_values(config_values)
    with engine.use_predictor(model) as predictor:
        speed = calibrate(predictor, rgb, config.effective_decode_batch(engine.placement.device))
    speeds.keep(model, speed)
    return expected_time(engine, model, rgb, config_values, speeds)


def category_choices(dataset_key: Optional[str]) -> List[str]:
    return semantic.dataset(dataset_key or "ade20k").choices()


def selection_from(picked: Any, typed: Optional[str] = None) -> List[str]:
    """Classes picked in the list plus names/ids typed as 'bed+person' or '7+12'."""
    chosen = [str(item) for item in (picked or [])] if not isinstance(picked, str) else [picked]
    chosen += [part.strip() for part in re.split(r"[+,;\n]", typed or "") if part.strip()]
    return chosen


def run_category(engine, model_name, image, source, dataset_key, colour_map, resolution, categories, config_values, *,
                 find_preprocessor: PreprocessorFinder = no_host_preprocessors, panel_image: Any = None,
                 control: Optional[JobControl] = None) -> Tuple[List[Image.Image], Image.Image, str]:
    """[blend, mask, cut-out] at the image's resolution, the mask alone, status."""
    image, note = picture_for(image, panel_image)
    rgb = _rgb(image, engine)
    segmenter = _segmenter(source, dataset_key, colour_map, engine, find_preprocessor)
    selection = categories if categories not in (None, "", []) else ""
    semantic.parse_categories(selection, semantic.dataset(segmenter.dataset))  # typos fail before any model runs
    result = pipelines.category_mask(engine, _model(model_name), rgb, segmenter, int(resolution or 512), selection,
                                     config_from_values(config_values), control=control)
    mask = _pil(result.mask.astype(np.uint8) * 255)
    names = ", ".join(result.semantic.dataset.short_names[i] for i in result.class_ids)
    gallery = [render.reference_blend(rgb, result.mask, []), mask, render.cutout(rgb, result.mask)]
    gallery = [g if isinstance(g, Image.Image) else _pil(g) for g in gallery]
    return gallery, mask, f"{note}Mask of {names}: {int(result.mask.sum())} pixels of {result.mask.size}."


def to_panel(image, mask, panel_image: Any = None) -> Tuple[Optional[Image.Image], Image.Image, str]:
    """The picture and the AutoSAM mask, for the panel's own image and mask (then its send controls).
    The picture is None when the mask was made on the panel's picture: the panel keeps it."""
    if mask is None or (image is None and panel_image is None):
        raise SamUserError("Make a mask first (Preview mask).")
    mask_image = mask if isinstance(mask, Image.Image) else Image.fromarray(np.asarray(mask))
    if image is None:
        if tuple(getattr(panel_image, "size", mask_image.size)) != mask_image.size:
            raise SamUserError("The panel's picture changed since this mask was made: press Preview mask again.")
        return None, mask_image.convert("L"), "Mask placed on the panel's picture above."
    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    return picture.convert("RGB"), mask_image.convert("L"), "Mask placed in the panel above."


# ----------------------------------------------------------------------------- build


def _segmenter_row(prefix: str, part: str, choices: List[str], dataset_label: str) -> Tuple[Any, Any, Any]:
    """The segmenter, dataset and preprocessor-resolution controls that the semantic and the
    category tabs share (elem ids ``<part>_source`` / ``_dataset`` / ``_resolution``)."""
    import gradio as gr  # only when the tab is built: its handlers run without gradio

    with gr.Row():
        source = gr.Dropdown(label="Segmenter", choices=choices, value=choices[0], elem_id=elem(prefix, f"{part}_source"))
        dataset = gr.Radio(label=dataset_label, choices=list(DATASETS), value="ade20k",
                           elem_id=elem(prefix, f"{part}_dataset"))
        resolution = gr.Slider(64, 2048, value=512, step=1, label="Preprocessor resolution",
                               elem_id=elem(prefix, f"{part}_resolution"))
    return source, dataset, resolution


def _starting_points_per_side(engine: Any) -> int:
    """The reference's 32 points per side take minutes on a CPU: the panel starts with fewer there,
    and also when the engine cannot be reached while the panel is built (the page must still build)."""
    try:
        device = engine().placement.device
    except Exception as error:  # noqa: BLE001 - a broken set-up is said in the console, the tab still builds
        handlers.describe_failure(error)
        device = "cpu"
    return default_points_per_side(device)


def build(panel: Any) -> Dict[str, Any]:
    import gradio as gr  # only when the tab is built: its handlers run without gradio

    from sd_webui_sam.compat import gradio_compat as grc  # imports gradio: likewise

    prefix = f"{panel.options.prefix}_autosam"
    engine = panel.options.engine
    parts: Dict[str, Any] = {}
    signal = StopSignal(panel.options.host_interrupted)
    speeds = SpeedRecord()
    downloads = LayoutDownloads()
    # Each sub-tab works on the panel's picture while its own is empty (decoded once, server-side).
    panel_image = panel.extra["image_state"]
    starting = {"points_per_side": _starting_points_per_side(engine)}
    with gr.Accordion("AutoSAM settings", open=False, elem_id=elem(prefix, "config")):
        config = []
        # A minimum width per setting: the row wraps instead of clipping the number boxes.
        with gr.Row():
            for spec in CONFIG_FIELDS:
                value = starting.get(spec.name, spec.default)
                if spec.kind == "slider":
                    config.append(gr.Slider(0, 1, value=value, step=0.01, label=spec.label, info=spec.help,
                                            min_width=CONFIG_MIN_WIDTH, elem_id=elem(prefix, spec.name)))
                else:
                    config.append(gr.Number(value=value, precision=0 if spec.kind == "int" else None,
                                            label=spec.label, info=spec.help, min_width=CONFIG_MIN_WIDTH,
                                            elem_id=elem(prefix, spec.name)))
    parts["config"] = config
    find_preprocessor = panel.options.find_preprocessor or no_host_preprocessors
    choices = segmenter_choices(find_preprocessor)

    def failure_gallery(count: int):
        def show(message: str):
            return ([], *([grc.update()] * count), status_html(message, error=True))
        return show

    with gr.Tabs(elem_id=elem(prefix, "tabs")):
        with gr.Tab("Segment everything / EditAnything", elem_id=elem(prefix, "random_tab")):
            with gr.Row():
                r_image = grc.image_input("Image", elem_id=elem(prefix, "random_image"))
                r_gallery = grc.gallery("Blend / colour map / EditAnything map", elem_id=elem(prefix, "random_gallery"),
                                        columns=3)
            with gr.Row():
                r_seed = gr.Number(value=0, precision=0, label="Colour seed", elem_id=elem(prefix, "random_seed"))
                r_run = gr.Button("Segment everything", variant="primary", elem_id=elem(prefix, "random_run"))
                r_stop = gr.Button("Stop", elem_id=elem(prefix, "random_stop"))
            with gr.Row():
                r_estimate = gr.HTML("Upload a picture to see the expected time.", elem_id=elem(prefix, "random_estimate"),
                                     elem_classes=["sam-status"])
                r_measure = gr.Button("Estimate time", size="sm", scale=0, min_width=130,
                                      elem_id=elem(prefix, "random_measure"))
            r_status = gr.HTML("", elem_id=elem(prefix, "random_status"), elem_classes=["sam-status"])
            r_maps = gr.State(None)  # {kind: map} of the last run, for the ControlNet section

        with gr.Tab("Semantic segmentation", elem_id=elem(prefix, "semantic_tab")):
            gr.Markdown("Segmenters come from the ControlNet extension when it is installed; otherwise upload a "
                        "colour-coded ADE20K or COCO segmentation of the same picture." +
                        ("" if len(choices) > 1 else " No ControlNet segmenter was found here."))
            with gr.Row():
                s_image = grc.image_input("Image", elem_id=elem(prefix, "semantic_image"))
                s_gallery = grc.gallery("Before SAM / after SAM / blends", elem_id=elem(prefix, "semantic_gallery"),
                                        columns=2)
            s_source, s_dataset, s_resolution = _segmenter_row(prefix, "semantic", choices, "Palette of the uploaded map")
            s_map = grc.image_input("Uploaded segmentation map", elem_id=elem(prefix, "semantic_map"))
            s_after = gr.State(None)
            with gr.Row():
                s_run = gr.Button("Segment", variant="primary", elem_id=elem(prefix, "semantic_run"))
                s_stop = gr.Button("Stop", elem_id=elem(prefix, "semantic_stop"))
            s_status = gr.HTML("", elem_id=elem(prefix, "semantic_status"), elem_classes=["sam-status"])

        with gr.Tab("Image layout", elem_id=elem(prefix, "layout_tab")):
            with gr.Row():
                l_mode = gr.Radio(label="Mode", choices=list(LAYOUT_MODES), value=LAYOUT_MODES[0],
                                  elem_id=elem(prefix, "layout_mode"))
                l_psd = gr.Checkbox(label="Also write a layered PSD", value=True, elem_id=elem(prefix, "layout_psd"))
                l_soft = gr.Checkbox(label="Soft edges (alpha matte: hair, fur, glass)", value=False,
                                     elem_id=elem(prefix, "layout_soft"))
            l_image = grc.image_input("Image", elem_id=elem(prefix, "layout_image"))
            l_input = gr.Textbox(label="Input folder (batch)", elem_id=elem(prefix, "layout_input"))
            l_output = gr.Textbox(label="Output folder", elem_id=elem(prefix, "layout_output"),
                                  info="On the server. Optional for a single image: its layers are also offered "
                                       "as a zip to download below.")
            with gr.Row():
                l_run = gr.Button("Generate layout", variant="primary", elem_id=elem(prefix, "layout_run"))
                l_stop = gr.Button("Stop", elem_id=elem(prefix, "layout_stop"))
            l_status = gr.Textbox(label="Written", lines=4, interactive=False, elem_id=elem(prefix, "layout_status"))
            l_download = gr.File(label="Layers and PSD (zip)", interactive=False,
                                 elem_id=elem(prefix, "layout_download"))

        with gr.Tab("Mask by category", elem_id=elem(prefix, "category_tab")):
            with gr.Row():
                c_image = grc.image_input("Image", elem_id=elem(prefix, "category_image"))
                c_gallery = grc.gallery("Blend / mask / cut-out", elem_id=elem(prefix, "category_gallery"), columns=3)
            c_source, c_dataset, c_resolution = _segmenter_row(prefix, "category", choices, "Classes of")
            with gr.Row():
                c_classes = gr.Dropdown(label="Classes", choices=category_choices("ade20k"), value=[],
                                        multiselect=True, elem_id=elem(prefix, "category_classes"))
                c_typed = gr.Textbox(label="Or type names / ids", placeholder="bed+person or 7+12",
                                     elem_id=elem(prefix, "category_typed"))
            c_map = grc.image_input("Uploaded segmentation map", elem_id=elem(prefix, "category_map"))
            c_mask = gr.State(None)
            with gr.Row():
                c_run = gr.Button("Preview mask", variant="primary", elem_id=elem(prefix, "category_run"))
                c_stop = gr.Button("Stop", elem_id=elem(prefix, "category_stop"))
                c_send = gr.Button("Use this mask in the panel", elem_id=elem(prefix, "category_to_panel"))
            c_status = gr.HTML("", elem_id=elem(prefix, "category_status"), elem_classes=["sam-status"])

    controlnet_parts = _build_controlnet_section(panel, prefix) if panel.options.sd_controls else None

    model = panel.model

    def job(model_name, progress, label: str = "") -> JobControl:
        """The Stop/Interrupt and the progress bar of one run; the speed it measured is kept for
        the next run's expected time."""
        def show(step: GenerationProgress) -> None:
            speeds.learn(model_name, step)
            progress(step.fraction, desc=f"{label}{step.describe()}")

        return JobControl(progress=show, interrupt=signal.start())

    for stop_button in (r_stop, s_stop, l_stop, c_stop):
        # Off the queue, so it answers while the job still holds the queue's worker.
        grc.listen(stop_button.click, signal.stop, [], [], queue=False)

    # gradio finds a Progress parameter only among the positional ones: it comes first, the inputs follow.
    def random_handler(progress=gr.Progress(), *inputs):
        model_name, image, panel_picture, seed, *values = inputs
        gallery, message = run_random(engine(), model_name, image, seed, values, panel_image=panel_picture,
                                      control=job(model_name, progress))
        return gallery, random_maps(gallery), status_html(message)

    random_run = grc.listen(r_run.click, guarded_with_progress(random_handler, failure_gallery(1)),
                            [model, r_image, panel_image, r_seed, *config], [r_gallery, r_maps, r_status])

    def show_expected(model_name, image, panel_picture, *values):
        return status_html(expected_time(engine(), model_name, image, values, speeds, panel_picture))

    def measure(model_name, image, panel_picture, *values):
        return status_html(estimate_time(engine(), model_name, image, values, speeds, panel_picture))

    def estimate_failure(message):
        return status_html(message, error=True)

    estimate_io = ([model, r_image, panel_image, *config], [r_estimate])
    for changed in (r_image, model, *config):
        grc.listen(changed.change, handlers.guarded(show_expected, estimate_failure), *estimate_io, show_progress=False)
    # A new panel picture: the state is filled by another listener of the same event, so this one
    # reads the picture itself.
    grc.listen(panel.input_image.change, handlers.guarded(show_expected, estimate_failure),
               [model, r_image, panel.input_image, *config], [r_estimate], show_progress=False)
    grc.listen(r_measure.click, handlers.guarded(measure, estimate_failure), *estimate_io)
    then = getattr(random_run, "then", None)
    if then is not None:  # a run measured the speed: the next run's estimate follows it
        grc.listen(then, handlers.guarded(show_expected, estimate_failure), *estimate_io, show_progress=False)

    def semantic_handler(progress=gr.Progress(), *inputs):
        model_name, image, panel_picture, source, dataset_key, colour_map, resolution, *values = inputs
        gallery, after, message = run_semantic(engine(), model_name, image, source, dataset_key, colour_map,
                                               resolution, values, find_preprocessor=find_preprocessor,
                                               panel_image=panel_picture, control=job(model_name, progress))
        return gallery, after, status_html(message)

    semantic_run = grc.listen(s_run.click, guarded_with_progress(semantic_handler, failure_gallery(1)),
                              [model, s_image, panel_image, s_source, s_dataset, s_map, s_resolution, *config],
                              [s_gallery, s_after, s_status])

    if controlnet_parts is not None:
        def show_control_map(kind, maps, refined):
            picture, message = control_map_for(kind, maps, refined)
            return picture, status_html(message)

        pick = handlers.guarded(show_control_map, lambda message: (grc.update(), status_html(message, error=True)))
        pick_io = ([controlnet_parts["kind"], r_maps, s_after], [controlnet_parts["map"], controlnet_parts["status"]])
        grc.listen(controlnet_parts["kind"].change, pick, *pick_io, show_progress=False)
        for run in (random_run, semantic_run):
            then = getattr(run, "then", None)
            if then is not None:  # the map shown follows each new segmentation
                grc.listen(then, pick, *pick_io, show_progress=False)

    def layout_handler(progress=gr.Progress(), *inputs):
        model_name, mode, image, panel_picture, input_dir, output_dir, write_psd, soft_edges, *values = inputs
        return run_layout(engine(), model_name, mode, image, input_dir, output_dir, write_psd, values, bool(soft_edges),
                          panel_image=panel_picture, downloads=downloads, control=job(model_name, progress))

    grc.listen(l_run.click, guarded_with_progress(layout_handler, lambda message: (message, None)),
               [model, l_mode, l_image, panel_image, l_input, l_output, l_psd, l_soft, *config], [l_status, l_download])

    def dataset_changed(dataset_key):
        return grc.update(choices=category_choices(dataset_key), value=[])

    grc.listen(c_dataset.change, dataset_changed, [c_dataset], [c_classes], show_progress=False)

    def category_handler(progress=gr.Progress(), *inputs):
        model_name, image, panel_picture, source, dataset_key, colour_map, resolution, classes, typed, *values = inputs
        gallery, mask, message = run_category(engine(), model_name, image, source, dataset_key, colour_map,
                                              resolution, selection_from(classes, typed), values,
                                              find_preprocessor=find_preprocessor, panel_image=panel_picture,
                                              control=job(model_name, progress))
        return gallery, mask, status_html(message)

    grc.listen(c_run.click, guarded_with_progress(category_handler, failure_gallery(1)),
               [model, c_image, panel_image, c_source, c_dataset, c_map, c_resolution, c_classes, c_typed, *config],
               [c_gallery, c_mask, c_status])

    def send_handler(image, panel_picture, mask):
        picture, mask_image, message = to_panel(image, mask, panel_picture)
        return grc.update() if picture is None else picture, mask_image, status_html(message)

    grc.listen(c_send.click,
               handlers.guarded(send_handler, lambda message: (grc.update(), grc.update(), status_html(message, error=True))),
               [c_image, panel_image, c_mask], [panel.input_image, panel.mask, c_status])

    if controlnet_parts is not None:
        parts["controlnet"] = controlnet_parts
    parts.update(random=dict(image=r_image, seed=r_seed, run=r_run, stop=r_stop, estimate=r_estimate, measure=r_measure,
                             gallery=r_gallery, maps=r_maps, status=r_status),
                 semantic=dict(image=s_image, source=s_source, dataset=s_dataset, map=s_map, resolution=s_resolution,
                               run=s_run, stop=s_stop, gallery=s_gallery, after=s_after, status=s_status),
                 layout=dict(mode=l_mode, image=l_image, input=l_input, output=l_output, psd=l_psd, run=l_run,
                             stop=l_stop, status=l_status, download=l_download),
                 category=dict(image=c_image, source=c_source, dataset=c_dataset, resolution=c_resolution,
                               classes=c_classes, typed=c_typed, map=c_map, run=c_run, stop=c_stop, send=c_send,
                               gallery=c_gallery, mask=c_mask, status=c_status),
                 signal=signal, speeds=speeds, downloads=downloads)
    return parts


def _build_controlnet_section(panel: Any, prefix: str) -> Dict[str, Any]:
    """'Send the map to ControlNet': built in every WebUI panel so the script's arguments keep one
    layout, shown only when ControlNet is installed."""
    import gradio as gr  # only when the tab is built: its handlers run without gradio

    from sd_webui_sam.compat import gradio_compat as grc  # imports gradio: likewise

    units = max(0, int(panel.options.controlnet_units))
    shown = units > 0
    enabled_arg, unit_arg, map_arg = CONTROL_MAP_ARGS
    with gr.Group(visible=shown, elem_id=elem(prefix, "controlnet")):
        with gr.Row():
            kind = gr.Radio(label="Map for ControlNet", choices=list(CONTROL_MAP_KINDS), value=COLOUR_MAP,
                            visible=shown, elem_id=elem(prefix, "controlnet_kind"))
            enabled = gr.Checkbox(label=enabled_arg.label, value=enabled_arg.default, visible=shown,
                                  elem_id=elem(prefix, "controlnet_enabled"))
            unit = gr.Dropdown(label=unit_arg.label, choices=unit_choices(units), value=str(unit_arg.default),
                               visible=shown, elem_id=elem(prefix, "controlnet_unit"))
        control_map = grc.image_output(map_arg.label, visible=shown, elem_id=elem(prefix, "controlnet_map"))
        status = gr.HTML("", visible=shown, elem_id=elem(prefix, "controlnet_status"), elem_classes=["sam-status"])
    return {"kind": kind, "enabled": enabled, "unit": unit, "map": control_map, "status": status}
