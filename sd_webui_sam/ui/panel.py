"""The Segment Anything panel, built the same way in txt2img, img2img and the standalone app.

``build_panel`` only creates components and wires events: calling it several times (the WebUI's
API builds every script's UI headlessly, twice per tab) has no effect beyond the new components.
"""
from __future__ import annotations

import html
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import gradio as gr

from sd_webui_sam import downloads
from sd_webui_sam.compat import gradio_compat as grc
from sd_webui_sam.devices import DEVICE_CHOICES
from sd_webui_sam.script_args import CUTOUT_ALPHA_ARGS, CUTOUT_ARGS, HANDOFF_ARGS, SCRIPT_ARGS, script_arg
from sd_webui_sam.ui import autosam_tab, batch_tab, detail_section, handlers, memory_line, text_prompt
from sd_webui_sam.ui.elements import CHOICES, elem, status_html, unit_choices

__all__ = ["TITLE", "Panel", "PanelOptions", "ToolDefaults", "build_panel", "first_run_html", "wire_send_to_inpaint"]

TITLE = "Segment Anything"
#: The hand-off arguments the panel builds controls for (the picture and the mask are its own).
HANDOFF_FLAGS_AND_UNIT = ("use_for_generation", "controlnet_enabled", "controlnet_unit", "controlnet_invert")
#: CSS px below which the canvas column does not shrink (the tools go below it instead).
CANVAS_MIN_WIDTH = 480
#: CSS px of each output image: fixed, so a result arriving never moves what is below it.
OUTPUT_HEIGHT = 240
#: The candidate strip before the first answer: the same three slots the script fills later.
CANDIDATE_STRIP_HTML = '<div class="sam-strip">' + "".join(
    f'<div class="sam-candidate sam-candidate-empty" data-index="{i}"><span class="sam-candidate-number">{i + 1}</span>'
    f'<span class="sam-candidate-caption">Mask {i + 1}</span></div>' for i in range(handlers.CANDIDATE_COUNT)) + "</div>"

HELP_HTML = (
    "<b>Left click</b>: positive point. <b>Right click</b>: negative point. <b>Drag</b>: box (several boxes "
    "segment several objects). <b>Click a dot</b> or a box's <b>&times;</b> to remove it."
)


@dataclass(frozen=True)
class ToolDefaults:
    expand: int = 0
    feather: float = 0.0
    fill_holes: bool = False
    min_island: int = 0
    auto_preview: bool = True
    hover_preview: bool = True


@dataclass(frozen=True)
class PanelOptions:
    """How one panel is built.

    ``prefix`` names every element (``<prefix>_input_image``...) and must be unique per page.
    ``sd_controls``: the controls that only make sense inside a WebUI (send to img2img, ControlNet).
    ``controlnet_units``: 0 hides the ControlNet controls.
    ``host_interrupted`` and ``find_preprocessor``: the WebUI's Interrupt flag and its ControlNet's
    segmenters (``compat``), handed in by the script; None outside a WebUI.
    """

    prefix: str
    engine: Callable[[], Any]
    sd_controls: bool = False
    is_img2img: bool = False
    controlnet_units: int = 0
    tools: ToolDefaults = field(default_factory=ToolDefaults)
    accordion: bool = True
    host_interrupted: Optional[Callable[[], bool]] = None
    find_preprocessor: Optional[Callable[[Sequence[str]], Any]] = None


@dataclass
class Panel:
    """The components other code needs; ``script_args`` is what ``Script.ui`` returns, in order."""

    options: PanelOptions
    model: Any
    input_image: Any
    prompts: Any
    preview: Any
    candidates: Any
    choice: Any
    status: Any
    overlay: Any
    mask: Any
    cutout: Any
    tools: List[Any]
    state: Any
    use_for_generation: Optional[Any] = None
    send_to_inpaint: Optional[Any] = None
    inpaint_preset: Optional[Any] = None
    cn_enabled: Optional[Any] = None
    cn_unit: Optional[Any] = None
    cn_invert: Optional[Any] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def script_arg_components(self) -> Dict[str, Any]:
        """The components of the script's arguments that this panel has, by ``script_args`` name."""
        handoff = [self.use_for_generation, self.input_image, self.mask, self.cn_enabled, self.cn_unit, self.cn_invert]
        components = dict(zip((arg.name for arg in HANDOFF_ARGS), handoff))
        components.update(zip((arg.name for arg in CUTOUT_ARGS), self.extra.get("cutout_args", ())))
        components.update(autosam_tab.control_map_components(self))
        components.update(zip((arg.name for arg in CUTOUT_ALPHA_ARGS),
                              text_prompt.cutout_alpha_script_args(self.extra.get("text_prompt") or {})))
        return {name: component for name, component in components.items() if component is not None}

    @property
    def script_args(self) -> list:
        """The generation arguments in ``script_args.SCRIPT_ARGS`` order: what ``Script.ui`` returns.

        Only a panel built with ``sd_controls`` has them all; another stops before the first it
        lacks (positional arguments can only be left out at the end, where they mean off)."""
        components = self.script_arg_components()
        present = itertools.takewhile(lambda arg: arg.name in components, SCRIPT_ARGS)
        return [components[arg.name] for arg in present]


def _model_choices(engine_provider: Callable[[], Any], refresh: bool = False) -> List[str]:
    try:
        return list(engine_provider().list_models(refresh=refresh))
    except Exception as error:  # a broken model dir must not break the tab
        handlers.describe_failure(error)
        return []


def _current_device(engine_provider: Callable[[], Any]) -> str:
    try:
        preference = (engine_provider().device_preference or "auto").split(":")[0]
    except Exception as error:  # no engine yet (a broken set-up) must not break the tab either
        handlers.describe_failure(error)
        return "auto"
    return preference if preference in DEVICE_CHOICES else "auto"


def build_panel(options: PanelOptions) -> Panel:
    prefix = options.prefix
    engine = options.engine
    choices = _model_choices(engine)
    container = (
        gr.Accordion(TITLE, open=False, elem_id=elem(prefix, "panel"), elem_classes=["sam-panel"])
        if options.accordion
        else gr.Column(elem_id=elem(prefix, "panel"), elem_classes=["sam-panel"])
    )
    with container:
        with gr.Row():
            model = gr.Dropdown(
                label="SAM model", choices=choices, value=choices[0] if choices else None, elem_id=elem(prefix, "model")
            )
            # A word, not an icon: an emoji renders as an empty box where no emoji font is installed.
            refresh = gr.Button("Refresh models", elem_id=elem(prefix, "refresh"), scale=0, min_width=130)
            device = gr.Dropdown(label="Device", choices=list(DEVICE_CHOICES), value=_current_device(engine),
                                 elem_id=elem(prefix, "device"), scale=0, min_width=110)
        first_run = gr.HTML(first_run_html(engine, choices), elem_id=elem(prefix, "first_run"),
                            elem_classes=["sam-first-run"])
        download_parts = _download_section(prefix, engine, open_=not choices)
        with gr.Row(elem_classes=["sam-workspace"]):
            # The canvas: the picture as large as the column and the window allow, with the chosen
            # mask, the dots and the boxes drawn on it by javascript/segment_anything.js. Its minimum
            # width makes the tools wrap below it in the WebUI's narrow left column (about 600 px at
            # 1400 wide), so there the canvas gets the column's whole width instead of half of it.
            with gr.Column(scale=3, min_width=CANVAS_MIN_WIDTH, elem_classes=["sam-canvas-column"]):
                input_image = grc.image_input(script_arg("image").label, elem_id=elem(prefix, "input_image"), elem_classes=["sam-canvas"])
            # The tools beside it, so a click and its effect are on screen together.
            with gr.Column(scale=1, min_width=270, elem_classes=["sam-side"]):
                # Filled by the script (one thumbnail per candidate, the whole picture, its score);
                # the server never writes to it, so the strip keeps its size from the start.
                candidates = gr.HTML(CANDIDATE_STRIP_HTML, elem_id=elem(prefix, "candidates"),
                                     elem_classes=["sam-candidates"])
                # Fixed choices: gradio 3 validates a submitted value against the choices the server
                # built, so choices updated in the browser would be refused.
                choice = gr.Radio(
                    label="Use mask", choices=list(CHOICES), value=CHOICES[0], type="index", elem_id=elem(prefix, "choice")
                )
                status = gr.HTML("", elem_id=elem(prefix, "status"), elem_classes=["sam-status", "sam-status-box"])
                with gr.Row():
                    undo = gr.Button("Undo", elem_id=elem(prefix, "undo"), size="sm", min_width=60)
                    clear = gr.Button("Clear", elem_id=elem(prefix, "clear"), size="sm", min_width=60)
                with gr.Row():
                    auto_preview = gr.Checkbox(
                        label="Preview on every click", value=options.tools.auto_preview, interactive=True,
                        elem_id=elem(prefix, "auto_preview"), min_width=120,
                    )
                    preview = gr.Button("Preview", variant="primary", elem_id=elem(prefix, "preview"), min_width=80)
                # The script shows it only while clicks are answered fast enough to follow the pointer.
                hover_preview = gr.Checkbox(label="Show the mask under the pointer", value=options.tools.hover_preview,
                                            interactive=True, elem_id=elem(prefix, "hover_preview"))
                gr.HTML(HELP_HTML, elem_id=elem(prefix, "help"), elem_classes=["sam-help"])
                expand = gr.Slider(-64, 64, value=options.tools.expand, step=1, label="Expand (+) / shrink (-), px",
                                   elem_id=elem(prefix, "expand"))
                feather = gr.Slider(0, 32, value=options.tools.feather, step=0.5, label="Feather, px",
                                    elem_id=elem(prefix, "feather"))
                min_island = gr.Slider(0, 4096, value=options.tools.min_island, step=16,
                                       label="Remove islands smaller than, px", elem_id=elem(prefix, "min_island"))
                with gr.Row():
                    fill_holes = gr.Checkbox(label="Fill holes", value=options.tools.fill_holes,
                                             elem_id=elem(prefix, "fill_holes"), min_width=80)
                    invert = gr.Checkbox(label="Invert", value=False, elem_id=elem(prefix, "invert"), min_width=80)
                with gr.Row():
                    soft_edges = gr.Checkbox(label="Soft edges (cut-out)", value=False, min_width=80,
                                             elem_id=elem(prefix, "soft_edges"))
                    edge_band = gr.Slider(0, 60, value=0, step=1, label="Edge band, px (0 = automatic)",
                                          elem_id=elem(prefix, "edge_band"))
        with gr.Row(elem_classes=["sam-outputs"]):
            overlay = grc.image_output("Overlay", elem_id=elem(prefix, "overlay"), height=OUTPUT_HEIGHT)
            mask = grc.image_output(script_arg("mask").label, elem_id=elem(prefix, "mask"), image_mode="L",
                                    height=OUTPUT_HEIGHT)
            cutout = grc.image_output("Cut-out", elem_id=elem(prefix, "cutout"), image_mode="RGBA", height=OUTPUT_HEIGHT)
        # What is loaded, and the button that frees it: below the work, since its text grows after
        # the first encode (above the canvas it moved the picture under the pointer).
        memory_parts = memory_line.build(prefix, engine)
        prompts = gr.Textbox(value="", visible=False, label="Prompts", elem_id=elem(prefix, "prompts"))
        # The last answer's candidates as compact masks (handlers.candidates_payload) for the script.
        masks_data = gr.Textbox(value="", visible=False, label="Candidate masks", elem_id=elem(prefix, "masks_data"))
        # Pressed by the script when the prompts become empty (clear, undo, removing the last dot):
        # it empties every output, so nothing of the old prompts can be downloaded or sent.
        reset = gr.Button("Reset outputs", elem_id=elem(prefix, "reset"), elem_classes=["sam-hidden"])
        # Pressed by the script when an output shown at screen size is downloaded: the full-size
        # overlay, mask and cut-out are built then, and the download follows.
        full_outputs = gr.Button("Full-size outputs", elem_id=elem(prefix, "full_outputs"), elem_classes=["sam-hidden"])
        # Pressed by the script once a click's chosen mask is on the canvas and the clicks pause
        # (after a failed click too): the overlay, mask and cut-out of the last answer are built then.
        show_outputs = gr.Button("Show outputs", elem_id=elem(prefix, "show_outputs"), elem_classes=["sam-hidden"])
        # Each object of the chosen mask as its own PNG, for "Detail each object" (ui/detail_section.py).
        object_masks = gr.Textbox(value="", visible=False, label="Object masks", elem_id=elem(prefix, "object_masks"))
        # Whether that section takes its objects from this panel (set by the section's "Objects"):
        # the per-object PNGs are made only then, not on every mask change.
        object_masks_wanted = gr.Checkbox(value=False, visible=False, label="Object masks wanted",
                                          elem_id=elem(prefix, "object_masks_wanted"))
        # The mask under the pointer (handlers.hover_payload): pressed by the script, answered apart
        # from the clicks' candidates.
        hover = gr.Button("Hover preview", elem_id=elem(prefix, "hover"), elem_classes=["sam-hidden"])
        hover_prompts = gr.Textbox(value="", visible=False, label="Hover prompts", elem_id=elem(prefix, "hover_prompts"))
        hover_data = gr.Textbox(value="", visible=False, label="Hover mask", elem_id=elem(prefix, "hover_data"))
        state = gr.State(None)
        image_state = gr.State(None)  # handlers.SessionImage: the picture decoded once per upload
        panel = Panel(
            options=options, model=model, input_image=input_image, prompts=prompts, preview=preview,
            candidates=candidates, choice=choice, status=status, overlay=overlay, mask=mask, cutout=cutout,
            tools=[expand, feather, fill_holes, min_island, invert, soft_edges, edge_band], state=state,
            extra={"refresh": refresh, "device": device, "undo": undo, "clear": clear, "auto_preview": auto_preview,
                   "image_state": image_state, "masks_data": masks_data, "reset": reset, "first_run": first_run,
                   "full_outputs": full_outputs, "show_outputs": show_outputs,
                   "object_masks": object_masks, "object_masks_wanted": object_masks_wanted,
                   "hover": hover, "hover_prompts": hover_prompts, "hover_data": hover_data, "hover_preview": hover_preview,
                   **download_parts, **memory_parts},
        )
        if options.sd_controls:
            _sd_controls(panel)
        else:
            # The standalone app has no generation: the values are placeholders the API shape keeps.
            use, enabled, unit, invert = (script_arg(name) for name in HANDOFF_FLAGS_AND_UNIT)
            panel.use_for_generation = gr.Checkbox(value=use.default, visible=False, label=use.label)
            panel.cn_enabled = gr.Checkbox(value=enabled.default, visible=False, label=enabled.label)
            panel.cn_unit = gr.Number(value=unit.default, precision=0, visible=False, label=unit.label)
            panel.cn_invert = gr.Checkbox(value=invert.default, visible=False, label=invert.label)
        text_parts = text_prompt.build_section(panel)
        panel.extra.update(text_prompt=text_parts, cutout_args=text_prompt.cutout_script_args(panel, text_parts))
        panel.extra.update(_more_tabs(panel))
    _wire(panel, refresh, undo, clear)
    memory_line.wire(memory_parts["memory_line"], memory_parts["free_memory"], panel.status,
                     [panel.status, text_parts["status"]], engine)
    return panel


def first_run_html(engine: Callable[[], Any], choices: List[str]) -> str:
    """With no SAM model, what to do and where; empty once there is one."""
    if choices:
        return ""
    try:
        folders = [str(path) for path in engine().settings.model_dirs()]
    except Exception as error:  # a broken set-up must still show the hint
        handlers.describe_failure(error)
        folders = []
    where = html.escape(folders[0]) if folders else "the models/sam folder"
    return (
        '<div class="sam-first-run-box"><b>No SAM model yet.</b> Put a checkpoint in '
        f"<code>{where}</code> and press <b>Refresh models</b>, or get one under "
        "<b>Download official checkpoints</b> below. On a CPU choose <b>MobileSAM</b> (39 MB, fastest) or "
        "<b>SAM ViT-B</b> (358 MB); ViT-H needs a GPU.</div>"
    )


def _more_tabs(panel: Panel) -> Dict[str, Any]:
    """The "Auto SAM" and "Batch" tabs (ui/autosam_tab.py, ui/batch_tab.py), below the main tools."""
    prefix = panel.options.prefix
    with gr.Tabs(elem_id=elem(prefix, "more_tabs")):
        with gr.Tab("Auto SAM", elem_id=elem(prefix, "autosam_tab")):
            autosam_parts = autosam_tab.build(panel)
        with gr.Tab("Batch", elem_id=elem(prefix, "batch_tab")):
            batch_parts = batch_tab.build(panel, autosam_config=autosam_parts["config"])
    return {"autosam": autosam_parts, "batch": batch_parts}


#: The checkpoint the download section offers first: small and fast, so a first try on a CPU works.
DEFAULT_DOWNLOAD = "mobile_sam.pt"


def _download_section(prefix: str, engine: Callable[[], Any], open_: bool = False) -> Dict[str, Any]:
    catalogue = _official_checkpoints()
    if not catalogue:
        return {}
    default = next((label for label, name in catalogue.items() if name == DEFAULT_DOWNLOAD), next(iter(catalogue)))
    with gr.Accordion("Download official checkpoints", open=open_, elem_id=elem(prefix, "download_section")):
        with gr.Row():
            which = gr.Dropdown(label="Checkpoint", choices=list(catalogue), value=default,
                                elem_id=elem(prefix, "download_choice"))
            button = gr.Button("Download", elem_id=elem(prefix, "download"))
        result = gr.HTML("", elem_id=elem(prefix, "download_status"), elem_classes=["sam-status"])
    return {"download_choice": which, "download_button": button, "download_status": result}


def _official_checkpoints() -> Dict[str, Any]:
    """Label (with size) -> file name of each checkpoint the downloader knows."""
    return {f"{entry.label} ({entry.size / 1024**2:.0f} MB)": entry.file_name for entry in downloads.CATALOGUE}


def _sd_controls(panel: Panel) -> None:
    options = panel.options
    prefix = options.prefix
    with gr.Row():
        panel.send_to_inpaint = gr.Button("Send to img2img inpaint", elem_id=elem(prefix, "send_to_inpaint"))
        panel.inpaint_preset = gr.Dropdown(
            label="Inpaint preset", choices=list(handlers.INPAINT_PRESETS), value=handlers.LEAVE_SETTINGS,
            elem_id=elem(prefix, "inpaint_preset"),
        )
    use, enabled, unit, invert = (script_arg(name) for name in HANDOFF_FLAGS_AND_UNIT)
    panel.use_for_generation = gr.Checkbox(label=use.label, value=use.default, visible=options.is_img2img,
                                           elem_id=elem(prefix, "use_for_generation"))
    units = max(0, int(options.controlnet_units))
    with gr.Row(visible=units > 0, elem_id=elem(prefix, "controlnet_row")):
        shown = units > 0
        panel.cn_enabled = gr.Checkbox(label=enabled.label, value=enabled.default, visible=shown,
                                       elem_id=elem(prefix, "cn_enabled"))
        panel.cn_unit = gr.Dropdown(label=unit.label, choices=unit_choices(units), value=str(unit.default),
                                    visible=shown, elem_id=elem(prefix, "cn_unit"))
        panel.cn_invert = gr.Checkbox(label=invert.label, value=invert.default, visible=shown,
                                      elem_id=elem(prefix, "cn_invert"))


def _wire(panel: Panel, refresh: Any, undo: Any, clear: Any) -> None:
    engine = panel.options.engine
    prefix = panel.options.prefix
    first_run = panel.extra["first_run"]
    masks_data = panel.extra["masks_data"]
    render_outputs = [panel.overlay, panel.mask, panel.cutout]

    def refresh_models(current: Optional[str]):
        names = _model_choices(engine, refresh=True)
        value = current if current in names else (names[0] if names else None)
        return grc.update(choices=names, value=value), first_run_html(engine, names)

    grc.listen(refresh.click, refresh_models, [panel.model], [panel.model, first_run], show_progress=False)

    def change_device(preference: str):
        message, done = handlers.change_device(engine(), preference)
        return status_html(message, error=not done)

    grc.listen(panel.extra["device"].change, change_device, [panel.extra["device"]], [panel.status], show_progress=False)

    grc.listen(undo.click, None, [], [], js=f"() => window.samPanel.undo({prefix!r})")
    grc.listen(clear.click, None, [], [], js=f"() => window.samPanel.clear({prefix!r})")

    # Everything a preview produced, emptied: the prompts it answered are gone.
    cleared = ["", None, "", None, None, None]
    cleared_outputs = [masks_data, panel.state, panel.status, *render_outputs]
    files = handlers.ImageFiles()
    image_state = panel.extra["image_state"]

    def reset_outputs(image):
        handlers.invalidate(image)  # a render still running for the old prompts then keeps out
        return cleared

    grc.listen(panel.extra["reset"].click, reset_outputs, [image_state], cleared_outputs, show_progress=False,
               queue=grc.FAST_EVENT_QUEUE)

    # The picture is decoded once when it changes and encoded right away, so a click sends only
    # its prompts and runs only the mask decoder. A new picture also empties the old outputs.
    def remember_image(model_name, image, previous):
        handlers.invalidate(previous)  # a render still running for the old picture then keeps out
        remembered = handlers.session_image(image, engine().settings.max_image_pixels)
        note = f"Encoding the picture for {model_name}..." if remembered is not None and model_name else ""
        return [remembered, *cleared[:2], status_html(note), *cleared[3:]]

    def remember_failure(message: str):
        return [None, *cleared[:2], status_html(message, error=True), *cleared[3:]]

    def encode_ahead(model_name, image):
        if image is None or not model_name:
            return grc.update()
        seconds = handlers.encode_ahead(engine(), model_name, image)
        if image.answered["attempts"]:
            return grc.update()  # a preview's answer or message is on screen (or on its way): it stays
        width, height = image.size
        took = "already encoded" if seconds is None else f"encoded in {seconds:.1f} s"
        return status_html(f"Picture {width}x{height} {took}; each click now runs the mask decoder only.")

    def encode_failure(message: str):
        return status_html(message, error=True)

    remembered = grc.listen(panel.input_image.change, handlers.guarded(remember_image, remember_failure),
                            [panel.model, panel.input_image, image_state], [image_state, *cleared_outputs],
                            show_progress=False)
    guarded_encode = handlers.guarded(encode_ahead, encode_failure)
    # The script shows "Encoding the picture..." over the canvas when a click is sent before these
    # encodes have finished (that click then pays for the encoder).
    encoded_js = f"() => window.samPanel.imageEncoded({prefix!r})"
    encoded = grc.listen(remembered.then, guarded_encode, [panel.model, image_state], [panel.status], show_progress=False)
    grc.listen(encoded.then, None, [], [], js=encoded_js)
    grc.listen(remembered.then, None, [], [], js=f"() => window.samPanel.imageReady({prefix!r})")
    grc.listen(panel.model.change, None, [], [], js=f"() => window.samPanel.modelChanged({prefix!r})")
    encoded = grc.listen(panel.model.change, guarded_encode, [panel.model, image_state], [panel.status], show_progress=False)
    grc.listen(encoded.then, None, [], [], js=encoded_js)

    answers = itertools.count(1)

    # A click's answer is the decoder's three masks as packed bits at display size
    # (handlers.candidates_payload): the browser draws them on the canvas and in the strip. The
    # overlay, mask and cut-out of the chosen one follow once that is drawn and the clicks pause
    # (``show_outputs`` below), at most handlers.OUTPUT_PREVIEW_SIDE long; the full-size files are made only
    # when downloaded (the script asks for them), sent to inpaint, or while the mask is handed to
    # the next generation (``handoff_flags`` below).
    def preview_masks(model_name, image, prompts_json):
        started = time.perf_counter()
        if isinstance(image, handlers.SessionImage):
            image.answered["attempts"] += 1
        found = handlers.segment(engine(), model_name, image, prompts_json)
        payload = handlers.candidates_payload(found, token=next(answers), server_ms=1000 * (time.perf_counter() - started))
        return payload, grc.update(value=CHOICES[found.best]), found, status_html(handlers.candidates_status(found, None))

    def show_failure(message: str):
        return "", grc.update(), None, status_html(message, error=True)

    inputs = [panel.model, image_state, panel.prompts]
    collect_js = (
        f"(...args) => window.samPanel.collect({prefix!r}, args, {inputs.index(panel.prompts)}, {len(inputs)})"
    )
    event = grc.listen(
        panel.preview.click,
        handlers.guarded(preview_masks, show_failure),
        inputs,
        [masks_data, panel.choice, panel.state, panel.status],
        js=collect_js,
        show_progress=False,
        queue=grc.FAST_EVENT_QUEUE,
    )

    tool_inputs = [panel.state, panel.choice, *panel.tools]
    # Whether the next generation takes the mask (img2img inpaint or ControlNet): the mask output
    # then has to be the picture's size, so the outputs are built at full size after each change.
    handoff_flags = [panel.use_for_generation, panel.cn_enabled]

    def render_choice(found, index, use_for_generation, controlnet_enabled, expand, feather, fill_holes, min_island,
                      invert, soft_edges=False, edge_band=0, full_size=False):
        if found is None:
            return None, None, None, grc.update()
        tools = _mask_tools(expand, feather, fill_holes, min_island, invert, soft_edges, edge_band)
        chosen = found.index(index)
        full_size = full_size or bool(use_for_generation) or bool(controlnet_enabled)
        return (*handlers.chosen_output_files(found, chosen, tools, files, full_size=full_size),
                status_html(handlers.candidates_status(found, chosen)))

    def render_failure(message: str):
        return None, None, None, status_html(message, error=True)

    guarded_render = handlers.guarded(render_choice, render_failure)
    unchanged = (grc.update(), grc.update(), grc.update(), grc.update())

    def render_current(image, found, *values):
        # A newer answer, or a reset, came before or while these outputs were built (a burst of
        # clicks, Clear during a large picture's render): they would be stale, so they stay out,
        # and a superseded render is not even started (it would take CPU the decoder needs).
        if handlers.superseded(found, image):
            return unchanged
        outputs = guarded_render(found, *values)
        return unchanged if handlers.superseded(found, image) else outputs

    def render_answer(image, found, *values):
        # The preview has just written the status; leaving it alone keeps it from looking busy.
        return render_current(image, found, *values)[:3]

    def render_full_size(image, found, *values):
        # Asked for by the script when a shown (smaller) output is downloaded.
        return render_current(image, found, *values, True)[:3]

    render_inputs = [image_state, panel.state, panel.choice, *handoff_flags, *panel.tools]
    # The browser draws the chosen mask first (previewDone), then asks for the outputs: built while
    # it draws, they took the CPU the drawing needed where both share one machine. Off gradio 3's
    # one-at-a-time queue too, so rendering never holds up the next preview.
    grc.listen(event.then, None, [masks_data], [], js=f"(data) => window.samPanel.previewDone({prefix!r}, data)")
    grc.listen(panel.extra["show_outputs"].click, render_answer, render_inputs, render_outputs, show_progress=False,
               queue=grc.FAST_EVENT_QUEUE)
    for control in [panel.choice, *handoff_flags, *panel.tools]:
        grc.listen(control.change if control is not panel.choice else control.input, render_current,
                   render_inputs, [*render_outputs, panel.status], show_progress=False,
                   queue=grc.FAST_EVENT_QUEUE)
    # On the queue: a 4000x3000 cut-out takes seconds, and the clicks' previews do not wait for it.
    full_event = grc.listen(panel.extra["full_outputs"].click, render_full_size, render_inputs, render_outputs)
    grc.listen(full_event.then, None, [], [], js=f"() => window.samPanel.fullOutputsDone({prefix!r})")

    def object_masks(wanted, found, index, *tool_values):
        if not wanted:
            return ""
        return detail_section.panel_object_masks(found, index, _mask_tools(*tool_values))

    wanted = panel.extra["object_masks_wanted"]
    for trigger in (panel.mask.change, wanted.change):
        grc.listen(trigger, handlers.guarded(object_masks, lambda message: ""), [wanted, *tool_inputs],
                   [panel.extra["object_masks"]], show_progress=False, queue=grc.FAST_EVENT_QUEUE)
    _wire_hover(panel)
    if "download_button" in panel.extra:
        _wire_download(panel)


def _mask_tools(expand, feather, fill_holes, min_island, invert, soft_edges=False, edge_band=0) -> handlers.MaskTools:
    """The tool controls' values (None when a control is empty) as ``handlers.MaskTools``."""
    return handlers.MaskTools(
        expand=int(expand or 0), feather=float(feather or 0), fill_holes=bool(fill_holes),
        min_island=int(min_island or 0), invert=bool(invert), soft_edges=bool(soft_edges),
        edge_band=float(edge_band or 0),
    )


def _wire_hover(panel: Panel) -> None:
    """The hover preview: off gradio 3's one-at-a-time queue, so it never waits behind a click;
    the script sends one only while no click is in flight and drops answers it no longer wants."""
    engine = panel.options.engine
    prefix = panel.options.prefix
    extra = panel.extra
    hovers = itertools.count(1)

    def hover_mask(model_name, image, prompts_json):
        return handlers.hover_payload(engine(), model_name, image, prompts_json, token=next(hovers))

    inputs = [panel.model, extra["image_state"], extra["hover_prompts"]]
    event = grc.listen(
        extra["hover"].click, handlers.guarded(hover_mask, lambda message: ""), inputs, [extra["hover_data"]],
        js=f"(...args) => window.samPanel.collectHover({prefix!r}, args, {len(inputs) - 1}, {len(inputs)})",
        show_progress=False, queue=grc.FAST_EVENT_QUEUE,
    )
    grc.listen(event.then, None, [extra["hover_data"]], [], js=f"(data) => window.samPanel.hoverDone({prefix!r}, data)")


def _wire_download(panel: Panel) -> None:
    engine = panel.options.engine
    catalogue = _official_checkpoints()
    which, button, result = panel.extra["download_choice"], panel.extra["download_button"], panel.extra["download_status"]

    def download(label, current, progress=gr.Progress()):
        file_name = catalogue.get(label)
        if file_name is None:
            raise handlers.SamUserError("Choose a checkpoint to download.")
        directories = engine().settings.model_dirs()
        if not directories:
            raise handlers.SamUserError("No model directory is configured; set one in Settings > Segment Anything.")

        def report(done: int, total: Optional[int]) -> None:
            if total:
                progress(done / total, desc=f"Downloading {file_name}")

        target = downloads.download_model(file_name, directories[0], progress=report)
        names = _model_choices(engine, refresh=True)
        value = target.name if target.name in names else current
        return (grc.update(choices=names, value=value), status_html(f"Downloaded {target.name} to {target.parent}."),
                first_run_html(engine, names))

    def failure(message: str):
        return grc.update(), status_html(message, error=True), grc.update()

    grc.listen(button.click, handlers.guarded(download, failure), [which, panel.model],
               [panel.model, result, panel.extra["first_run"]])


def wire_send_to_inpaint(panel: Panel, targets: Dict[str, Any]) -> None:
    """Connect 'Send to img2img inpaint' to img2img's Inpaint-upload images and the preset controls.

    ``targets`` maps elem_id -> component, captured from the host as it builds img2img; it must
    hold at least ``img_inpaint_base`` and ``img_inpaint_mask``.
    """
    if panel.send_to_inpaint is None or "img_inpaint_base" not in targets or "img_inpaint_mask" not in targets:
        return
    controls = [name for name in handlers.PRESET_TARGETS if name in targets]
    outputs = [targets["img_inpaint_base"], targets["img_inpaint_mask"], *(targets[n] for n in controls), panel.status]

    def send(image, mask, preset, found=None, index=None, *tool_values):
        if found is not None:
            # The mask output is small (or not built yet, right after a click): the full-size one is made now.
            mask = handlers.mask_to_send(image, mask, found, index, _mask_tools(*tool_values))
        picture, mask_image = handlers.inpaint_pair(image, mask)
        if preset == handlers.SOFT_EDGES_BLUR:
            mask_image = handlers.soft_inpaint_mask(picture, mask_image)
        values = handlers.PRESET_VALUES.get(preset or handlers.LEAVE_SETTINGS, {})
        updates = [grc.update(value=values[name]) if name in values else grc.update() for name in controls]
        note = "" if not values else f" Preset '{preset}' applied."
        return [picture, mask_image, *updates, status_html("Sent to img2img > Inpaint upload." + note)]

    def failure(message: str):
        return [grc.update(), grc.update(), *(grc.update() for _ in controls), status_html(message, error=True)]

    event = grc.listen(
        panel.send_to_inpaint.click, handlers.guarded(send, failure),
        [panel.input_image, panel.mask, panel.inpaint_preset, panel.state, panel.choice, *panel.tools], outputs,
    )
    grc.listen(event.then, None, [], [], js="() => window.samPanel.switchToInpaintUpload()")
