"""WebUI adapter: the "Detail each object (Segment Anything)" section in txt2img and img2img.

Thin on purpose: the settings are declared in ``sd_webui_sam.detail_settings``, the work is done by
``sd_webui_sam.detailing`` and ``sd_webui_sam.compat.detailer``. Like segment_anything.py, it
imports our packages while the WebUI has the extension root on ``sys.path``.
"""
import sys
from pathlib import Path

from modules import script_callbacks, scripts

EXTENSION_ROOT = Path(scripts.basedir())  # only valid while the WebUI imports this file
if not (EXTENSION_ROOT / "sd_webui_sam").is_dir():
    EXTENSION_ROOT = Path(__file__).resolve().parents[1]
if str(EXTENSION_ROOT) not in sys.path:
    sys.path.insert(0, str(EXTENSION_ROOT))
import local_groundingdino  # noqa: E402,F401  (see segment_anything.py)
import sam2_image  # noqa: E402,F401  (see segment_anything.py)
import sam_hq  # noqa: E402,F401  (see segment_anything.py)
import sd_webui_sam  # noqa: E402,F401  (see segment_anything.py)
from sd_webui_sam.compat import detailer  # noqa: E402
from sd_webui_sam.compat.session import host_session  # noqa: E402
from sd_webui_sam.errors import SamUserError  # noqa: E402
from sd_webui_sam.ui.detail_section import build_detail_section, follow_panel_masks, ordered  # noqa: E402


def _say(messages):
    for message in messages:
        print(f"[Segment Anything] {message}")


def _model_names(engine):
    try:
        return engine.list_models(), engine.list_detectors()
    except SamUserError:
        return [], []


#: elem_id suffix of the panel's hidden parts the section connects to -> their name in follow_panel_masks.
PANEL_PARTS = {"sam_object_masks": "box", "sam_object_masks_wanted": "wanted"}


class SamDetailerScript(scripts.Script):
    # This tab's section argument that holds the panel's masks and its "Objects" choice, and the
    # panel's boxes that feed it (whichever of the two scripts builds its UI first, the second
    # connects them).
    panel_masks_box = None
    section_parts = None
    panel_parts = None

    def title(self):
        return detailer.TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        sam_models, dino_models = _model_names(host_session().engine())
        components = build_detail_section(self.elem_id, sam_models=sam_models, dino_models=dino_models,
                                          samplers=detailer.sampler_names())
        self.infotext_fields = detailer.paste_fields(components)
        self.paste_field_names = []
        self.panel_masks_box = components["panel_masks"]
        self.section_parts = {"box": components["panel_masks"], "source": components["source"]}
        self._connect()
        return ordered(components)

    def after_component(self, component, **kwargs):
        tab = "img2img" if self.is_img2img else "txt2img"
        elem_id = getattr(component, "elem_id", None) or ""
        name = PANEL_PARTS.get(elem_id[len(tab) + 1:]) if elem_id.startswith(f"{tab}_") else None
        if name is not None:
            self.panel_parts = {**(self.panel_parts or {}), name: component}
            self._connect()

    def _connect(self):
        if follow_panel_masks(self.panel_parts, self.section_parts):
            self.panel_parts = None  # connected: a later build must not reuse them

    def before_process(self, p, *args):
        _say(detailer.before_process(p, args))

    def postprocess_image(self, p, pp, *args):
        _say(detailer.detail_image(p, pp, args, host_session().engine(),
                                   save_image=detailer.save_with_host))

    def postprocess(self, p, processed, *args):
        added = detailer.add_kept_images(p, processed)
        if added:
            _say([f"Detail each object: {added} image(s) before detailing added to the gallery."])


def _on_before_ui():
    xyz = detailer.find_xyz_module(scripts.scripts_data)
    if xyz is not None:
        detailer.add_xyz_axes(xyz)


script_callbacks.on_before_ui(_on_before_ui)
