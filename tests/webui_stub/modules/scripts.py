"""modules/scripts.py of A1111 v1.10.1, reduced to what extensions touch."""
import importlib.util
import os
import re
from collections import namedtuple
from dataclasses import dataclass

from modules import errors, paths_internal

AlwaysVisible = object()


class PostprocessImageArgs:
    def __init__(self, image):
        self.image = image


class _ForgePostprocessImageArgs:
    """Forge's PostprocessImageArgs(image, index)."""

    def __init__(self, image, index):
        self.image = image
        self.index = index


#: The stand-in is playing Forge (its modules_forge is importable), not A1111.
PLAYING_FORGE = importlib.util.find_spec("modules_forge") is not None
if PLAYING_FORGE:
    PostprocessImageArgs = _ForgePostprocessImageArgs  # noqa: F811


class PostprocessBatchListArgs:
    def __init__(self, images):
        self.images = images


@dataclass
class OnComponent:
    component: object


ScriptFile = namedtuple("ScriptFile", ["basedir", "filename", "path"])
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])

scripts_data = []
current_basedir = paths_internal.script_path


def basedir():
    return current_basedir


class Script:
    name = None
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname = None
    group = None
    create_group = True
    infotext_fields = None
    paste_field_names = None
    api_info = None
    on_before_component_elem_id = None
    on_after_component_elem_id = None
    setup_for_ui_only = False
    controls = None

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def run(self, p, *args):
        pass

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch_list(self, p, pp, *args, **kwargs):
        pass

    def postprocess_image(self, p, pp, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def before_component(self, component, **kwargs):
        pass

    def after_component(self, component, **kwargs):
        pass

    def on_before_component(self, callback, *, elem_id):
        if self.on_before_component_elem_id is None:
            self.on_before_component_elem_id = []
        self.on_before_component_elem_id.append((elem_id, callback))

    def on_after_component(self, callback, *, elem_id):
        if self.on_after_component_elem_id is None:
            self.on_after_component_elem_id = []
        self.on_after_component_elem_id.append((elem_id, callback))

    def describe(self):
        return ""

    def elem_id(self, item_id):
        need_tabname = self.show(True) == self.show(False)
        tabkind = "img2img" if self.is_img2img else "txt2img"
        tabname = f"{tabkind}_" if need_tabname else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tabname}{title}_{item_id}"

    def before_hr(self, p, *args):
        pass


class ScriptRunner:
    def __init__(self):
        self.scripts = []
        self.selectable_scripts = []
        self.alwayson_scripts = []
        self.titles = []
        self.title_map = {}
        self.infotext_fields = []
        self.paste_field_names = []
        self.inputs = [None]
        self.on_before_component_elem_id = {}
        self.on_after_component_elem_id = {}

    def initialize_scripts(self, is_img2img):
        self.scripts.clear()
        self.alwayson_scripts.clear()
        self.selectable_scripts.clear()
        for script_data in scripts_data:
            script = script_data.script_class()
            script.filename = script_data.path
            script.is_txt2img = not is_img2img
            script.is_img2img = is_img2img
            script.tabname = "img2img" if is_img2img else "txt2img"
            visibility = script.show(script.is_img2img)
            if visibility == AlwaysVisible:
                self.scripts.append(script)
                self.alwayson_scripts.append(script)
                script.alwayson = True
            elif visibility:
                self.scripts.append(script)
                self.selectable_scripts.append(script)

    def prepare_ui(self):
        self.inputs = [None]

    def create_script_ui(self, script):
        script.args_from = len(self.inputs)
        script.args_to = len(self.inputs)
        controls = script.ui(script.is_img2img)
        if controls is None:
            return
        script.name = script.title().lower()
        script.controls = controls
        api_args = []
        for control in controls:
            control.custom_script_source = os.path.basename(script.filename or "")
            api_args.append({"label": control.label or "", "value": getattr(control, "value", None)})
        script.api_info = {"name": script.name, "is_alwayson": script.alwayson, "args": api_args}
        self.inputs += controls
        script.args_to = len(self.inputs)

    def setup_ui_for_section(self, section, scriptlist=None):
        import gradio as gr

        for script in scriptlist or self.alwayson_scripts:
            with gr.Group(visible=script.alwayson) as group:
                self.create_script_ui(script)
            script.group = group

    def setup_ui(self):
        self.prepare_ui()
        self.setup_ui_for_section(None)
        return self.inputs

    def _each(self, hook, p, *extra, **kwargs):
        for script in self.alwayson_scripts:
            try:
                script_args = p.script_args[script.args_from:script.args_to]
                getattr(script, hook)(p, *extra, *script_args, **kwargs)
            except Exception:
                errors.report(f"Error running {hook}: {script.filename}", exc_info=True)

    def run(self, p, *args):
        index = args[0] if args else 0
        if index in (0, None):
            return None
        script = self.selectable_scripts[index - 1]
        return script.run(p, *args[script.args_from:script.args_to])

    def before_process(self, p):
        self._each("before_process", p)

    def process(self, p):
        self._each("process", p)

    def process_batch(self, p, **kwargs):
        self._each("process_batch", p, **kwargs)

    def postprocess_image(self, p, pp):
        self._each("postprocess_image", p, pp)

    def postprocess(self, p, processed):
        self._each("postprocess", p, processed)

    def setup_scrips(self, p, *, is_ui=True):
        for script in self.alwayson_scripts:
            if not is_ui and script.setup_for_ui_only:
                continue
            try:
                script_args = p.script_args[script.args_from:script.args_to]
                script.setup(p, *script_args)
            except Exception:
                errors.report(f"Error running setup: {script.filename}", exc_info=True)

    def before_component(self, component, **kwargs):
        for script in self.scripts:
            script.before_component(component, **kwargs)

    def after_component(self, component, **kwargs):
        for script in self.scripts:
            script.after_component(component, **kwargs)


scripts_txt2img: ScriptRunner = None
scripts_img2img: ScriptRunner = None
scripts_current: ScriptRunner = None
