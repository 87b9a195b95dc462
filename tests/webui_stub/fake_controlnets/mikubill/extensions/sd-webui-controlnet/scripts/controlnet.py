"""Recording fake of sd-webui-controlnet's AlwaysVisible script: keeps what process() received."""
import copy
import importlib

import gradio as gr

from modules import scripts, shared

external_code = importlib.import_module("extensions.sd-webui-controlnet.scripts.external_code")


class Script(scripts.Script):
    received = None

    def title(self):
        return "ControlNet"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return [gr.State(external_code.ControlNetUnit()) for _ in range(external_code.get_max_models_num())]

    def process(self, p, *args):
        # ControlNet reads its units from p.script_args in process(); record their state now.
        p.controlnet_received = [copy.copy(external_code.to_processing_unit(a)) for a in args]
