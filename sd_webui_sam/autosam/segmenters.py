"""Semantic segmenters the host already has, behind one interface.

The ControlNet extension ships segmentation preprocessors (UniFormer and OneFormer on ADE20K,
OneFormer on COCO). Where the host keeps them is host knowledge
(``compat.controlnet_preprocessors``); the segmenters reach them through a finder passed in.
Their output is a colour-coded map in the dataset's palette, turned back into class ids through
that palette.

Without a host (the standalone app) or without ControlNet, an uploaded colour-coded ADE20K/COCO
segmentation image does the same job (:class:`UploadedMapSegmenter`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

import numpy as np

from sd_webui_sam.autosam.semantic import class_map_from_colours, dataset
from sd_webui_sam.errors import SamUserError

__all__ = [
    "NO_SEGMENTER_MESSAGE", "PROCESSORS", "ColourMapSegmenter", "NoSegmenterError", "PreprocessorFinder",
    "ProcessorInfo", "SemanticSegmenter", "UploadedMapSegmenter", "discover_segmenters", "get_segmenter",
    "no_host_preprocessors", "pixel_perfect_resolution",
]


class NoSegmenterError(SamUserError):
    http_status = 404


class SemanticSegmenter(Protocol):
    name: str          # "seg_ofade20k"
    dataset: str       # "ade20k" | "coco"
    label: str

    def segment(self, image: np.ndarray, resolution: int) -> np.ndarray:
        """(H,W,3) uint8 RGB -> (h,w) int32 class ids (any resolution; -1 = unlabelled)."""


@dataclass(frozen=True)
class ProcessorInfo:
    dataset: str
    label: str
    aliases: tuple[str, ...]     # names the processor has had in ControlNet versions


PROCESSORS: Mapping[str, ProcessorInfo] = {
    "seg_ufade20k": ProcessorInfo("ade20k", "UniFormer (ADE20K)", ("seg_ufade20k", "segmentation")),
    "seg_ofade20k": ProcessorInfo("ade20k", "OneFormer (ADE20K)", ("seg_ofade20k", "oneformer_ade20k")),
    "seg_ofcoco": ProcessorInfo("coco", "OneFormer (COCO)", ("seg_ofcoco", "oneformer_coco")),
}

NO_SEGMENTER_MESSAGE = (
    "No semantic segmenter is available: install or enable the ControlNet extension "
    "(sd-webui-controlnet on AUTOMATIC1111; Forge has it built in) and restart, "
    "or upload an ADE20K/COCO colour-coded segmentation map instead."
)


def _as_colour_map(output: Any) -> np.ndarray:
    """Preprocessors return an array, an (array, flag) pair, or a PIL image, depending on version."""
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    if hasattr(output, "convert") and hasattr(output, "size"):
        output = np.asarray(output.convert("RGB"))
    array = np.asarray(output)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] < 3:
        raise SamUserError(f"The segmentation preprocessor returned an unexpected result of shape {array.shape}.")
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array[..., :3])


@dataclass
class ColourMapSegmenter:
    """A host preprocessor that draws the segmentation in the dataset palette."""

    name: str
    dataset: str
    label: str
    run: Callable[[np.ndarray, int], Any]
    source: str = ""

    def segment(self, image: np.ndarray, resolution: int) -> np.ndarray:
        try:
            colours = _as_colour_map(self.run(np.ascontiguousarray(image), int(resolution)))
        except SamUserError:
            raise
        except Exception as error:
            raise SamUserError(f"The ControlNet preprocessor {self.name} failed: {error}") from error
        data = dataset(self.dataset)
        class_map = class_map_from_colours(colours, data)
        if (class_map < 0).mean() > 0.5:
            # some annotator versions hand back BGR
            swapped = class_map_from_colours(colours[..., ::-1], data)
            if (swapped < 0).mean() < (class_map < 0).mean():
                class_map = swapped
        return class_map


@dataclass
class UploadedMapSegmenter:
    """A colour-coded segmentation image the user supplied (works without any host)."""

    colour_map: np.ndarray
    dataset: str
    name: str = "uploaded"
    label: str = "Uploaded segmentation map"

    def segment(self, image: np.ndarray, resolution: int) -> np.ndarray:
        return class_map_from_colours(self.colour_map, dataset(self.dataset))


# ---------------------------------------------------------------------------------------------
# the host's preprocessors, through a finder passed in

#: ``find(aliases)`` -> the host preprocessor known by the first alias it has (``.run(image,
#: resolution)`` and ``.source``), or None. ``compat.controlnet_preprocessors.find_preprocessor``
#: is the WebUI's; outside a WebUI there is none.
PreprocessorFinder = Callable[[Sequence[str]], Optional[Any]]


def no_host_preprocessors(aliases: Sequence[str]) -> None:
    """The finder of a process without a WebUI: nothing is found."""
    return None


def discover_segmenters(find_preprocessor: PreprocessorFinder) -> dict[str, ColourMapSegmenter]:
    """The segmentation preprocessors the host offers, keyed by reference name (seg_*)."""
    found: dict[str, ColourMapSegmenter] = {}
    for name, info in PROCESSORS.items():
        preprocessor = find_preprocessor(info.aliases)
        if preprocessor is not None:
            found[name] = ColourMapSegmenter(name, info.dataset, info.label, preprocessor.run, preprocessor.source)
    return found


def get_segmenter(name: str, find_preprocessor: PreprocessorFinder) -> ColourMapSegmenter:
    """The named processor (seg_ufade20k, seg_ofade20k, seg_ofcoco), or a NoSegmenterError that says what to do."""
    if name not in PROCESSORS:
        raise SamUserError(f"Unknown segmentation processor {name!r}; choose one of {', '.join(PROCESSORS)}.")
    available = discover_segmenters(find_preprocessor)
    if name in available:
        return available[name]
    if available:
        raise NoSegmenterError(f"The preprocessor {name} is not available here; available: {', '.join(sorted(available))}.")
    raise NoSegmenterError(NO_SEGMENTER_MESSAGE)


def pixel_perfect_resolution(image_size: tuple[int, int], target_size: tuple[int, int], resize_mode: int) -> int:
    """The reference's (and ControlNet's) 'pixel perfect' preprocessor resolution.

    resize_mode: 0 just resize, 1 crop and resize, 2 resize and fill.
    """
    height, width = image_size
    target_h, target_w = target_size
    if not target_h or not target_w:
        raise SamUserError("Pixel perfect needs the target width and height of the generation.")
    k_h, k_w = float(target_h) / height, float(target_w) / width
    estimation = (min(k_h, k_w) if int(resize_mode) == 2 else max(k_h, k_w)) * min(height, width)
    return int(np.round(estimation / 64.0)) * 64
