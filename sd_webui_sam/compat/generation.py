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


# ----- a finished control map (AutoSAM) for a ControlNet unit ------------------------------------

#: Script arguments after ``ARG_NAMES`` and ``CUTOUT_ARG_NAMES``. Callers of the older layouts
#: (6 or 12 values) leave them out, which means off.
CONTROL_MAP_ARG_NAMES = ("control_map_enabled", "control_map_unit", "control_map_image")


def control_map_offset() -> int:
    return len(ARG_NAMES) + len(CUTOUT_ARG_NAMES)


@dataclass(frozen=True)
class ControlMapArgs:
    enabled: bool = False
    unit: int = 0
    image: Any = None

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> "ControlMapArgs":
        rest = list(values[control_map_offset():]) + [None] * len(CONTROL_MAP_ARG_NAMES)
        return cls(enabled=_flag(rest[0]) if rest[0] is not None else False, unit=_unit(rest[1]), image=rest[2])


def control_map_array(value: Any) -> np.ndarray:
    """The map as (H,W,3) uint8 RGB, exactly its pixels (the EditAnything map encodes ids in them)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise SamUserError("Segment Anything: 'Send the map to ControlNet' is on but there is no map. "
                           "Run Segment everything or Segment in the Auto SAM tab first.")
    return np.ascontiguousarray(np.asarray(_as_pil(value, "map").convert("RGB"), dtype=np.uint8))


def apply_control_map(p: Any, values: Sequence[Any], controlnet: Any, *, mask_unit: Optional[int] = None) -> List[str]:
    """Put the AutoSAM map into ControlNet unit N as its control image. ``mask_unit``: the unit the
    mask hand-off filled in this generation, if any (the map replaces it; the log says so)."""
    args = ControlMapArgs.from_values(values)
    if not args.enabled:
        return []
    if controlnet is None or not controlnet.available():
        raise SamUserError("Segment Anything: 'Send the map to ControlNet' is on but no ControlNet is installed.")
    note = controlnet.assign_control_image(p, args.unit, control_map_array(args.image))
    if mask_unit is not None and mask_unit == args.unit:
        note += "; it replaces the mask sent to the same unit"
    return [note]


def before_process(p: Any, values: Sequence[Any], find_controlnet: Any, *, is_img2img: bool) -> List[str]:
    """Everything the script does before a generation: the mask hand-off, then the AutoSAM map.

    Returns messages for the console. A problem the user can fix is reported there and never
    breaks the generation (hook exceptions would only be swallowed by the host anyway).
    ``find_controlnet`` is called only when a ControlNet unit is wanted.
    """
    hand_off = ScriptArgs.from_values(values)
    control_map = ControlMapArgs.from_values(values)
    if not hand_off.wanted and not control_map.enabled:
        return []
    controlnet = find_controlnet() if (hand_off.controlnet_enabled or control_map.enabled) else None
    messages: List[str] = []
    mask_unit = None
    if hand_off.wanted:
        done = _reported(lambda: apply(p, values, controlnet, is_img2img=is_img2img), messages)
        if done and hand_off.controlnet_enabled:
            mask_unit = hand_off.controlnet_unit
    _reported(lambda: apply_control_map(p, values, controlnet, mask_unit=mask_unit), messages)
    return messages


def _reported(step: Any, messages: List[str]) -> bool:
    """Run one step, adding its notes, or its user-facing error, to ``messages``; True if it succeeded."""
    try:
        messages.extend(step())
        return True
    except SamUserError as error:
        messages.append(str(error))
    except RuntimeError as error:
        messages.append(f"ControlNet: {error}")
    return False


# ----- cut out after generation ----------------------------------------------------------------

#: Script arguments after ``ARG_NAMES`` (API callers may leave them out).
CUTOUT_ARG_NAMES = ("cutout_enabled", "cutout_text", "cutout_sam_model", "cutout_dino_model", "cutout_box_threshold",
                    "cutout_text_threshold")
CUTOUT_SUFFIX = "-cutout"
CUTOUT_MASK_SUFFIX = "-cutout-mask"
#: Where the cut-outs of one generation wait between ``postprocess_image`` and ``postprocess``.
PENDING_ATTRIBUTE = "sd_webui_sam_cutouts"


def _threshold(value: Any, default: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return min(1.0, max(0.0, number)) if np.isfinite(number) else default


#: Script arguments after ``CONTROL_MAP_ARG_NAMES`` (callers of the older layouts leave them out:
#: hard edges).
CUTOUT_ALPHA_ARG_NAMES = ("cutout_soft_edges", "cutout_edge_band")


def cutout_alpha_offset() -> int:
    return control_map_offset() + len(CONTROL_MAP_ARG_NAMES)


def _band(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if np.isfinite(number) and number > 0 else 0.0


@dataclass(frozen=True)
class CutoutArgs:
    enabled: bool = False
    text: str = ""
    sam_model: Optional[str] = None
    dino_model: Optional[str] = None
    box_threshold: float = 0.3
    text_threshold: float = 0.25
    alpha: str = "hard"        # "soft": the cut-out gets soft edges
    alpha_band: float = 0      # soft edges' band in pixels; 0 = automatic

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> "CutoutArgs":
        soft = list(values[cutout_alpha_offset():]) + [None] * len(CUTOUT_ALPHA_ARG_NAMES)
        rest = list(values[len(ARG_NAMES):]) + [None] * len(CUTOUT_ARG_NAMES)
        return cls(
            enabled=_flag(rest[0]) if rest[0] is not None else False,
            text=str(rest[1] or ""),
            sam_model=str(rest[2]) if rest[2] else None,
            dino_model=str(rest[3]) if rest[3] else None,
            box_threshold=_threshold(rest[4], 0.3),
            text_threshold=_threshold(rest[5], 0.25),
            alpha="soft" if soft[0] is not None and _flag(soft[0]) else "hard",
            alpha_band=_band(soft[1]),
        )


@dataclass
class PendingCutout:
    order: int                 # the how-many-th generated image of this run (0-based)
    seed: Any
    prompt: str
    cutout: Image.Image        # RGBA
    mask: Image.Image          # L


def _batch_value(values: Any, index: int, default: Any) -> Any:
    if isinstance(values, (list, tuple)) and 0 <= index < len(values):
        return values[index]
    return default


def cut_out_generated(p: Any, pp: Any, args: CutoutArgs, engine: Any) -> str:
    """``postprocess_image``: segment ``args.text`` in the generated picture and keep the cut-out and
    its mask on ``p`` until ``postprocess`` saves them beside the saved image. Returns a log line."""
    from sd_webui_sam.cutout import check_caption, no_boxes_message, text_cutout

    caption = check_caption(args.text)
    if not args.sam_model:
        raise SamUserError("Cut out after generation: choose a SAM model in the Segment Anything panel.")
    image = pp.image
    pending: List[PendingCutout] = getattr(p, PENDING_ATTRIBUTE, None) or []
    batch_index = int(getattr(p, "batch_index", 0) or 0)
    # A1111 passes (image); Forge adds the image's index in the whole run.
    order = getattr(pp, "index", None)
    if order is None:
        order = int(getattr(p, "iteration", 0) or 0) * int(getattr(p, "batch_size", 1) or 1) + batch_index
    result = text_cutout(engine, np.asarray(image.convert("RGB")), caption, sam_model=args.sam_model,
                         detector=args.dino_model, box_threshold=args.box_threshold, text_threshold=args.text_threshold,
                         alpha=args.alpha, alpha_band=args.alpha_band)
    if result is None:
        return f"cut out: {no_boxes_message(caption, args.box_threshold)}"
    pending.append(PendingCutout(
        order=int(order), seed=_batch_value(getattr(p, "seeds", None), batch_index, getattr(p, "seed", None)),
        prompt=_batch_value(getattr(p, "prompts", None), batch_index, getattr(p, "prompt", "")),
        cutout=result.cutout, mask=result.mask_image,
    ))
    setattr(p, PENDING_ATTRIBUTE, pending)
    dropped = f" ({result.dropped} less confident box(es) left out by 'max objects')" if result.dropped else ""
    return f"cut out {len(result.boxes)} object(s) for '{caption}'{dropped}"


def finish_cutouts(p: Any, processed: Any, save: Any) -> List[str]:
    """``postprocess``: save each pending cut-out and mask beside its generated image (``save`` is
    the host's saver) and add them to the output gallery. Returns the paths written."""
    pending: List[PendingCutout] = getattr(p, PENDING_ATTRIBUTE, None) or []
    if not pending:
        return []
    setattr(p, PENDING_ATTRIBUTE, [])
    images = getattr(processed, "images", None)
    first = int(getattr(processed, "index_of_first_image", 0) or 0)
    written: List[str] = []
    added: List[Image.Image] = []
    for entry in pending:
        saved_beside = None
        if isinstance(images, list) and 0 <= first + entry.order < len(images):
            generated = images[first + entry.order]
            if getattr(generated, "size", None) == entry.cutout.size:
                saved_beside = getattr(generated, "already_saved_as", None)
        if not getattr(p, "do_not_save_samples", False):
            written += [save(p, entry.cutout, entry.seed, entry.prompt, CUTOUT_SUFFIX, saved_beside),
                        save(p, entry.mask, entry.seed, entry.prompt, CUTOUT_MASK_SUFFIX, saved_beside)]
        added += [entry.cutout, entry.mask]
    if isinstance(images, list):
        images.extend(added)
        infotexts = getattr(processed, "infotexts", None)
        if isinstance(infotexts, list):
            # the gallery reads infotexts[i] for image i: keep them aligned
            infotexts.extend([infotexts[0] if infotexts else ""] * len(added))
    return [path for path in written if path]
