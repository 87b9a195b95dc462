"""Soft edges: an alpha matte from an image and a binary SAM mask.

A SAM mask is decided at 256x256 and upsampled, so its edge is a few pixels off and cannot hold
hair, fur or glass. ``alpha_matte`` turns it into a trimap (sure foreground, sure background and
an uncertain band of ``band_px`` pixels on both sides of the mask's edge), estimates alpha from
the image inside that band with pymatting's closed-form matting (Levin et al. 2008), and then
the foreground colours with pymatting's multilevel estimator (Germer et al. 2020), so the old
background does not show through semi-transparent pixels. Only the band's bounding region is
solved. ``alpha="hard"`` (the default everywhere) never comes here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import cv2
import numpy as np
from PIL import Image

from sd_webui_sam import render
from sd_webui_sam.errors import InvalidImageError, InvalidPromptError, SamUserError
from sd_webui_sam.images import load_image_rgba

ALPHA_MODES = ("hard", "soft")
#: The automatic band: this fraction of the object's size (square root of its area), clamped.
AUTO_BAND_FRACTION = 0.04
MIN_BAND_PX = 3
MAX_BAND_PX = 60
#: Window radius of the closed-form matting Laplacian (a 3x3 window, as published).
LAPLACIAN_RADIUS = 1
LAPLACIAN_EPSILON = 1e-7
#: Incomplete-Cholesky drop threshold and conjugate-gradient tolerance: pymatting's defaults
#: (1e-4, 1e-7) cost three to four times the solver time for the same SAD to within 1 % on the
#: benchmark's hair and fur scenes.
ICHOL_DISCARD_THRESHOLD = 3e-3
CG_RELATIVE_TOLERANCE = 1e-4
#: The solver's sparse Laplacian holds 25 entries per pixel (~400 bytes each with the solver's
#: copies): a band region larger than this is solved at a reduced scale to bound memory.
MAX_SOLVE_PIXELS = 1_500_000


@dataclass(frozen=True)
class Trimap:
    foreground: np.ndarray   # (H, W) bool, sure object
    background: np.ndarray   # (H, W) bool, sure background
    band_px: int

    @property
    def unknown(self) -> np.ndarray:
        return ~(self.foreground | self.background)


@dataclass(frozen=True)
class Matte:
    alpha: np.ndarray        # (H, W) float32 in [0, 1]
    foreground: np.ndarray   # (H, W, 3) uint8, the object's own colours (the image's where alpha is 0 or 1)
    band_px: int


def check_alpha_mode(alpha: object) -> str:
    mode = str(alpha).strip().lower() if alpha is not None else "hard"
    if mode not in ALPHA_MODES:
        raise InvalidPromptError(f"alpha must be one of {', '.join(ALPHA_MODES)}, not {alpha!r}.")
    return mode


def auto_band_px(mask: np.ndarray) -> int:
    """The band width for an object of this size: wider for bigger objects, within limits."""
    area = int(np.count_nonzero(mask))
    return int(np.clip(round(AUTO_BAND_FRACTION * np.sqrt(area)), MIN_BAND_PX, MAX_BAND_PX))


def check_band_px(band_px: Optional[float], mask: np.ndarray) -> int:
    if band_px is None or band_px == 0:
        return auto_band_px(mask)
    try:
        value = float(band_px)
    except (TypeError, ValueError):
        raise InvalidPromptError(f"The soft-edge band width must be a number of pixels, not {band_px!r}.") from None
    if not np.isfinite(value) or value < 1 or value > 4 * MAX_BAND_PX:
        raise InvalidPromptError(
            f"The soft-edge band width must be between 1 and {4 * MAX_BAND_PX} pixels (0 or empty: automatic), "
            f"not {band_px!r}.")
    return int(round(value))


def trimap(mask: np.ndarray, band_px: int) -> Trimap:
    """Pixels farther than ``band_px`` from the mask's edge are sure; the rest is the band."""
    inside = np.ascontiguousarray(mask, dtype=np.uint8)
    # Distance of each pixel to the nearest pixel on the other side of the edge.
    inside_distance = cv2.distanceTransform(inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    outside_distance = cv2.distanceTransform(1 - inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return Trimap(foreground=inside_distance > band_px, background=outside_distance > band_px, band_px=band_px)


def band_region(unknown: np.ndarray, margin: int) -> Optional[Tuple[slice, slice]]:
    """The band's bounding box grown by ``margin`` (the solver's window), inside the image."""
    rows = np.flatnonzero(unknown.any(axis=1))
    if rows.size == 0:
        return None
    columns = np.flatnonzero(unknown.any(axis=0))
    height, width = unknown.shape
    top, bottom = max(0, rows[0] - margin), min(height, rows[-1] + 1 + margin)
    left, right = max(0, columns[0] - margin), min(width, columns[-1] + 1 + margin)
    return slice(top, bottom), slice(left, right)


def _pymatting():
    try:
        # pymatting (and numba, which compiles its kernels on first import) is only needed for soft edges.
        import pymatting
    except ImportError as error:
        raise SamUserError("Soft edges need the 'pymatting' package, which is not installed: run "
                           "'pip install pymatting' in the WebUI's Python (restarting the WebUI installs it), "
                           "or use hard edges.") from error
    return pymatting


def _solve_alpha(image: np.ndarray, trimap_values: np.ndarray) -> np.ndarray:
    pymatting = _pymatting()
    estimate_alpha_cf, ichol = pymatting.estimate_alpha_cf, pymatting.ichol

    return estimate_alpha_cf(image, trimap_values,
                             preconditioner=lambda matrix: ichol(matrix, discard_threshold=ICHOL_DISCARD_THRESHOLD),
                             laplacian_kwargs={"epsilon": LAPLACIAN_EPSILON, "radius": LAPLACIAN_RADIUS},
                             cg_kwargs={"rtol": CG_RELATIVE_TOLERANCE})


def _solve_foreground(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return _pymatting().estimate_foreground_ml(image, alpha)


def _solve_alpha_bounded(image: np.ndarray, trimap_values: np.ndarray) -> np.ndarray:
    """Alpha in [0, 1]; a region past MAX_SOLVE_PIXELS is solved smaller and scaled back up."""
    height, width = trimap_values.shape
    if height * width <= MAX_SOLVE_PIXELS:
        return np.clip(_solve_alpha(image, trimap_values), 0.0, 1.0)
    scale = np.sqrt(MAX_SOLVE_PIXELS / (height * width))
    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    small_alpha = _solve_alpha(cv2.resize(image, size, interpolation=cv2.INTER_AREA),
                               cv2.resize(trimap_values, size, interpolation=cv2.INTER_NEAREST))
    alpha = np.clip(cv2.resize(small_alpha, (width, height), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
    known = trimap_values != 0.5
    alpha[known] = trimap_values[known]
    return alpha


def alpha_matte(image: np.ndarray, mask: np.ndarray, band_px: Optional[float] = None) -> Matte:
    """The alpha matte and foreground colours of the object ``mask`` marks in ``image`` (RGB uint8)."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    mask = mask >= 0.5 if np.issubdtype(mask.dtype, np.floating) else mask != 0
    if image.shape[:2] != mask.shape:
        raise InvalidImageError(f"The mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                                 f"{image.shape[1]}x{image.shape[0]} (width x height); they must match.")
    band = check_band_px(band_px, mask)
    parts = trimap(mask, band)
    alpha = parts.foreground.astype(np.float32)
    foreground = np.array(image[:, :, :3], dtype=np.uint8, copy=True)
    region = band_region(parts.unknown, margin=2 * LAPLACIAN_RADIUS + 1)
    if region is None or not parts.foreground.any() or not parts.background.any():
        # Nothing sure on one side (an empty mask, or a band that covers the whole object):
        # there is nothing to pull colours from, so the mask stays as it is.
        return Matte(alpha=mask.astype(np.float32), foreground=foreground, band_px=band)
    crop = np.ascontiguousarray(image[region][:, :, :3], dtype=np.float64) / 255.0
    values = np.full(crop.shape[:2], 0.5)
    values[parts.foreground[region]] = 1.0
    values[parts.background[region]] = 0.0
    crop_alpha = _solve_alpha_bounded(crop, values)
    crop_foreground = _solve_foreground(crop, crop_alpha)
    alpha[region] = crop_alpha
    unknown = parts.unknown[region]
    colours = np.clip(np.round(crop_foreground * 255.0), 0, 255).astype(np.uint8)
    foreground[region][unknown] = colours[unknown]
    return Matte(alpha=alpha, foreground=foreground, band_px=band)


def cutout(image: Union[np.ndarray, Image.Image], mask: np.ndarray, alpha: str = "hard",
           band_px: Optional[float] = None) -> Image.Image:
    """The RGBA cut-out of ``mask``: ``render.cutout`` as it is for "hard", a matte for "soft".

    A source that already has transparency keeps it: the matte multiplies it, as a mask does."""
    if check_alpha_mode(alpha) == "hard":
        return render.cutout(image, mask)
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] in (3, 4):
        source = image
    else:
        source = load_image_rgba(image, max_pixels=np.iinfo(np.int64).max)
    matte = alpha_matte(np.ascontiguousarray(source[:, :, :3]), np.asarray(mask), band_px)
    if source.shape[2] == 4:
        coloured = np.dstack([matte.foreground, source[:, :, 3]])
    else:
        coloured = matte.foreground
    return render.cutout(coloured, matte.alpha)
