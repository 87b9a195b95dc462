"""What the Segment Anything script does to a generation, host-independent.

It runs in ``before_process``: every extension's ``before_process`` runs before any ``process``
(where ControlNet reads its units) and before ``p.init`` (where img2img reads ``init_images`` and
``image_mask``), so no reordering of other scripts is needed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import numpy as np
from PIL import Image

from sd_webui_sam.errors import SamUserError

LOG = logging.getLogger("sd_webui_sam.generation")

#: The order of ``Panel.script_args``; API callers pass ``alwayson_scripts["segment anything"]["args"]`` in it.
ARG_NAMES = ("use_for_generation", "image", "mask", "controlnet_enabled", "controlnet_unit", "controlnet_invert")


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _unit(value: Any) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return 0


@dataclass(frozen=True)
class ScriptArgs:
    use_for_generation: bool = False
    image: Any = None
    mask: Any = None
    controlnet_enabled: bool = False
    controlnet_unit: int = 0
    controlnet_invert: bool = False

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> "ScriptArgs":
        """UI values (PIL images) or API values (base64 strings); missing trailing values keep defaults."""
        padded = list(values) + [None] * (len(ARG_NAMES) - len(values))
        return cls(
            use_for_generation=_flag(padded[0]),
            image=padded[1],
            mask=padded[2],
            controlnet_enabled=_flag(padded[3]),
            controlnet_unit=_unit(padded[4]),
            controlnet_invert=_flag(padded[5]),
        )

    @property
    def wanted(self) -> bool:
        return self.use_for_generation or self.controlnet_enabled


def _as_pil(value: Any, what: str) -> Image.Image:
    from sd_webui_sam.ui.handlers import decode_base64_image

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        return Image.fromarray(value)
    if isinstance(value, str) and value:
        return decode_base64_image(value)
    if isinstance(value, dict):  # gradio 4 FileData / gradio 3 editor dicts
        for key in ("image", "background", "path", "name"):
            if value.get(key) is not None:
                inner = value[key]
                return Image.open(inner) if isinstance(inner, str) else _as_pil(inner, what)
    raise SamUserError(f"Segment Anything: no {what}. Press Preview and pick a mask first.")


def image_and_mask(args: ScriptArgs) -> "tuple[Image.Image, Image.Image]":
    """The source picture (RGB) and the processed mask (L, 255 = selected), same size."""
    image = _as_pil(args.image, "image").convert("RGB")
    mask = _as_pil(args.mask, "mask")
    if mask.mode in ("RGBA", "LA") and mask.getextrema()[-1][0] < 255:
        mask = mask.getchannel("A")
    mask = mask.convert("L")
    if mask.size != image.size:
        raise SamUserError(
            f"Segment Anything: the mask is {mask.size[0]}x{mask.size[1]} but the image is "
            f"{image.size[0]}x{image.size[1]}; press Preview again for this image."
        )
    return image, mask


def apply(p: Any, values: Sequence[Any], controlnet: Any, *, is_img2img: bool) -> List[str]:
    """Set the generation's inputs from the script's values. Returns what was done, for the log.

    img2img + "use for generation": ``p.init_images = [image]`` and ``p.image_mask = mask``.
    ControlNet: the image and the (optionally inverted) mask go into unit N, as uint8 arrays.
    """
    args = ScriptArgs.from_values(values)
    if not args.wanted:
        return []
    image, mask = image_and_mask(args)
    done: List[str] = []
    if args.use_for_generation and is_img2img:
        p.init_images = [image]
        p.image_mask = mask
        done.append("image and mask set as img2img inpaint input")
    if args.controlnet_enabled:
        if controlnet is None or not controlnet.available():
            raise SamUserError("Segment Anything: 'Send to ControlNet' is on but no ControlNet is installed.")
        mask_array = np.asarray(mask, dtype=np.uint8)
        if args.controlnet_invert:
            mask_array = 255 - mask_array
        done.append(controlnet.assign(p, args.controlnet_unit, np.asarray(image, dtype=np.uint8), mask_array))
    return done
