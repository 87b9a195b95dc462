"""Fake sd-webui-controlnet external_code (v1.1.455 behaviour): units live in p.script_args."""
import copy
from enum import Enum

from modules import shared


class ResizeMode(Enum):
    RESIZE = "Just Resize"
    INNER_FIT = "Crop and Resize"
    OUTER_FIT = "Resize and Fill"


class ControlMode(Enum):
    BALANCED = "Balanced"
    PROMPT = "My prompt is more important"
    CONTROL = "ControlNet is more important"


class ControlNetUnit:
    """Field set of the pydantic unit of v1.1.455 (``enabled`` defaults to False there)."""

    def __init__(self, enabled=False, module="none", model="None", weight=1.0, image=None, resize_mode=ResizeMode.INNER_FIT,
                 low_vram=False, processor_res=-1, threshold_a=-1, threshold_b=-1, guidance_start=0.0, guidance_end=1.0,
                 pixel_perfect=False, control_mode=ControlMode.BALANCED, mask=None, **extra):
        self.enabled = enabled
        self.module = module
        self.model = model
        self.weight = weight
        self.image = image
        self.resize_mode = resize_mode
        self.low_vram = low_vram
        self.processor_res = processor_res
        self.threshold_a = threshold_a
        self.threshold_b = threshold_b
        self.guidance_start = guidance_start
        self.guidance_end = guidance_end
        self.pixel_perfect = pixel_perfect
        self.control_mode = control_mode
        self.mask = mask
        self.__dict__.update(extra)

    def __copy__(self):
        clone = ControlNetUnit.__new__(ControlNetUnit)
        clone.__dict__.update(self.__dict__)
        return clone


def get_max_models_num():
    return shared.opts.data.get("control_net_unit_count", 3)


def is_cn_script(script):
    return script.title().lower() == "controlnet"


def find_cn_script(script_runner):
    if script_runner is None:
        return None
    for script in script_runner.alwayson_scripts:
        if is_cn_script(script):
            return script
    return None


def to_processing_unit(unit):
    if isinstance(unit, dict):
        return ControlNetUnit(**unit)
    return unit  # instances are returned as they are: the caller's object, not a copy


def get_all_units_from(script_args):
    return [to_processing_unit(a) for a in script_args if isinstance(a, (ControlNetUnit, dict))]


def get_all_units(script_runner, script_args):
    cn = find_cn_script(script_runner)
    if cn is None:
        return []
    return get_all_units_from(script_args[cn.args_from:cn.args_to])


def get_all_units_in_processing(p):
    return get_all_units(p.scripts, p.script_args)


def update_cn_script(script_runner, script_args, cn_units):
    cn = find_cn_script(script_runner)
    if cn is None or len(script_args) < cn.args_from:
        return script_args
    units = list(cn_units)
    max_models = shared.opts.data.get("control_net_unit_count", 3)
    units += [ControlNetUnit(enabled=False)] * max(max_models - len(units), 0)
    args = list(script_args)
    count_before = cn.args_to - cn.args_from
    args[cn.args_from:cn.args_to] = units
    shift = len(units) - count_before
    if shift:
        for script in script_runner.alwayson_scripts:
            if script.args_from is not None and script.args_from >= cn.args_to:
                script.args_from += shift
                script.args_to += shift
        cn.args_to += shift
    return tuple(args) if isinstance(script_args, tuple) else args


def update_cn_script_in_processing(p, cn_units, **_kwargs):
    p.script_args = update_cn_script(p.scripts, p.script_args_value, cn_units)
