"""Load the extension into the stand-in WebUI the way A1111 1.10 does, and drive it.

    webui = FakeWebUI(controlnet="mikubill")      # or "forge", or None
    webui.load_scripts()                          # imports scripts/*.py like the WebUI
    demo = webui.create_ui()                      # txt2img, img2img (with Inpaint upload), settings
    args = webui.api_default_args(webui.img2img)  # what the API does before each request
    p = webui.generate_img2img(values, ...)       # UI path
    p = webui.api_img2img({...})                  # API path (base64 arguments)

``FakeWebUI.close()`` puts ``sys.path`` and ``sys.modules`` back.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

STUB_ROOT = Path(__file__).resolve().parent
EXTENSION_ROOT = STUB_ROOT.parents[1]
FAKE_CONTROLNETS = STUB_ROOT / "fake_controlnets"

_OWNED_PREFIXES = ("modules", "launch", "extensions", "lib_controlnet", "modules_forge", "forge_controlnet_script")


def _owned(name: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in _OWNED_PREFIXES) or name.endswith(".py")


class FakeWebUI:
    def __init__(self, controlnet: Optional[str] = None, unit_count: Optional[int] = 3, legacy_unit_key: bool = False,
                 options: Optional[Dict[str, Any]] = None, models_path: Optional[Path] = None):
        self._saved_path = list(sys.path)
        self._saved_modules = set(sys.modules)
        self.controlnet = controlnet
        self._purge()
        sys.path.insert(0, str(STUB_ROOT))
        if controlnet == "mikubill":
            sys.path.insert(0, str(FAKE_CONTROLNETS / "mikubill"))
        elif controlnet == "forge":
            sys.path.insert(0, str(FAKE_CONTROLNETS / "forge"))
        importlib.invalidate_caches()
        from modules import paths_internal, shared

        if models_path is not None:
            shared.models_path = str(models_path)
            paths_internal.models_path = str(models_path)
        if unit_count is not None:
            shared.opts.data["control_net_max_models_num" if legacy_unit_key else "control_net_unit_count"] = unit_count
        shared.opts.data.update(options or {})
        self._forget_host_session()
        if controlnet != "forge":  # A1111 replaces torch.load with its checker; Forge leaves it alone
            from modules import safe

            safe.install()
        self.modules: Dict[str, Any] = {}
        self.demo = None

    # ----- lifecycle ---------------------------------------------------------------------------

    def _purge(self) -> None:
        for name in list(sys.modules):
            if _owned(name):
                del sys.modules[name]

    def close(self) -> None:
        safe = sys.modules.get("modules.safe")
        if safe is not None:
            safe.uninstall()
        self._purge()
        sys.path[:] = self._saved_path
        importlib.invalidate_caches()
        self._forget_host_session()

    @staticmethod
    def _forget_host_session() -> None:
        """A new WebUI gets a new session; the core may not be importable before load_scripts."""
        session = sys.modules.get("sd_webui_sam.compat.session")
        if session is not None:
            session.host_session.cache_clear()

    # ----- loading -----------------------------------------------------------------------------

    def script_files(self) -> List[tuple]:
        """(extension root, script path), in the v1.6 order: ControlNet's folder sorts first."""
        files = []
        if self.controlnet == "mikubill":
            root = FAKE_CONTROLNETS / "mikubill" / "extensions" / "sd-webui-controlnet"
            files.append((root, root / "scripts" / "controlnet.py"))
        elif self.controlnet == "forge":
            files.append((FAKE_CONTROLNETS / "forge", FAKE_CONTROLNETS / "forge" / "forge_controlnet_script.py"))
        for path in sorted((EXTENSION_ROOT / "scripts").glob("*.py")):
            files.append((EXTENSION_ROOT, path))
        return files

    def load_scripts(self) -> None:
        from modules import script_callbacks, scripts

        script_callbacks.clear_callbacks()
        scripts.scripts_data.clear()
        for basedir, path in self.script_files():
            # modules/scripts.py load_scripts: the script's extension root is on sys.path only
            # while the file is imported; the old list object is put back afterwards.
            saved_path = sys.path
            sys.path = [str(basedir)] + sys.path
            try:
                scripts.current_basedir = str(basedir)
                spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            finally:
                sys.path = saved_path
            self.modules[path.name] = module
            for value in vars(module).values():
                if isinstance(value, type) and issubclass(value, scripts.Script) and value is not scripts.Script \
                        and value.__module__ == module.__name__:
                    scripts.scripts_data.append(scripts.ScriptClassData(value, str(path), str(basedir), module))
        from modules import paths_internal

        scripts.current_basedir = paths_internal.script_path
        scripts.scripts_txt2img = scripts.ScriptRunner()
        scripts.scripts_img2img = scripts.ScriptRunner()
        scripts.scripts_txt2img.initialize_scripts(is_img2img=False)
        scripts.scripts_img2img.initialize_scripts(is_img2img=True)

    @property
    def txt2img(self):
        from modules import scripts

        return scripts.scripts_txt2img

    @property
    def img2img(self):
        from modules import scripts

        return scripts.scripts_img2img

    def script(self, runner, title: str):
        for script in runner.alwayson_scripts:
            if script.title().lower() == title.lower():
                return script
        raise KeyError(title)

    # ----- UI ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def component_callbacks(self):
        """What modules/gradio_extensons.py does: every component fires the before/after callbacks."""
        from gradio.components import Component

        from modules import script_callbacks, scripts

        original = Component.__init__

        def patched(component, *args, **kwargs):
            if scripts.scripts_current is not None:
                scripts.scripts_current.before_component(component, **kwargs)
            script_callbacks.before_component_callback(component, **kwargs)
            original(component, *args, **kwargs)
            script_callbacks.after_component_callback(component, **kwargs)
            if scripts.scripts_current is not None:
                scripts.scripts_current.after_component(component, **kwargs)

        Component.__init__ = patched
        try:
            yield
        finally:
            Component.__init__ = original

    def create_ui(self):
        import gradio as gr

        from modules import script_callbacks, scripts
        from sd_webui_sam.compat.gradio_compat import IS_GRADIO_4

        source = {"sources": ["upload"]} if IS_GRADIO_4 else {"source": "upload"}
        script_callbacks.before_ui_callback()  # webui.py fires it after loading scripts, before create_ui
        self.components: Dict[str, Any] = {}
        # As modules/ui.py does: each tab is a top-level gr.Blocks of its own, rendered into the
        # page afterwards, so while a tab is built gradio's Context.root_block is that tab's Blocks.
        with self.component_callbacks():
            with gr.Blocks() as txt2img_interface:
                scripts.scripts_current = self.txt2img
                gr.Slider(minimum=64, maximum=2048, value=512, label="Width", elem_id="txt2img_width")
                self.txt2img.setup_ui()
            with gr.Blocks() as img2img_interface:
                scripts.scripts_current = self.img2img
                self._img2img_controls(gr, source)
                self.img2img.setup_ui()
            scripts.scripts_current = None
            with gr.Blocks() as demo:
                with gr.Tabs(elem_id="tabs"):
                    for interface, name in ((txt2img_interface, "txt2img"), (img2img_interface, "img2img")):
                        with gr.TabItem(name, id=name, elem_id=f"tab_{name}"):
                            interface.render()
                script_callbacks.ui_settings_callback()
        self.demo = demo
        return demo

    def _img2img_controls(self, gr, source) -> None:
        """img2img's mode tabs with Inpaint upload, then the inpaint controls, before its scripts."""
        with gr.Tabs(elem_id="mode_img2img"):
            for index, name in enumerate(["img2img", "sketch", "inpaint", "inpaint sketch"]):
                with gr.TabItem(name, id=name):
                    gr.Image(label=name, type="pil", interactive=True, elem_id=f"stub_{index}", **source)
            with gr.TabItem("Inpaint upload", id="inpaint_upload", elem_id="img2img_inpaint_upload_tab"):
                self.components["img_inpaint_base"] = gr.Image(
                    label="Image for img2img", show_label=False, interactive=True, type="pil",
                    elem_id="img_inpaint_base", **source)
                self.components["img_inpaint_mask"] = gr.Image(
                    label="Mask", interactive=True, type="pil", image_mode="RGBA",
                    elem_id="img_inpaint_mask", **source)
        self.components["img2img_mask_blur"] = gr.Slider(
            label="Mask blur", minimum=0, maximum=64, step=1, value=4, elem_id="img2img_mask_blur")
        self.components["img2img_mask_mode"] = gr.Radio(
            label="Mask mode", choices=["Inpaint masked", "Inpaint not masked"], value="Inpaint masked",
            type="index", elem_id="img2img_mask_mode")
        self.components["img2img_inpainting_fill"] = gr.Radio(
            label="Masked content", choices=["fill", "original", "latent noise", "latent nothing"],
            value="original", type="index", elem_id="img2img_inpainting_fill")
        self.components["img2img_inpaint_full_res"] = gr.Radio(
            label="Inpaint area", choices=["Whole picture", "Only masked"], type="index",
            value="Whole picture", elem_id="img2img_inpaint_full_res")
        self.components["img2img_inpaint_full_res_padding"] = gr.Slider(
            label="Only masked padding, pixels", minimum=0, maximum=256, step=4, value=32,
            elem_id="img2img_inpaint_full_res_padding")
        self.components["img2img_denoising_strength"] = gr.Slider(
            minimum=0.0, maximum=1.0, step=0.01, label="Denoising strength", value=0.75,
            elem_id="img2img_denoising_strength")

    # ----- API ---------------------------------------------------------------------------------

    def api_default_args(self, runner) -> list:
        """modules/api/api.py init_default_script_args: ui() twice per script, headless."""
        import gradio as gr

        last = max([1] + [s.args_to for s in runner.scripts if s.args_to is not None])
        script_args: List[Any] = [None] * last
        script_args[0] = 0
        with gr.Blocks():
            for script in runner.scripts:
                if script.ui(script.is_img2img):
                    values = [element.value for element in script.ui(script.is_img2img)]
                    script_args[script.args_from:script.args_to] = values
        return script_args

    def api_script_args(self, runner, alwayson_scripts: Dict[str, Dict[str, Sequence]]) -> list:
        script_args = self.api_default_args(runner)
        for name, request in alwayson_scripts.items():
            script = self.script(runner, name)
            given = list(request.get("args", []))
            for index in range(min(script.args_to - script.args_from, len(given))):
                script_args[script.args_from + index] = given[index]
        return script_args

    def api_img2img(self, request: Dict[str, Any]):
        from modules import processing
        from modules.api.api import decode_base64_to_image

        init_images = [decode_base64_to_image(x) for x in request.get("init_images", [])]
        mask = decode_base64_to_image(request["mask"]) if request.get("mask") else None
        p = processing.StableDiffusionProcessingImg2Img(
            prompt=request.get("prompt", ""), init_images=init_images, mask=mask,
            denoising_strength=request.get("denoising_strength", 0.75),
        )
        script_args = self.api_script_args(self.img2img, request.get("alwayson_scripts", {}))
        p.is_api = True
        p.scripts = self.img2img
        p.script_args = tuple(script_args)
        processing.process_images(p)
        return p

    def api_txt2img(self, request: Dict[str, Any]):
        from modules import processing

        p = processing.StableDiffusionProcessingTxt2Img(prompt=request.get("prompt", ""))
        script_args = self.api_script_args(self.txt2img, request.get("alwayson_scripts", {}))
        p.is_api = True
        p.scripts = self.txt2img
        p.script_args = tuple(script_args)
        processing.process_images(p)
        return p

    # ----- UI generations ----------------------------------------------------------------------

    def ui_values(self, runner, overrides: Dict[str, Sequence]) -> list:
        """The tuple the UI passes: every input's current value, with some scripts' values replaced."""
        values = [0] + [getattr(component, "value", None) for component in runner.inputs[1:]]
        for name, given in overrides.items():
            script = self.script(runner, name)
            values[script.args_from:script.args_from + len(given)] = list(given)
        return values

    def generate_img2img(self, overrides: Dict[str, Sequence], init_images=None, mask=None, script_args=None):
        from modules import processing

        p = processing.StableDiffusionProcessingImg2Img(init_images=init_images, mask=mask)
        p.scripts = self.img2img
        p.script_args = tuple(script_args if script_args is not None else self.ui_values(self.img2img, overrides))
        processing.process_images(p)
        return p

    def generate_txt2img(self, overrides: Dict[str, Sequence], script_args=None):
        from modules import processing

        p = processing.StableDiffusionProcessingTxt2Img()
        p.scripts = self.txt2img
        p.script_args = tuple(script_args if script_args is not None else self.ui_values(self.txt2img, overrides))
        processing.process_images(p)
        return p
