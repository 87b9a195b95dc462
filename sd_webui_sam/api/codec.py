"""Turning request strings into images and masks, and masks and images into response strings.

Every failure here is a :class:`SamUserError` with a message a client can act on; nothing a
client sends can make these functions raise anything else.
"""
from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple

import numpy as np

from sd_webui_sam import images, rle
from sd_webui_sam.errors import ImageTooLargeError, InvalidImageError, InvalidPromptError, SamUserError


class ForbiddenPathError(SamUserError):
    http_status = 403


class NotFoundError(SamUserError):
    http_status = 404


@dataclass(frozen=True)
class SourcePolicy:
    """What an image string may be besides base64."""

    #: Server directories whose files a client may name instead of sending the image; empty
    #: (the default) accepts base64 only. The reference opened any path it was given.
    allowed_roots: Tuple[Path, ...] = ()
    #: Largest encoded image accepted, in bytes (before pixel limits are checked).
    max_encoded_bytes: int = 128 * 1024 * 1024

    def resolve_inside_roots(self, text: str) -> Optional[Path]:
        """The file ``text`` names if it lies inside an allowed root, else None."""
        if not self.allowed_roots or len(text) > 4096 or "\x00" in text:
            return None
        try:
            candidate = Path(text).expanduser().resolve()
        except (OSError, RuntimeError, ValueError):
            return None
        for root in self.allowed_roots:
            root = Path(root).expanduser().resolve()
            if candidate == root or root in candidate.parents:
                return candidate if candidate.is_file() else None
        return None


def _looks_like_path(text: str) -> bool:
    return (
        text.startswith(("/", "~", "./", "../", "\\\\"))
        or bool(re.match(r"^[A-Za-z]:[\\/]", text))
        or bool(re.search(r"\.(png|jpe?g|webp|bmp|gif|tiff?)$", text, re.IGNORECASE))
    )


#: What becomes of transparent pixels: "white" composites them on white (as a viewer shows
#: them); "ignore" keeps the raw colour channels, as the reference extension segments them.
TRANSPARENCY_MODES = ("white", "ignore")


def read_image_source(text: Any, policy: SourcePolicy, max_pixels: int, transparency: str = "white") -> np.ndarray:
    """An ``input_image``/``image`` field as an RGB uint8 array (H, W, 3)."""
    if transparency not in TRANSPARENCY_MODES:
        raise InvalidPromptError(f"transparency must be one of {', '.join(TRANSPARENCY_MODES)}.")

    def decode(source: Any) -> np.ndarray:
        if transparency == "ignore":
            return np.ascontiguousarray(images.load_image_rgba(source, max_pixels=max_pixels)[..., :3])
        return images.load_image(source, max_pixels=max_pixels)

    if not isinstance(text, str):
        raise InvalidImageError("The image must be a base64 string.")
    stripped = text.strip()
    if stripped.lower().startswith(("http://", "https://", "file:")):
        raise InvalidImageError("Image URLs are not fetched; send the image itself as base64.")
    path = policy.resolve_inside_roots(stripped)
    if path is not None:
        return decode(path)
    try:
        raw = images.decode_base64(stripped, max_bytes=policy.max_encoded_bytes)
        return decode(raw)
    except ImageTooLargeError:
        raise
    except InvalidImageError:
        # "/etc/passwd" is also valid base64; a short path-like string that is no image was
        # meant as a file name, so say why it was not opened
        if len(stripped) < 4096 and _looks_like_path(stripped):
            if policy.allowed_roots:
                raise ForbiddenPathError(
                    "That server path is not an image file inside the allowed folders; send the image as base64."
                ) from None
            raise ForbiddenPathError(
                "Server file paths are not accepted; send the image as base64 "
                "(or ask the server owner to allow a folder)."
            ) from None
        raise


def read_rle_mask(value: Mapping, shape: Tuple[int, int]) -> np.ndarray:
    try:
        size = value.get("size")
        if not isinstance(size, (list, tuple)) or len(size) != 2 or [int(s) for s in size] != list(shape):
            raise InvalidPromptError(f"The RLE mask size must be [{shape[0]}, {shape[1]}] (height, width).")
        mask = rle.decode(dict(value))
    except SamUserError:
        raise
    except Exception:
        raise InvalidPromptError("The RLE mask is not valid COCO RLE {'size': [h, w], 'counts': ...}.") from None
    return np.asarray(mask, dtype=bool).reshape(shape)


def logits_base64(logits: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(logits, dtype="<f4").tobytes()).decode("ascii")


def read_logits(text: Any, side: int = 256) -> np.ndarray:
    raw = images.decode_base64(text, what="previous_logits", max_bytes=side * side * 4 + 16)
    if len(raw) != side * side * 4:
        raise InvalidPromptError(
            f"previous_logits must be {side}x{side} float32 as returned with return_logits; got {len(raw)} bytes."
        )
    logits = np.frombuffer(raw, dtype="<f4").reshape(side, side).astype(np.float32)
    if not np.isfinite(logits).all():
        raise InvalidPromptError("previous_logits contains NaN or infinity.")
    return logits
