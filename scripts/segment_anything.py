"""WebUI adapter: the 'Segment Anything' accordion in txt2img and img2img.

Thin on purpose: everything it does lives in the ``sd_webui_sam`` package, which is imported
by absolute name while the extension root is on ``sys.path`` (the WebUI imports every file in
``scripts/`` as a top-level module, so nothing may import ``scripts.<x>``).
"""
import sys
from pathlib import Path

import gradio as gr
from modules import script_callbacks, scripts, shared

EXTENSION_ROOT = Path(scripts.basedir())  # only valid while the WebUI imports this file
if not (EXTENSION_ROOT / "sd_webui_sam").is_dir():
    EXTENSION_ROOT = Path(__file__).resolve().parents[1]
# A1111's load_scripts puts the extension root on a *temporary* sys.path while it imports this
# file and restores the old list afterwards, so an insert made now does not last. Our three
# top-level packages are therefore imported here, while the root is importable: once they are in
# sys.modules, every later (lazy) import of their submodules resolves through their __path__.
if str(EXTENSION_ROOT) not in sys.path:
    sys.path.insert(0, str(EXTENSION_ROOT))
import local_groundingdino  # noqa: E402,F401  (see above)
import sam2_image  # noqa: E402,F401  (see above)
import sam_hq  # noqa: E402,F401  (see above)
import sd_webui_sam  # noqa: E402,F401  (see above)
from sd_webui_sam.compat import generation, host_memory, options, saving  # noqa: E402
from sd_webui_sam.compat.controlnet import find_controlnet  # noqa: E402
from sd_webui_sam.compat.controlnet_preprocessors import find_preprocessor  # noqa: E402
from sd_webui_sam.compat.gradio_compat import current_root_block  # noqa: E402
from sd_webui_sam.compat.interrupt import webui_interrupted  # noqa: E402
from sd_webui_sam.compat.session import host_session  # noqa: E402
from sd_webui_sam.errors import SamUserError  # noqa: E402
from sd_webui_sam.script_args import parse_script_args  # noqa: E402
from sd_webui_sam.ui.panel import TITLE, PanelOptions, ToolDefaults, build_panel, wire_send_to_inpaint  # noqa: E402

SESSION = host_session()


def _models_path():
    path = getattr(shared, "models_path", None)
    if path:
        return path
    try:
        from modules import paths  # where shared.models_path is missing (older hosts)

        return paths.models_path
    except Exception:
        return None


SESSION.configure(lambda: options.engine_settings(shared.opts, shared.cmd_opts, _models_path(), EXTENSION_ROOT),
                  wire_send=wire_send_to_inpaint)
host_memory.install_forge_hook(SESSION.engine_if_created)


class SegmentAnythingScript(scripts.Script):
    def title(self):
        return TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        tab = "img2img" if is_img2img else "txt2img"
        controlnet = find_controlnet()
        panel = build_panel(
            PanelOptions(
                prefix=f"{tab}_sam",
                engine=SESSION.engine,
                sd_controls=True,
                is_img2img=is_img2img,
                controlnet_units=controlnet.unit_count(shared.opts) if controlnet.available() else 0,
                tools=ToolDefaults(**options.tool_default_values(shared.opts)),
                host_interrupted=webui_interrupted,
                find_preprocessor=find_preprocessor,
            )
        )
        SESSION.request_send_wiring(panel, current_root_block())
        return panel.script_args  # in script_args.SCRIPT_ARGS order, which parse_script_args reads

    def before_process(self, p, *args):
        moved = host_memory.before_generation(SESSION.engine_if_created, shared.opts, shared.cmd_opts,
                                              getattr(shared, "sd_model", None))
        messages = generation.before_process(p, args, find_controlnet, is_img2img=bool(self.is_img2img))
        for message in ([moved] if moved else []) + messages:
            print(f"[Segment Anything] {message}")

    def postprocess_image(self, p, pp, *args):
        values = parse_script_args(args)
        if not values.cutout_enabled:
            return
        try:
            print(f"[Segment Anything] {generation.cut_out_generated(p, pp, values, SESSION.engine())}")
        except SamUserError as error:
            print(f"[Segment Anything] Cut out after generation: {error}")

    def postprocess(self, p, processed, *args):
        for path in generation.finish_cutouts(p, processed, saving.save_beside_samples):
            print(f"[Segment Anything] saved {path}")


def _on_after_component(component, **kwargs):
    SESSION.capture_component(component, current_root_block())


def _on_ui_settings():
    options.register_options(shared, gr)


def _on_app_started(demo, app):
    try:
        from sd_webui_sam.api import ApiSettings, mount_api  # fastapi-dependent: a missing piece must not stop the panel
    except ImportError as error:
        print(f"[Segment Anything] HTTP API not available: {error}")
        return
    try:
        from modules.call_queue import queue_lock  # not in every host version
    except ImportError:
        queue_lock = None
    mount_api(
        app,
        SESSION.engine(),
        auth=getattr(shared.cmd_opts, "api_auth", None),
        settings=ApiSettings(busy_timeout_s=options.api_busy_timeout_s(shared.opts)),
        gpu_lock=queue_lock,
        batch_interrupt=webui_interrupted,
        find_preprocessor=find_preprocessor,
    )


script_callbacks.on_after_component(_on_after_component)
script_callbacks.on_ui_settings(_on_ui_settings)
script_callbacks.on_app_started(_on_app_started)
