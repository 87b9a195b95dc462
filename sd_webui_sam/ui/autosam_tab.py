"""The panel's "Auto SAM" tab: segment everything (EditAnything), semantic segmentation refined by
SAM, image layout (PNG layers + PSD) and mask by category.

The handlers (``run_*``) are plain functions of the Engine and the control values, so tests call
them directly; ``build`` only creates components and wires them. A category mask can be handed to
the main panel (its image and mask), from where the panel's own send-to-inpaint / ControlNet
controls take it on. Inside the WebUI with ControlNet, the colour map, the EditAnything map or the
SAM-refined semantic map can be sent to a ControlNet unit as its control image
(``control_map_components``, the ``script_args.CONTROL_MAP_ARGS``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from sd_webui_sam import render
from sd_webui_sam.autosam import pipelines, semantic
from sd_webui_sam.autosam.generator import AutoSamConfig
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

__all__ = [
    "COLOUR_MAP", "CONFIG_FIELDS", "CONTROL_MAP_KINDS", "EDITANYTHING_MAP", "REFINED_MAP", "UPLOADED", "ConfigField",
    "build", "category_choices", "config_from_values", "control_map_components", "control_map_for", "random_maps",
    "run_category", "run_layout", "run_random", "run_semantic", "segmenter_choices", "selection_from", "to_panel",
]

UPLOADED = "Uploaded colour-coded map"
COLOUR_MAP = "Random colour map"
EDITANYTHING_MAP = "EditAnything map"
REFINED_MAP = "SAM-refined semantic map"
#: The maps a ControlNet unit can take, in the order the Radio shows them.
CONTROL_MAP_KINDS = (COLOUR_MAP, EDITANYTHING_MAP, REFINED_MAP)
DATASETS = ("ade20k", "coco")
LAYOUT_MODES = ("Single image", "Batch folder")


@dataclass(frozen=True)
class ConfigField:
    name: str
    kind: str            # "int" | "float" | "slider"
    default: float


# The reference's "Auto SAM Config" accordion, in its order and with its defaults.
CONFIG_FIELDS: Tuple[ConfigField, ...] = (
    ConfigField("points_per_side", "int", 32),
    ConfigField("points_per_batch", "int", 64),
    ConfigField("pred_iou_thresh", "slider", 0.88),
    ConfigField("stability_score_thresh", "slider", 0.95),
    ConfigField("stability_score_offset", "float", 1.0),
    ConfigField("box_nms_thresh", "slider", 0.7),
    ConfigField("crop_n_layers", "int", 0),
    ConfigField("crop_nms_thresh", "slider", 0.7),
    ConfigField("crop_overlap_ratio", "slider", 512 / 1500),
    ConfigField("crop_n_points_downscale_factor", "int", 1),
    ConfigField("min_mask_region_area", "int", 0),
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
            raise InvalidPromptError(f"AutoSAM setting {spec.name} must be a number.") from None
    return AutoSamConfig.from_mapping(chosen)


def _rgb(image: Any, engine: Any, what: str = "Image") -> np.ndarray:
    if image is None:
        raise InvalidImageError(f"No image: upload a picture into '{what}' first.")
    return handlers.to_rgb_array(image, engine.settings.max_image_pixels)


def _model(model_name: Optional[str]) -> str:
    if not model_name:
        raise SamUserError("Choose a SAM model at the top of the panel first.")
    return model_name


def _pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(array))


# ----------------------------------------------------------------------------- handlers


def run_random(engine, model_name, image, seed, config_values) -> Tuple[List[Image.Image], str]:
    """[blend, colour map, EditAnything control map] and a status line."""
    rgb = _rgb(image, engine)
    result = pipelines.random_segmentation(engine, _model(model_name), rgb, config_from_values(config_values),
                                           seed=int(seed or 0))
    count = int(result.id_map.max())
    message = (f"{count} segments. 1: blend, 2: random colour map, 3: EditAnything control map "
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
                 find_preprocessor: PreprocessorFinder = no_host_preprocessors
                 ) -> Tuple[List[Image.Image], Optional[Image.Image], str]:
    """[before, after, blend before, blend after], the SAM-refined map alone (to send on), status.
    ``find_preprocessor``: how to reach the host's segmenters (none outside a WebUI)."""
    rgb = _rgb(image, engine)
    segmenter = _segmenter(source, dataset_key, colour_map, engine, find_preprocessor)
    result = pipelines.semantic_segmentation(engine, _model(model_name), rgb, segmenter, int(resolution or 512),
                                             config_from_values(config_values))
    changed = float((result.before != result.after).mean()) * 100
    message = (f"{segmenter.label}, {result.dataset.label}: 1 before SAM, 2 after SAM ({changed:.1f}% of pixels "
               "changed class), 3-4 their blends. Map 2 is the input for a ControlNet segmentation model.")
    return [_pil(a) for a in result.gallery()], _pil(result.after_colour), message


def run_layout(engine, model_name, mode, image, input_dir, output_dir, write_psd, config_values,
               soft_edges: bool = False) -> str:
    """Writes the layers; the status lists what was written (nothing is ever overwritten)."""
    alpha = "soft" if soft_edges else "hard"
    if not output_dir or not str(output_dir).strip():
        raise InvalidPromptError("Enter an output folder for the layers.")
    output = Path(str(output_dir).strip()).expanduser()
    config = config_from_values(config_values)
    model = _model(model_name)
    if mode == LAYOUT_MODES[1]:
        if not input_dir or not str(input_dir).strip():
            raise InvalidPromptError("Enter the input folder of the batch.")
        report = pipelines.layout_folder(engine, model, Path(str(input_dir).strip()).expanduser(), output, config,
                                         bool(write_psd), alpha)
        lines = [f"{len(report.done)} layout(s) written:"] + [f"  {path}" for path in report.done] + report.errors
        return "\n".join(lines)
    output.mkdir(parents=True, exist_ok=True)
    stem = Path(getattr(image, "filename", "") or "layout").stem or "layout"
    result = pipelines.layout(engine, model, _rgb(image, engine), output, stem, config, bool(write_psd), alpha)
    written = list(result.png_paths) + ([result.psd_path] if result.psd_path else [])
    return "\n".join([f"{result.layer_count} layers in {result.directory}:"] + [f"  {p}" for p in written])


def category_choices(dataset_key: Optional[str]) -> List[str]:
    return semantic.dataset(dataset_key or "ade20k").choices()


def selection_from(picked: Any, typed: Optional[str] = None) -> List[str]:
    """Classes picked in the list plus names/ids typed as 'bed+person' or '7+12'."""
    chosen = [str(item) for item in (picked or [])] if not isinstance(picked, str) else [picked]
    chosen += [part.strip() for part in re.split(r"[+,;\n]", typed or "") if part.strip()]
    return chosen


def run_category(engine, model_name, image, source, dataset_key, colour_map, resolution, categories, config_values, *,
                 find_preprocessor: PreprocessorFinder = no_host_preprocessors
                 ) -> Tuple[List[Image.Image], Image.Image, str]:
    """[blend, mask, cut-out] at the image's resolution, the mask alone, status."""
    rgb = _rgb(image, engine)
    segmenter = _segmenter(source, dataset_key, colour_map, engine, find_preprocessor)
    selection = categories if categories not in (None, "", []) else ""
    semantic.parse_categories(selection, semantic.dataset(segmenter.dataset))  # typos fail before any model runs
    result = pipelines.category_mask(engine, _model(model_name), rgb, segmenter, int(resolution or 512), selection,
                                     config_from_values(config_values))
    mask = _pil(result.mask.astype(np.uint8) * 255)
    names = ", ".join(result.semantic.dataset.short_names[i] for i in result.class_ids)
    gallery = [render.reference_blend(rgb, result.mask, []), mask, render.cutout(rgb, result.mask)]
    gallery = [g if isinstance(g, Image.Image) else _pil(g) for g in gallery]
    return gallery, mask, f"Mask of {names}: {int(result.mask.sum())} pixels of {result.mask.size}."


def to_panel(image, mask) -> Tuple[Image.Image, Image.Image, str]:
    """The picture and the AutoSAM mask, for the panel's own image and mask (then its send controls)."""
    if image is None or mask is None:
        raise SamUserError("Make a mask first (Preview mask).")
    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    mask_image = mask if isinstance(mask, Image.Image) else Image.fromarray(np.asarray(mask))
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


def build(panel: Any) -> Dict[str, Any]:
    import gradio as gr  # only when the tab is built: its handlers run without gradio

    from sd_webui_sam.compat import gradio_compat as grc  # imports gradio: likewise

    prefix = f"{panel.options.prefix}_autosam"
    engine = panel.options.engine
    parts: Dict[str, Any] = {}
    with gr.Accordion("AutoSAM settings", open=False, elem_id=elem(prefix, "config")):
        config = []
        with gr.Row():
            for spec in CONFIG_FIELDS:
                if spec.kind == "slider":
                    config.append(gr.Slider(0, 1, value=spec.default, step=0.01, label=spec.name,
                                            elem_id=elem(prefix, spec.name)))
                else:
                    config.append(gr.Number(value=spec.default, precision=0 if spec.kind == "int" else None,
                                            label=spec.name, elem_id=elem(prefix, spec.name)))
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
            s_run = gr.Button("Segment", variant="primary", elem_id=elem(prefix, "semantic_run"))
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
            l_output = gr.Textbox(label="Output folder", elem_id=elem(prefix, "layout_output"))
            l_run = gr.Button("Generate layout", variant="primary", elem_id=elem(prefix, "layout_run"))
            l_status = gr.Textbox(label="Written", lines=4, interactive=False, elem_id=elem(prefix, "layout_status"))

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
                c_send = gr.Button("Use this mask in the panel", elem_id=elem(prefix, "category_to_panel"))
            c_status = gr.HTML("", elem_id=elem(prefix, "category_status"), elem_classes=["sam-status"])

    controlnet_parts = _build_controlnet_section(panel, prefix) if panel.options.sd_controls else None

    model = panel.model

    def random_handler(model_name, image, seed, *values):
        gallery, message = run_random(engine(), model_name, image, seed, values)
        return gallery, random_maps(gallery), status_html(message)

    random_run = grc.listen(r_run.click, handlers.guarded(random_handler, failure_gallery(1)),
                            [model, r_image, r_seed, *config], [r_gallery, r_maps, r_status])

    def semantic_handler(model_name, image, source, dataset_key, colour_map, resolution, *values):
        gallery, after, message = run_semantic(engine(), model_name, image, source, dataset_key, colour_map,
                                               resolution, values, find_preprocessor=find_preprocessor)
        return gallery, after, status_html(message)

    semantic_run = grc.listen(s_run.click, handlers.guarded(semantic_handler, failure_gallery(1)),
                              [model, s_image, s_source, s_dataset, s_map, s_resolution, *config],
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

    def layout_handler(model_name, mode, image, input_dir, output_dir, write_psd, soft_edges, *values):
        return run_layout(engine(), model_name, mode, image, input_dir, output_dir, write_psd, values, bool(soft_edges))

    grc.listen(l_run.click, handlers.guarded(layout_handler, lambda message: message),
               [model, l_mode, l_image, l_input, l_output, l_psd, l_soft, *config], [l_status])

    def dataset_changed(dataset_key):
        return grc.update(choices=category_choices(dataset_key), value=[])

    grc.listen(c_dataset.change, dataset_changed, [c_dataset], [c_classes], show_progress=False)

    def category_handler(model_name, image, source, dataset_key, colour_map, resolution, classes, typed, *values):
        gallery, mask, message = run_category(engine(), model_name, image, source, dataset_key, colour_map,
                                              resolution, selection_from(classes, typed), values,
                                              find_preprocessor=find_preprocessor)
        return gallery, mask, status_html(message)

    grc.listen(c_run.click, handlers.guarded(category_handler, failure_gallery(1)),
               [model, c_image, c_source, c_dataset, c_map, c_resolution, c_classes, c_typed, *config],
               [c_gallery, c_mask, c_status])

    def send_handler(image, mask):
        picture, mask_image, message = to_panel(image, mask)
        return picture, mask_image, status_html(message)

    grc.listen(c_send.click,
               handlers.guarded(send_handler, lambda message: (grc.update(), grc.update(), status_html(message, error=True))),
               [c_image, c_mask], [panel.input_image, panel.mask, c_status])

    if controlnet_parts is not None:
        parts["controlnet"] = controlnet_parts
    parts.update(random=dict(image=r_image, seed=r_seed, run=r_run, gallery=r_gallery, maps=r_maps, status=r_status),
                 semantic=dict(image=s_image, source=s_source, dataset=s_dataset, map=s_map, resolution=s_resolution,
                               run=s_run, gallery=s_gallery, after=s_after, status=s_status),
                 layout=dict(mode=l_mode, image=l_image, input=l_input, output=l_output, psd=l_psd, run=l_run,
                             status=l_status),
                 category=dict(image=c_image, source=c_source, dataset=c_dataset, resolution=c_resolution,
                               classes=c_classes, typed=c_typed, map=c_map, run=c_run, send=c_send, gallery=c_gallery, mask=c_mask,
                               status=c_status))
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
