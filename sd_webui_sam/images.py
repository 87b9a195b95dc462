"""Image intake: whatever a user hands us, as an RGB (or RGBA) uint8 array.

Sources: a PIL image of any mode, a ``pathlib.Path`` (or other ``os.PathLike``), raw
``bytes``, a base64 ``str`` (optionally a ``data:image/...;base64,`` URL) and NumPy arrays.
A plain ``str`` is never taken for a file name: the API receives strings from the network
and decides itself which paths may be read, so a file is opened only when the caller passes a
path object (``load_image(Path(name))``).

Pixel sizes are checked from the file header, before any pixel is decoded, so a tiny file
that claims to be a gigapixel image is refused without allocating it.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import re
from typing import Tuple, Union

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sd_webui_sam.errors import ImageTooLargeError, InvalidImageError, SamUserError
from sd_webui_sam.settings import DEFAULT_MAX_IMAGE_PIXELS

ImageSource = Union[Image.Image, np.ndarray, bytes, bytearray, memoryview, str, "os.PathLike[str]"]

#: Formats we let PIL decode (PIL's names; its JPEG reader also opens MPO). Formats that hand
#: the file to an outside program (EPS runs Ghostscript) or that nobody uploads as a picture
#: are left out.
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "DIB", "TIFF", "PPM", "TGA", "ICO", "JPEG2000")

_DATA_URL = re.compile(r"^data:[\w/+.\-]*(;[\w=.\-]+)*;base64,", re.IGNORECASE)
_BASE64_BODY = re.compile(r"^[A-Za-z0-9+/_-]*={0,2}$")
#: Largest base64 payload accepted, in decoded bytes (checked before decoding; pixel limits follow).
MAX_ENCODED_BYTES = 128 * 1024 * 1024
_WHITE = 255
#: What PIL raises for damaged or truncated files (its plugins are not consistent).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError)


# ---------------------------------------------------------------- public API

def load_image(source: ImageSource, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Any user image as an (H, W, 3) uint8 RGB array (a new array the caller may keep).

    Transparent pixels are composited on white, as an image viewer shows them. EXIF
    orientation is applied. 16-bit and 32-bit images are scaled to 8 bits, not clipped.
    Raises ``InvalidImageError`` (not an image, truncated, empty, bad base64) or
    ``ImageTooLargeError`` (more than ``max_pixels`` pixels).
    """
    rgb, alpha = _load(source, max_pixels)
    if alpha is None:
        return rgb
    return _composite_on_white(rgb, alpha)


def load_image_rgba(source: ImageSource, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Like :func:`load_image` but (H, W, 4) RGBA, keeping the source's transparency.

    Images without transparency come back fully opaque (alpha 255).
    """
    rgb, alpha = _load(source, max_pixels)
    rgba = cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)  # alpha 255
    if alpha is not None:
        rgba[:, :, 3] = alpha
    return rgba


def image_content_key(image: np.ndarray) -> str:
    """The one hash of a picture's content (pixels, shape and dtype; 32 hex digits): equal pictures
    share cached embeddings, API image ids and panel selections, whatever array object holds them."""
    array = np.ascontiguousarray(image)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{array.shape}|{array.dtype.str}|".encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def decode_base64(text: object, *, what: str = "image", max_bytes: int = MAX_ENCODED_BYTES) -> bytes:
    """The bytes of a base64 string, with or without a ``data:...;base64,`` prefix (the URL-safe
    alphabet and missing padding are accepted). A string longer than ``max_bytes`` would decode
    to is refused before it is decoded."""
    if not isinstance(text, str):
        raise InvalidImageError(f"The {what} must be a base64 string.")
    stripped = text.strip()
    match = _DATA_URL.match(stripped)
    if match:
        stripped = stripped[match.end():]
    elif stripped.startswith("data:"):
        raise InvalidImageError(f"This data URL is not base64-encoded; send the {what} as 'data:image/png;base64,...'.")
    compact = re.sub(r"\s+", "", stripped)
    if not compact:
        raise InvalidImageError(f"The {what} string is empty; send it base64-encoded (a PNG, JPEG or WebP for a picture).")
    if len(compact) > (max_bytes * 4) // 3 + 4:
        raise ImageTooLargeError(f"The {what} is larger than {max_bytes // (1024 * 1024)} MiB encoded; send a smaller one.")
    try:
        if not _BASE64_BODY.match(compact):
            raise ValueError(compact)
        compact = compact.replace("-", "+").replace("_", "/")  # accept the URL-safe alphabet too
        data = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        hint = ""
        if len(text) < 4096 and ("/" in text or "\\" in text or "." in text[-6:]):
            hint = " (text is never read as a file name; to load a file pass a pathlib.Path)"
        raise InvalidImageError(
            f"The {what} string is not valid base64{hint}; send it base64-encoded or as a "
            "'data:image/png;base64,...' URL."
        ) from None
    if not data:
        raise InvalidImageError(f"The {what} string decodes to nothing; send it base64-encoded.")
    return data


def mask_grey(image: Image.Image) -> Image.Image:
    """A mask picture as "L", 255 = selected: its white pixels, or, for a mask with transparency,
    its opaque ones. 16-bit and float masks are scaled by their own maximum."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        alpha = rgba.getchannel("A")
        return alpha if alpha.getextrema()[0] < 255 else rgba.convert("L")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = float(values.max()) if values.size else 0.0
        scaled = values * (255.0 / top) if top > 0 else np.zeros_like(values)
        return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")
    return image.convert("L")


def load_mask(source: Union[str, bytes], shape: Tuple[int, int], *, what: str = "mask",
              max_bytes: int = MAX_ENCODED_BYTES) -> np.ndarray:
    """A mask picture (base64 text or file bytes) as bool (H, W), selected where :func:`mask_grey`
    is more than half; it must have the picture's ``shape``."""
    raw = decode_base64(source, what=what, max_bytes=max_bytes) if isinstance(source, str) else bytes(source)
    try:
        with Image.open(io.BytesIO(raw)) as image:
            if image.width * image.height > shape[0] * shape[1] * 16:
                raise ImageTooLargeError(f"The {what} is far larger than the image.")
            image.load()
            mask = np.asarray(mask_grey(image)) > 127
    except SamUserError:
        raise
    except Exception as error:  # PIL raises many types for damaged data
        raise InvalidImageError(f"The {what} is not a readable image ({type(error).__name__}).") from None
    if mask.shape != tuple(shape):
        raise InvalidImageError(
            f"The {what} is {mask.shape[1]}x{mask.shape[0]} but the image is {shape[1]}x{shape[0]}; they must match."
        )
    return mask


# ---------------------------------------------------------------- dispatch

# ---------------------------------------------------------------- pictures out (API answers, AutoSAM)


def png_base64(image: Image.Image) -> str:
    """A picture as base64 PNG text (how the API answers pictures)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def array_png_base64(array: np.ndarray) -> str:
    return png_base64(Image.fromarray(np.ascontiguousarray(array)))


def bool_mask_png_base64(mask: np.ndarray, *, one_bit: bool = False) -> str:
    """A bool mask as PNG: 1-bit (reference routes) or 8-bit 0/255."""
    if one_bit:
        return png_base64(Image.fromarray(np.ascontiguousarray(mask.astype(bool))))
    return array_png_base64(mask.astype(np.uint8) * 255)


def _load(source: ImageSource, max_pixels: int) -> Tuple[np.ndarray, "np.ndarray | None"]:
    if isinstance(source, Image.Image):
        _check_size(source.size, max_pixels)
        try:
            source.load()  # an image opened lazily by the caller may still fail to decode
        except _DECODE_ERRORS as error:
            raise InvalidImageError(
                f"The image is damaged or truncated and cannot be decoded ({error}); save it again as PNG or JPEG."
            ) from None
        return _from_pil(_apply_exif_orientation(source))
    if isinstance(source, np.ndarray):
        return _from_array(source, max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _from_bytes(bytes(source), max_pixels)
    if isinstance(source, str):
        return _from_bytes(decode_base64(source), max_pixels)
    if isinstance(source, os.PathLike):
        return _from_path(os.fspath(source), max_pixels)
    raise InvalidImageError(
        f"Cannot read an image from a {type(source).__name__}; send a PNG/JPEG/WebP file, its "
        "bytes, a base64 string or a data URL."
    )


def _from_path(path: str, max_pixels: int) -> Tuple[np.ndarray, "np.ndarray | None"]:
    try:
        with open(path, "rb") as handle:
            return _decode_stream(handle, max_pixels, name=os.path.basename(path))
    except FileNotFoundError:
        raise InvalidImageError(f"Image file not found: {path}") from None
    except IsADirectoryError:
        raise InvalidImageError(f"{path} is a folder, not an image file.") from None
    except PermissionError:
        raise InvalidImageError(f"Cannot read {path}: permission denied.") from None


def _from_bytes(data: bytes, max_pixels: int) -> Tuple[np.ndarray, "np.ndarray | None"]:
    if not data:
        raise InvalidImageError("The image is empty (0 bytes); send a PNG/JPEG/WebP file.")
    return _decode_stream(io.BytesIO(data), max_pixels, name="the uploaded data")


def _decode_stream(stream, max_pixels: int, name: str) -> Tuple[np.ndarray, "np.ndarray | None"]:
    supported = "PNG, JPEG, WebP, GIF, BMP, TIFF"
    try:
        with Image.open(stream, formats=_available_formats()) as opened:
            _check_size(opened.size, max_pixels)  # header only: nothing decoded yet
            opened.load()
            image = _apply_exif_orientation(opened)
            return _from_pil(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # PIL refuses far-too-large headers inside Image.open, before _check_size sees them;
        # say it with the same single limit, not in PIL's words
        raise ImageTooLargeError(
            f"{name} has more pixels than the limit of {pixel_limit(max_pixels):,}. Resize it first."
        ) from None
    except UnidentifiedImageError:
        raise InvalidImageError(
            f"{name} is not an image this extension can read; send {supported}."
        ) from None
    except _DECODE_ERRORS as error:
        raise InvalidImageError(
            f"{name} is damaged or truncated and cannot be decoded ({error}); save it again as PNG or JPEG."
        ) from None


def _available_formats() -> Tuple[str, ...]:
    """The allowed formats this PIL build has a reader for (some builds lack WebP or JPEG 2000)."""
    Image.init()
    return tuple(name for name in ALLOWED_FORMATS if name in Image.OPEN)


def pixel_limit(max_pixels: int) -> int:
    """The one pixel limit a picture must respect: ours, or the image library's (which the host
    may have set lower) if that is smaller. PIL only warns between its limit and twice it, so
    checking here, rather than turning warnings into errors, leaves the process-wide warning
    filters alone (threads share them)."""
    library = Image.MAX_IMAGE_PIXELS
    return min(max_pixels, int(library)) if library else max_pixels


def _check_size(size: Tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"The image is empty ({width}x{height} pixels).")
    limit = pixel_limit(max_pixels)
    if width * height > limit:
        raise ImageTooLargeError(
            f"The image is {width}x{height} = {width * height:,} pixels, more than the limit of "
            f"{limit:,}. Resize it first."
        )


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # a damaged EXIF block must not stop the picture itself
        return image
    if orientation in (None, 1):
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        return image


# ---------------------------------------------------------------- PIL modes

def _from_pil(image: Image.Image) -> Tuple[np.ndarray, "np.ndarray | None"]:
    """(RGB uint8, alpha uint8 or None) for a PIL image of any mode."""
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I", "I;32", "F"):
        grey = _scale_to_uint8(np.asarray(image), mode)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2)), None
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA"))
        return np.ascontiguousarray(rgba[:, :, :3]), np.ascontiguousarray(rgba[:, :, 3])
    if mode != "RGB":
        image = image.convert("RGB")
    return np.array(image, dtype=np.uint8), None


def _scale_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Map high-bit-depth greys to 0..255 without clipping.

    16-bit data (including 16-bit PNGs, which PIL opens as mode "I") maps 0..65535 onto
    0..255. Floats in 0..1 are taken as such; anything else (negative values, 32-bit
    ranges, other float ranges) is stretched from its own minimum to its maximum.
    """
    data = values.astype(np.float64)
    finite = np.isfinite(data)
    if not finite.all():
        data = np.where(finite, data, 0.0)
    low, high = float(data.min()), float(data.max())
    if mode == "F" and low >= 0.0 and high <= 1.0:
        scaled = data * 255.0
    elif mode != "F" and low >= 0 and high <= 65535:
        scaled = data / 257.0
    elif high > low:
        scaled = (data - low) * (255.0 / (high - low))
    else:
        scaled = np.zeros_like(data)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- arrays

def _from_array(array: np.ndarray, max_pixels: int) -> Tuple[np.ndarray, "np.ndarray | None"]:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise InvalidImageError(
            f"An image array must be HxW, HxWx1, HxWx3 or HxWx4; got shape {array.shape}."
        )
    height, width = array.shape[:2]
    _check_size((width, height), max_pixels)
    pixels = _array_to_uint8(array)
    if pixels.ndim == 2:
        return np.ascontiguousarray(np.repeat(pixels[:, :, None], 3, axis=2)), None
    if pixels.shape[2] == 4:
        return np.ascontiguousarray(pixels[:, :, :3]), np.ascontiguousarray(pixels[:, :, 3])
    return np.array(pixels, dtype=np.uint8, order="C", copy=True), None


def _array_to_uint8(array: np.ndarray) -> np.ndarray:
    """uint8 as is; bool as 0/255; uint16 (and other ints up to 65535) scaled from 16 bits;
    floats in 0..1 (or, failing that, 0..255)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise InvalidImageError(
                f"Integer image values must lie in 0..255 or 0..65535; these span {low}..{high}."
            )
        if array.dtype == np.uint16 or high > 255:
            return np.rint(array.astype(np.float32) / 257.0).astype(np.uint8)
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise InvalidImageError("The image array contains NaN or infinite values.")
        low, high = float(array.min()), float(array.max())
        tolerance = 1e-3
        if low >= -tolerance and high <= 1.0 + tolerance:
            scaled = array.astype(np.float32) * 255.0
        elif low >= -tolerance and high <= 255.0 + tolerance:
            scaled = array.astype(np.float32)
        else:
            raise InvalidImageError(
                f"Float image values must lie in 0..1 (or 0..255); these span {low:g}..{high:g}."
            )
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    raise InvalidImageError(f"Unsupported image array type {array.dtype}; use uint8, uint16, float or bool.")


def _composite_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.uint16)[:, :, None]
    blended = (rgb.astype(np.uint16) * a + _WHITE * (255 - a) + 127) // 255
    return blended.astype(np.uint8)
