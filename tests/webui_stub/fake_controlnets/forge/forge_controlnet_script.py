"""Recording fake of Forge's built-in ControlNet script (extensions-builtin/sd_forge_controlnet).

Besides recording the units it is given, it applies the checks Forge's ``process`` makes on each
enabled unit before any model is involved, so a unit Forge would choke on fails here too:

* every unit is a ``ControlNetUnit`` once API dicts are turned into units;
* the input image of a unit in the simple input mode: with an image, Forge first asks whether it
  is a scribble on a black canvas, "every pixel of ``image`` below 5 and some alpha of
  ``image_fg`` above 5", reading ``image_fg[:, :, 3]``. With no ``image_fg`` that comparison is
  ``None > 5``: a TypeError, which Forge reaches only when the whole image is below 5 (a nearly
  black map, such as an EditAnything map of few segments);
* without a unit image the img2img picture is used, and none at all is an error.

The (image, mask) Forge would read from each enabled unit is kept in ``p.controlnet_inputs``.
"""
import gradio as gr
import numpy as np

from lib_controlnet import external_code
from modules import scripts

#: Forge's threshold for "black" pixels and "drawn" alpha.
BLACK_BELOW = 5


def _alpha(foreground):
    return None if foreground is None else np.asarray(foreground)[:, :, 3]


def _drawn(alpha) -> bool:
    if alpha is None:
        raise TypeError("'>' not supported between instances of 'NoneType' and 'int'")
    return bool((alpha > BLACK_BELOW).any())


def read_unit_input(p, unit):
    """The (image, mask) Forge takes from an enabled unit in the simple input mode, or its error."""
    image_alpha = _alpha(unit.image_fg)
    if unit.use_preview_as_input and unit.generated_image is not None:
        image = unit.generated_image
    elif unit.image is None:
        image = (getattr(p, "init_images", None) or [None])[0]
        if image is None:
            raise ValueError("controlnet is enabled but no input image is given")
        return np.asarray(image), getattr(p, "image_mask", None)
    elif (np.asarray(unit.image) < BLACK_BELOW).all() and _drawn(image_alpha):
        image = image_alpha
    else:
        image = unit.image
    if not isinstance(image, np.ndarray):
        raise ValueError("controlnet is enabled but no input image is given")
    mask_alpha = _alpha(unit.mask_image_fg)
    if mask_alpha is not None and (mask_alpha > BLACK_BELOW).any():
        mask = mask_alpha
    elif unit.mask_image is not None and (np.asarray(unit.mask_image) > BLACK_BELOW).any():
        mask = unit.mask_image
    elif image_alpha is not None and (image_alpha > BLACK_BELOW).any():
        mask = image_alpha
    else:
        mask = None
    return image, mask


class ControlNetForForgeOfficial(scripts.Script):
    def title(self):
        return "ControlNet"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return [gr.State(external_code.ControlNetUnit(enabled=False)) for _ in range(external_code.get_max_models_num())]

    def process(self, p, *args):
        units = [external_code.ControlNetUnit.from_dict(a) if isinstance(a, dict) else a for a in args]
        if not all(isinstance(unit, external_code.ControlNetUnit) for unit in units):
            raise AssertionError("every ControlNet argument must be a ControlNetUnit")
        inputs = {index: read_unit_input(p, unit) for index, unit in enumerate(units)
                  if unit.enabled and unit.input_mode == "simple"}
        p.controlnet_received = units
        p.controlnet_inputs = inputs
