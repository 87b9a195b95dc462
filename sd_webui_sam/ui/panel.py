"""The Segment Anything panel, built the same way in txt2img, img2img and the standalone app.

``build_panel`` only creates components and wires events: calling it several times (the WebUI's
API builds every script's UI headlessly, twice per tab) has no effect beyond the new components.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import gradio as gr

from sd_webui_sam.compat import gradio_compat as grc
from sd_webui_sam.devices import DEVICE_CHOICES
from sd_webui_sam.ui import handlers, text_prompt

TITLE = "Segment Anything"
CHOICES = tuple(f"Mask {i + 1}" for i in range(handlers.CANDIDATE_COUNT))

HELP_HTML = (
    "<b>Left click</b>: positive point. <b>Right click</b>: negative point. <b>Drag</b>: box (several boxes "
    "segment several objects). <b>Click a dot</b> to remove it."
)


@dataclass(frozen=True)
class ToolDefaults:
    expand: int = 0
    feather: float = 0.0
    fill_holes: bool = False
    min_island: int = 0
    auto_preview: bool = True


@dataclass(frozen=True)
class PanelOptions:
    """How one panel is built.

    ``prefix`` names every element (``<prefix>_input_image``...) and must be unique per page.
    ``sd_controls``: the controls that only make sense inside a WebUI (send to img2img, ControlNet).
    ``controlnet_units``: 0 hides the ControlNet controls.
    """

    prefix: str
    engine: Callable[[], Any]
    sd_controls: bool = False
    is_img2img: bool = False
    controlnet_units: int = 0
    tools: ToolDefaults = field(default_factory=ToolDefaults)
    accordion: bool = True


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

    @property
    def script_args(self) -> list:
        """The generation arguments, in the order ``compat.generation.ScriptArgs`` reads them."""
        return [self.use_for_generation, self.input_image, self.mask, self.cn_enabled, self.cn_unit, self.cn_invert,
                *self.extra.get("cutout_args", ())]


def elem(prefix: str, name: str) -> str:
    return f"{prefix}_{name}"


def status_html(message: str, *, error: bool = False) -> str:
    import html

    css = "sam-status-error" if error else "sam-status-ok"
    return f'<p class="{css}">{html.escape(message)}</p>' if message else ""


def _model_choices(engine_provider: Callable[[], Any], refresh: bool = False) -> List[str]:
    try:
        return list(engine_provider().list_models(refresh=refresh))
    except Exception as error:  # a broken model dir must not break the tab
        handlers.describe_failure(error)
        return []


def _current_device(engine_provider: Callable[[], Any]) -> str:
    try:
        preference = (engine_provider().settings.device or "auto").split(":")[0]
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
            refresh = gr.Button("\U0001f504", elem_id=elem(prefix, "refresh"), elem_classes=["tool"], scale=0, min_width=40)
            device = gr.Dropdown(label="Device", choices=list(DEVICE_CHOICES), value=_current_device(engine),
                                 elem_id=elem(prefix, "device"), scale=0, min_width=110)
        download_parts = _download_section(prefix, engine)
        with gr.Row():
            with gr.Column():
                input_image = grc.image_input("Image", elem_id=elem(prefix, "input_image"))
                gr.HTML(HELP_HTML, elem_id=elem(prefix, "help"))
                with gr.Row():
                    undo = gr.Button("Undo last", elem_id=elem(prefix, "undo"), size="sm")
                    clear = gr.Button("Clear points and boxes", elem_id=elem(prefix, "clear"), size="sm")
                with gr.Row():
                    auto_preview = gr.Checkbox(
                        label="Preview on every click", value=options.tools.auto_preview, interactive=True,
                        elem_id=elem(prefix, "auto_preview")
                    )
                    preview = gr.Button("Preview", variant="primary", elem_id=elem(prefix, "preview"))
            with gr.Column():
                candidates = grc.gallery("Candidates", elem_id=elem(prefix, "candidates"), columns=3, height="auto")
                # Fixed choices: gradio 3 validates a submitted value against the choices the server
                # built, so choices updated in the browser would be refused.
                choice = gr.Radio(
                    label="Use mask", choices=list(CHOICES), value=CHOICES[0], type="index", elem_id=elem(prefix, "choice")
                )
                status = gr.HTML("", elem_id=elem(prefix, "status"), elem_classes=["sam-status"])
        with gr.Row():
            expand = gr.Slider(-64, 64, value=options.tools.expand, step=1, label="Expand (+) / shrink (-), px",
                               elem_id=elem(prefix, "expand"))
            feather = gr.Slider(0, 32, value=options.tools.feather, step=0.5, label="Feather, px",
                                elem_id=elem(prefix, "feather"))
            min_island = gr.Slider(0, 4096, value=options.tools.min_island, step=16,
                                   label="Remove islands smaller than, px", elem_id=elem(prefix, "min_island"))
            with gr.Column(min_width=120):
                fill_holes = gr.Checkbox(label="Fill holes", value=options.tools.fill_holes, elem_id=elem(prefix, "fill_holes"))
                invert = gr.Checkbox(label="Invert", value=False, elem_id=elem(prefix, "invert"))
        with gr.Row():
            overlay = grc.image_output("Overlay", elem_id=elem(prefix, "overlay"))
            mask = grc.image_output("Mask", elem_id=elem(prefix, "mask"), image_mode="L")
            cutout = grc.image_output("Cut-out", elem_id=elem(prefix, "cutout"), image_mode="RGBA")
        prompts = gr.Textbox(value="", visible=False, label="Prompts", elem_id=elem(prefix, "prompts"))
        state = gr.State(None)
        image_state = gr.State(None)  # handlers.SessionImage: the picture decoded once per upload
        panel = Panel(
            options=options, model=model, input_image=input_image, prompts=prompts, preview=preview,
            candidates=candidates, choice=choice, status=status, overlay=overlay, mask=mask, cutout=cutout,
            tools=[expand, feather, fill_holes, min_island, invert], state=state,
            extra={"refresh": refresh, "device": device, "undo": undo, "clear": clear, "auto_preview": auto_preview,
                   "image_state": image_state, **download_parts},
        )
        if options.sd_controls:
            _sd_controls(panel)
        else:
            # The standalone app has no generation: the values are placeholders the API shape keeps.
            panel.use_for_generation = gr.Checkbox(value=False, visible=False, label="Use this mask for the next generation")
            panel.cn_enabled = gr.Checkbox(value=False, visible=False, label="Send to ControlNet")
            panel.cn_unit = gr.Number(value=0, precision=0, visible=False, label="ControlNet unit")
            panel.cn_invert = gr.Checkbox(value=False, visible=False, label="Inpaint not masked")
        text_parts = text_prompt.build_section(panel)
        panel.extra.update(text_prompt=text_parts, cutout_args=text_prompt.cutout_script_args(panel, text_parts))
        panel.extra.update(_more_tabs(panel))
    _wire(panel, refresh, undo, clear)
    return panel


def _more_tabs(panel: Panel) -> Dict[str, Any]:
    """The "Auto SAM" and "Batch" tabs (ui/autosam_tab.py, ui/batch_tab.py), below the main tools."""
    from sd_webui_sam.ui import autosam_tab, batch_tab

    prefix = panel.options.prefix
    with gr.Tabs(elem_id=elem(prefix, "more_tabs")):
        with gr.Tab("Auto SAM", elem_id=elem(prefix, "autosam_tab")):
            autosam_parts = autosam_tab.build(panel)
        with gr.Tab("Batch", elem_id=elem(prefix, "batch_tab")):
            batch_parts = batch_tab.build(panel, autosam_config=autosam_parts["config"])
    return {"autosam": autosam_parts, "batch": batch_parts}


def _download_section(prefix: str, engine: Callable[[], Any]) -> Dict[str, Any]:
    catalogue = _official_checkpoints()
    if not catalogue:
        return {}
    with gr.Accordion("Download official checkpoints", open=False, elem_id=elem(prefix, "download_section")):
        with gr.Row():
            which = gr.Dropdown(label="Checkpoint", choices=list(catalogue), value=next(iter(catalogue)),
                                elem_id=elem(prefix, "download_choice"))
            button = gr.Button("Download", elem_id=elem(prefix, "download"))
        result = gr.HTML("", elem_id=elem(prefix, "download_status"), elem_classes=["sam-status"])
    return {"download_choice": which, "download_button": button, "download_status": result}


def _official_checkpoints() -> Dict[str, Any]:
    """Label (with size) -> file name of each checkpoint the downloader knows."""
    try:
        from sd_webui_sam import downloads
    except ImportError:
        return {}
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
    panel.use_for_generation = gr.Checkbox(
        label="Use this mask for the next generation (img2img inpaint)", value=False, visible=options.is_img2img,
        elem_id=elem(prefix, "use_for_generation"),
    )
    units = max(0, int(options.controlnet_units))
    with gr.Row(visible=units > 0, elem_id=elem(prefix, "controlnet_row")):
        shown = units > 0
        panel.cn_enabled = gr.Checkbox(label="Send to ControlNet unit", value=False, visible=shown,
                                       elem_id=elem(prefix, "cn_enabled"))
        panel.cn_unit = gr.Dropdown(
            label="ControlNet unit", choices=[str(i) for i in range(max(units, 1))], value="0", visible=shown,
            elem_id=elem(prefix, "cn_unit"),
        )
        panel.cn_invert = gr.Checkbox(label="Inpaint not masked (invert)", value=False, visible=shown,
                                      elem_id=elem(prefix, "cn_invert"))


def _wire(panel: Panel, refresh: Any, undo: Any, clear: Any) -> None:
    engine = panel.options.engine
    prefix = panel.options.prefix

    def refresh_models(current: Optional[str]):
        names = _model_choices(engine, refresh=True)
        value = current if current in names else (names[0] if names else None)
        return grc.update(choices=names, value=value)

    grc.listen(refresh.click, refresh_models, [panel.model], [panel.model], show_progress=False)

    def change_device(preference: str):
        message, done = handlers.change_device(engine(), preference)
        return status_html(message, error=not done)

    grc.listen(panel.extra["device"].change, change_device, [panel.extra["device"]], [panel.status], show_progress=False)

    undo_js = f"() => window.samPanel.undo({prefix!r})"
    clear_js = f"() => window.samPanel.clear({prefix!r})"
    grc.listen(undo.click, None, [], [], js=undo_js)
    grc.listen(clear.click, None, [], [], js=clear_js)

    def show_failure(message: str):
        return ([], grc.update(), None, status_html(message, error=True))

    files = handlers.ImageFiles()
    image_state = panel.extra["image_state"]

    # The picture is decoded once when it changes and encoded right away, so a click sends only
    # its prompts and runs only the mask decoder.
    def remember_image(image):
        return handlers.session_image(image, getattr(engine().settings, "max_image_pixels", None)), ""

    def remember_failure(message: str):
        return None, status_html(message, error=True)

    def encode_ahead(model_name, image):
        seconds = handlers.encode_ahead(engine(), model_name, image)
        if seconds is None:
            return grc.update()
        width, height = image.size
        return status_html(f"Picture {width}x{height} encoded in {seconds:.1f} s; each click now runs the mask decoder only.")

    def encode_failure(message: str):
        return status_html(message, error=True)

    remembered = grc.listen(panel.input_image.change, handlers.guarded(remember_image, remember_failure),
                            [panel.input_image], [image_state, panel.status], show_progress=False)
    guarded_encode = handlers.guarded(encode_ahead, encode_failure)
    grc.listen(remembered.then, guarded_encode, [panel.model, image_state], [panel.status], show_progress=False)
    grc.listen(remembered.then, None, [], [], js=f"() => window.samPanel.imageReady({prefix!r})")
    grc.listen(panel.model.change, guarded_encode, [panel.model, image_state], [panel.status], show_progress=False)

    def preview_masks(model_name, image, prompts_json):
        found = handlers.segment(engine(), model_name, image, prompts_json)
        scores = ", ".join(f"{i + 1}: {s:.3f}" for i, s in enumerate(found.scores))
        message = (f"{len(found.scores)} masks from {found.prompt_summary} (scores {scores}). "
                   "Mask {} is the best; pick another below, the tools apply live.".format(found.best + 1))
        gallery = handlers.candidate_gallery_files(found, files)
        return gallery, grc.update(value=CHOICES[found.best]), found, status_html(message)

    inputs = [panel.model, image_state, panel.prompts]
    collect_js = (
        f"(...args) => window.samPanel.collect({prefix!r}, args, {inputs.index(panel.prompts)}, {len(inputs)})"
    )
    event = grc.listen(
        panel.preview.click,
        handlers.guarded(preview_masks, show_failure),
        inputs,
        [panel.candidates, panel.choice, panel.state, panel.status],
        js=collect_js,
        show_progress=False,
        queue=grc.FAST_EVENT_QUEUE,
    )

    tool_inputs = [panel.state, panel.choice, *panel.tools]

    def render_choice(found, index, expand, feather, fill_holes, min_island, invert):
        if found is None:
            return None, None, None
        tools = handlers.MaskTools(
            expand=int(expand or 0), feather=float(feather or 0), fill_holes=bool(fill_holes),
            min_island=int(min_island or 0), invert=bool(invert),
        )
        return handlers.chosen_output_files(found, found.best if index is None else int(index), tools, files)

    def render_failure(message: str):
        return None, None, None

    render_outputs = [panel.overlay, panel.mask, panel.cutout]
    guarded_render = handlers.guarded(render_choice, render_failure)
    # Off gradio 3's one-at-a-time queue too, so rendering an answer never holds up the next preview.
    grc.listen(event.then, guarded_render, tool_inputs, render_outputs, show_progress=False,
               queue=grc.FAST_EVENT_QUEUE)
    # Tells the front end the preview is answered, so a click made meanwhile gets its own preview.
    grc.listen(event.then, None, [], [], js=f"() => window.samPanel.previewDone({prefix!r})")
    for control in [panel.choice, *panel.tools]:
        grc.listen(control.change if control is not panel.choice else control.input, guarded_render, tool_inputs,
                   render_outputs, show_progress=False, queue=grc.FAST_EVENT_QUEUE)

    if "download_button" in panel.extra:
        _wire_download(panel)


def _wire_download(panel: Panel) -> None:
    engine = panel.options.engine
    catalogue = _official_checkpoints()
    which, button, result = panel.extra["download_choice"], panel.extra["download_button"], panel.extra["download_status"]

    def download(label, current, progress=gr.Progress()):
        from sd_webui_sam import downloads

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
        return grc.update(choices=names, value=value), status_html(f"Downloaded {target.name} to {target.parent}.")

    def failure(message: str):
        return grc.update(), status_html(message, error=True)

    grc.listen(button.click, handlers.guarded(download, failure), [which, panel.model], [panel.model, result])


def wire_send_to_inpaint(panel: Panel, targets: Dict[str, Any]) -> None:
    """Connect 'Send to img2img inpaint' to img2img's Inpaint-upload images and the preset controls.

    ``targets`` maps elem_id -> component, captured from the host as it builds img2img; it must
    hold at least ``img_inpaint_base`` and ``img_inpaint_mask``.
    """
    if panel.send_to_inpaint is None or "img_inpaint_base" not in targets or "img_inpaint_mask" not in targets:
        return
    controls = [name for name in handlers.PRESET_TARGETS if name in targets]
    outputs = [targets["img_inpaint_base"], targets["img_inpaint_mask"], *(targets[n] for n in controls), panel.status]

    def send(image, mask, preset):
        picture, mask_image = handlers.inpaint_pair(image, mask)
        values = handlers.PRESET_VALUES.get(preset or handlers.LEAVE_SETTINGS, {})
        updates = [grc.update(value=values[name]) if name in values else grc.update() for name in controls]
        note = "" if not values else f" Preset '{preset}' applied."
        return [picture, mask_image, *updates, status_html("Sent to img2img > Inpaint upload." + note)]

    def failure(message: str):
        return [grc.update(), grc.update(), *(grc.update() for _ in controls), status_html(message, error=True)]

    event = grc.listen(
        panel.send_to_inpaint.click, handlers.guarded(send, failure),
        [panel.input_image, panel.mask, panel.inpaint_preset], outputs,
    )
    grc.listen(event.then, None, [], [], js="() => window.samPanel.switchToInpaintUpload()")
