"""WebUI adapter: the 'Segment Anything' accordion in txt2img and img2img.

Thin on purpose: everything it does lives in the ``sd_webui_sam`` package, which is imported
by absolute name while the extension root is on ``sys.path`` (the WebUI imports every file in
``scripts/`` as a top-level module, so nothing may import ``scripts.<x>``).
"""
import logging
import sys
from pathlib import Path

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
import sam_hq  # noqa: E402,F401  (see above)
import sd_webui_sam  # noqa: E402,F401  (see above)
from sd_webui_sam.compat import generation, host_compat  # noqa: E402
from sd_webui_sam.compat.gradio_compat import current_root_block  # noqa: E402
from sd_webui_sam.errors import SamUserError  # noqa: E402
from sd_webui_sam.ui import autosam_tab, text_prompt  # noqa: E402
from sd_webui_sam.ui.panel import TITLE, PanelOptions, build_panel  # noqa: E402

LOG = logging.getLogger("sd_webui_sam")
SESSION = host_compat.host_session()


def _models_path():
    path = getattr(shared, "models_path", None)
    if path:
        return path
    try:
        from modules import paths

        return paths.models_path
    except Exception:
        return None


SESSION.configure(lambda: host_compat.engine_settings(shared.opts, shared.cmd_opts, _models_path(), EXTENSION_ROOT))


class SegmentAnythingScript(scripts.Script):
    def title(self):
        return TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        tab = "img2img" if is_img2img else "txt2img"
        controlnet = host_compat.find_controlnet()
        panel = build_panel(
            PanelOptions(
                prefix=f"{tab}_sam",
                engine=SESSION.engine,
                sd_controls=True,
                is_img2img=is_img2img,
                controlnet_units=controlnet.unit_count(shared.opts) if controlnet.available() else 0,
                tools=host_compat.tool_defaults(shared.opts),
            )
        )
        SESSION.request_send_wiring(panel, current_root_block())
        args = list(panel.script_args)
        # The AutoSAM control-map arguments come last, after the ones older API callers send.
        if len(args) == generation.control_map_offset():
            args += autosam_tab.control_map_script_args(panel)
        else:
            LOG.warning("Segment Anything: %d generation arguments before the control map, expected %d; "
                        "'Send the map to ControlNet' is off.", len(args), generation.control_map_offset())
        # Soft edges of 'cut out after generation' come after those (older callers leave them out: hard).
        if len(args) == generation.cutout_alpha_offset():
            args += text_prompt.cutout_alpha_script_args(panel.extra.get("text_prompt") or {})
        return args

    def before_process(self, p, *args):
        for message in generation.before_process(p, args, host_compat.find_controlnet, is_img2img=bool(self.is_img2img)):
            print(f"[Segment Anything] {message}")

    def postprocess_image(self, p, pp, *args):
        cutout = generation.CutoutArgs.from_values(args)
        if not cutout.enabled:
            return
        try:
            print(f"[Segment Anything] {generation.cut_out_generated(p, pp, cutout, SESSION.engine())}")
        except SamUserError as error:
            print(f"[Segment Anything] Cut out after generation: {error}")

    def postprocess(self, p, processed, *args):
        for path in generation.finish_cutouts(p, processed, host_compat.save_beside_samples):
            print(f"[Segment Anything] saved {path}")


def _on_after_component(component, **kwargs):
    SESSION.capture_component(component, current_root_block())


def _on_ui_settings():
    import gradio as gr

    host_compat.register_options(shared, gr)


def _on_app_started(demo, app):
    try:
        from sd_webui_sam.api import mount_api
    except ImportError as error:
        print(f"[Segment Anything] HTTP API not available: {error}")
        return
    try:
        from modules.call_queue import queue_lock
    except ImportError:
        queue_lock = None
    mount_api(
        app,
        SESSION.engine(),
        auth=getattr(shared.cmd_opts, "api_auth", None),
        settings=host_compat.api_settings(shared.opts),
        gpu_lock=queue_lock,
        batch_interrupt=lambda: bool(getattr(shared.state, "interrupted", False)),
    )


script_callbacks.on_after_component(_on_after_component)
script_callbacks.on_ui_settings(_on_ui_settings)
script_callbacks.on_app_started(_on_app_started)
