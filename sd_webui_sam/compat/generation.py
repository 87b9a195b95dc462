"""What the Segment Anything script does to the WebUI's processing object ``p``: host knowledge.

It sets ``p.init_images``/``p.image_mask`` and ControlNet units in ``before_process``: every
extension's ``before_process`` runs before any ``process`` (where ControlNet reads its units) and
before ``p.init`` (where img2img reads ``init_images`` and ``image_mask``), so no reordering of
other scripts is needed. Cut-outs are made in ``postprocess_image`` and saved in ``postprocess``.
The arguments are read by name (``script_args``); their pictures by ``handoff_pictures``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence

import numpy as np
from PIL import Image

from sd_webui_sam.cutout import text_cutout
from sd_webui_sam.errors import SamUserError
from sd_webui_sam.handoff_pictures import control_map_array, image_and_mask
from sd_webui_sam.prompts import check_caption
from sd_webui_sam.script_args import ScriptArgValues, parse_script_args
from sd_webui_sam.text_prompt import no_boxes_message

__all__ = ["CUTOUT_MASK_SUFFIX", "CUTOUT_SUFFIX", "apply", "apply_control_map", "before_process", "cut_out_generated",
           "finish_cutouts"]


def apply(p: Any, values: Sequence[Any], controlnet: Any, *, is_img2img: bool) -> List[str]:
    """Set the generation's inputs from the script's values. Returns what was done, for the log.

    img2img + "use for generation": ``p.init_images = [image]`` and ``p.image_mask = mask``.
    ControlNet: the image and the (optionally inverted) mask go into unit N, as uint8 arrays.
    """
    args = parse_script_args(values)
    if not args.handoff_wanted:
        return []
    image, mask = image_and_mask(args.image, args.mask)
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


def apply_control_map(p: Any, values: Sequence[Any], controlnet: Any, *, mask_unit: Optional[int] = None) -> List[str]:
    """Put the AutoSAM map into ControlNet unit N as its control image. ``mask_unit``: the unit the
    mask hand-off filled in this generation, if any (the map replaces it; the log says so)."""
    args = parse_script_args(values)
    if not args.control_map_enabled:
        return []
    if controlnet is None or not controlnet.available():
        raise SamUserError("Segment Anything: 'Send the map to ControlNet' is on but no ControlNet is installed.")
    note = controlnet.assign_control_image(p, args.control_map_unit, control_map_array(args.control_map_image))
    if mask_unit is not None and mask_unit == args.control_map_unit:
        note += "; it replaces the mask sent to the same unit"
    return [note]


def before_process(p: Any, values: Sequence[Any], find_controlnet: Callable[[], Any], *, is_img2img: bool) -> List[str]:
    """Everything the script does before a generation: the mask hand-off, then the AutoSAM map.

    Returns messages for the console. A problem the user can fix is reported there and never
    breaks the generation (hook exceptions would only be swallowed by the host anyway).
    ``find_controlnet`` is called only when a ControlNet unit is wanted.
    """
    args = parse_script_args(values)
    if not args.handoff_wanted and not args.control_map_enabled:
        return []
    controlnet = find_controlnet() if (args.controlnet_enabled or args.control_map_enabled) else None
    messages: List[str] = []
    mask_unit = None
    if args.handoff_wanted:
        done = _reported(lambda: apply(p, values, controlnet, is_img2img=is_img2img), messages)
        if done and args.controlnet_enabled:
            mask_unit = args.controlnet_unit
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

CUTOUT_SUFFIX = "-cutout"
CUTOUT_MASK_SUFFIX = "-cutout-mask"
#: Where the cut-outs of one generation wait between ``postprocess_image`` and ``postprocess``.
PENDING_ATTRIBUTE = "sd_webui_sam_cutouts"


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


def cut_out_generated(p: Any, pp: Any, args: ScriptArgValues, engine: Any) -> str:
    """``postprocess_image``: segment ``args.cutout_text`` in the generated picture and keep the
    cut-out and its mask on ``p`` until ``postprocess`` saves them beside the saved image. Returns a log line."""
    caption = check_caption(args.cutout_text)
    if not args.cutout_sam_model:
        raise SamUserError("Cut out after generation: choose a SAM model in the Segment Anything panel.")
    image = pp.image
    pending: List[PendingCutout] = getattr(p, PENDING_ATTRIBUTE, None) or []
    batch_index = int(getattr(p, "batch_index", 0) or 0)
    # A1111 passes (image); Forge adds the image's index in the whole run.
    order = getattr(pp, "index", None)
    if order is None:
        order = int(getattr(p, "iteration", 0) or 0) * int(getattr(p, "batch_size", 1) or 1) + batch_index
    result = text_cutout(engine, np.asarray(image.convert("RGB")), caption, sam_model=args.cutout_sam_model,
                         detector=args.cutout_dino_model, box_threshold=args.cutout_box_threshold,
                         text_threshold=args.cutout_text_threshold,
                         alpha="soft" if args.cutout_soft_edges else "hard", alpha_band=args.cutout_edge_band)
    if result is None:
        return f"cut out: {no_boxes_message(caption, args.cutout_box_threshold)}"
    pending.append(PendingCutout(
        order=int(order), seed=_batch_value(getattr(p, "seeds", None), batch_index, getattr(p, "seed", None)),
        prompt=_batch_value(getattr(p, "prompts", None), batch_index, getattr(p, "prompt", "")),
        cutout=result.cutout, mask=result.mask_image,
    ))
    setattr(p, PENDING_ATTRIBUTE, pending)
    dropped = f" ({result.dropped} less confident box(es) left out by 'max objects')" if result.dropped else ""
    return f"cut out {len(result.boxes)} object(s) for '{caption}'{dropped}"


def finish_cutouts(p: Any, processed: Any, save: Callable[..., str]) -> List[str]:
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
