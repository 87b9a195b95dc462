"""Fake Forge 2 lib_controlnet.external_code: a dataclass unit, images as arrays, no processing helpers."""
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, Optional

from modules import shared


class ResizeMode(Enum):
    RESIZE = "Just Resize"
    INNER_FIT = "Crop and Resize"
    OUTER_FIT = "Resize and Fill"


class ControlMode(Enum):
    BALANCED = "Balanced"
    PROMPT = "My prompt is more important"
    CONTROL = "ControlNet is more important"


@dataclass
class ControlNetUnit:
    input_mode: str = "simple"
    use_preview_as_input: bool = False
    batch_image_dir: str = ""
    batch_mask_dir: str = ""
    batch_input_gallery: Optional[list] = None
    batch_mask_gallery: Optional[list] = None
    generated_image: Optional[Any] = None
    mask_image: Optional[Any] = None
    mask_image_fg: Optional[Any] = None
    hr_option: str = "Both"
    enabled: bool = True
    module: str = "None"
    model: str = "None"
    weight: float = 1.0
    image: Optional[Any] = None
    image_fg: Optional[Any] = None
    resize_mode: ResizeMode = ResizeMode.INNER_FIT
    processor_res: int = -1
    threshold_a: float = -1
    threshold_b: float = -1
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    pixel_perfect: bool = False
    control_mode: ControlMode = ControlMode.BALANCED
    save_detected_map: bool = True

    @staticmethod
    def from_dict(d):
        names = {f.name for f in fields(ControlNetUnit)}
        return ControlNetUnit(**{k: v for k, v in d.items() if k in names})


UiControlNetUnit = ControlNetUnit


def get_max_models_num():
    return shared.opts.data.get("control_net_unit_count", 3)
