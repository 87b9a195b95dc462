"""Recording fake of Forge's built-in ControlNet script (extensions-builtin/sd_forge_controlnet)."""
import gradio as gr

from lib_controlnet import external_code
from modules import scripts


class ControlNetForForgeOfficial(scripts.Script):
    def title(self):
        return "ControlNet"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return [gr.State(external_code.ControlNetUnit(enabled=False)) for _ in range(external_code.get_max_models_num())]

    def process(self, p, *args):
        units = [external_code.ControlNetUnit.from_dict(a) if isinstance(a, dict) else a for a in args]
        p.controlnet_received = units
