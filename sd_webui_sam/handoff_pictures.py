"""The pictures a generation is handed by the Segment Anything script, read from its argument values.

A value is a PIL image or an array (the panel), a base64 string (the WebUI's HTTP API), or a
gradio file/editor dict; the mask hand-off needs the picture and its mask at the same size, the
control-map hand-off the map's exact pixels. Nothing here knows the WebUI.
"""
from __future__ import annotations

import io
from typing import Any, Tuple

import numpy as np
from PIL import Image

from sd_webui_sam.errors import InvalidImageError, SamUserError
from sd_webui_sam.images import decode_base64, mask_grey

__all__ = ["control_map_array", "image_and_mask", "picture_from_value"]


def picture_from_value(value: Any, what: str) -> Image.Image:
    """A script value as a PIL image; ``what`` names it in the message when there is none."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        return Image.fromarray(value)
    if isinstance(value, str) and value:
        try:
            picture = Image.open(io.BytesIO(decode_base64(value, what=what)))
            picture.load()
        except OSError as error:
            raise InvalidImageError(f"The image is not a valid base64-encoded picture ({error}).") from error
        return picture
    if isinstance(value, dict):  # gradio 4 FileData / gradio 3 editor dicts
        for key in ("image", "background", "path", "name"):
            if value.get(key) is not None:
                inner = value[key]
                return Image.open(inner) if isinstance(inner, str) else picture_from_value(inner, what)
    raise SamUserError(f"Segment Anything: no {what}. Press Preview and pick a mask first.")


def image_and_mask(image_value: Any, mask_value: Any) -> Tuple[Image.Image, Image.Image]:
    """The source picture (RGB) and the processed mask (L, 255 = selected), same size."""
    image = picture_from_value(image_value, "image").convert("RGB")
    mask = mask_grey(picture_from_value(mask_value, "mask"))
    if mask.size != image.size:
        raise SamUserError(
            f"Segment Anything: the mask is {mask.size[0]}x{mask.size[1]} but the image is "
            f"{image.size[0]}x{image.size[1]}; press Preview again for this image."
        )
    return image, mask


def control_map_array(value: Any) -> np.ndarray:
    """The map as (H,W,3) uint8 RGB, exactly its pixels (the EditAnything map encodes ids in them)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise SamUserError("Segment Anything: 'Send the map to ControlNet' is on but there is no map. "
                           "Run Segment everything or Segment in the Auto SAM tab first.")
    return np.ascontiguousarray(np.asarray(picture_from_value(value, "map").convert("RGB"), dtype=np.uint8))
