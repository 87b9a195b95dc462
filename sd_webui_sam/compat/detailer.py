"""Detail each object inside A1111 / Forge: what the WebUI needs to know.

After each generated image (``postprocess_image``) the objects are found (sd_webui_sam/detailing.py)
and each one is inpainted alone by the host's own img2img, "only masked", in a processing object
built from the generation's settings; the result replaces the image before the host saves it and
shows it. The passes run without scripts, so neither this script nor ADetailer (or anything else)
runs inside them; ADetailer's own inner passes are recognised and left alone.

Also here: the infotext (``p.extra_generation_params``, and the paste fields that read it back),
the X/Y/Z plot axes, and ``shared.state`` (job count, progress text, Interrupt/Skip).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

from sd_webui_sam.detail_settings import (DETAIL_SETTINGS, INFOTEXT_PREFIX, USE_GENERATION, DetailSettings,
                                          axis_settings, from_infotext, infotext_params, parse_args)
from sd_webui_sam.detailing import PassPlan, objects_to_detail, plan_passes
from sd_webui_sam.errors import SamUserError

LOG = logging.getLogger("sd_webui_sam.detailer")

TITLE = "Detail each object (Segment Anything)"
#: X/Y/Z plot values for this generation (a new dict per cell: the plot runs shallow copies of p).
OVERRIDES_ATTRIBUTE = "sd_webui_sam_detail_overrides"
#: Set on our own passes, which are never detailed again.
INNER_ATTRIBUTE = "sd_webui_sam_detail_pass"
#: Pre-detail images waiting for ``postprocess`` to join the gallery.
KEPT_ATTRIBUTE = "sd_webui_sam_detail_kept"
#: Per-image infotext entries (how many objects were detailed, or why none).
OBJECTS_KEY = f"{INFOTEXT_PREFIX} objects"
NOTE_KEY = f"{INFOTEXT_PREFIX} note"
SCALED_KEY = f"{INFOTEXT_PREFIX} panel masks scaled from"
BEFORE_SUFFIX = "-before-detail"
AXIS_PREFIX = "[SAM detail] "


def settings_for(p: Any, values: Sequence[Any]) -> DetailSettings:
    """The script's arguments with this generation's X/Y/Z values applied."""
    settings = parse_args(values)
    overrides = getattr(p, OVERRIDES_ATTRIBUTE, None)
    return settings.replaced(overrides) if overrides else settings


def is_inner_pass(p: Any) -> bool:
    """Our own passes, and ADetailer's (it marks them ``_ad_inner``), are never detailed."""
    return bool(getattr(p, INNER_ATTRIBUTE, False) or getattr(p, "_ad_inner", False))


def _wanted_settings(p: Any, values: Sequence[Any]) -> "tuple[Optional[DetailSettings], List[str]]":
    """(the settings, []) when this generation is to be detailed, else (None, what to say)."""
    try:
        settings = settings_for(p, values)
    except ValueError as error:
        return None, [f"Detail each object: {error}"]
    if not settings.enabled or is_inner_pass(p):
        return None, []
    return settings, []


def before_process(p: Any, values: Sequence[Any]) -> List[str]:
    """Write the settings into the generation's infotext (read back by PNG Info / paste)."""
    settings, messages = _wanted_settings(p, values)
    if settings is None:
        return messages
    p.extra_generation_params.update(infotext_params(settings))
    return []


def _batch_value(values: Any, index: int, default: Any) -> Any:
    if isinstance(values, (list, tuple)) and 0 <= index < len(values):
        return values[index]
    return default


def _state() -> Any:
    from modules import shared  # the WebUI's own module: importable only inside the host

    return shared.state


def _stopped(state: Any) -> bool:
    return bool(getattr(state, "interrupted", False) or getattr(state, "skipped", False)
                or getattr(state, "stopping_generation", False))


def build_pass(p: Any, image: Any, plan: PassPlan, settings: DetailSettings, processing_class: Any) -> Any:
    """One object's img2img "only masked" pass, built from the generation ``p``: the plan's mask,
    size, prompts and seed, and the generation's model, sampler, steps and CFG unless overridden.
    Masked content "original" and mask blur 0 (the feathering is in the mask itself), so pixels the
    mask does not touch stay exactly as they are."""
    batch_index = int(getattr(p, "batch_index", 0) or 0)
    wanted = dict(
        init_images=[image], resize_mode=0, denoising_strength=settings.denoising_strength, mask=plan.mask,
        mask_blur=0, mask_blur_x=0, mask_blur_y=0, inpainting_fill=1, inpaint_full_res=True,
        inpaint_full_res_padding=settings.padding, inpainting_mask_invert=0, sd_model=getattr(p, "sd_model", None),
        outpath_samples=getattr(p, "outpath_samples", None), outpath_grids=getattr(p, "outpath_grids", None),
        prompt=plan.prompt, negative_prompt=plan.negative_prompt, styles=[], seed=plan.seed,
        subseed=_batch_value(getattr(p, "subseeds", None), batch_index, getattr(p, "subseed", -1)),
        subseed_strength=getattr(p, "subseed_strength", 0), sampler_name=(
            getattr(p, "sampler_name", None) if settings.sampler in ("", USE_GENERATION) else settings.sampler),
        batch_size=1, n_iter=1, steps=settings.steps or getattr(p, "steps", 20),
        cfg_scale=settings.cfg_scale or getattr(p, "cfg_scale", 7.0), width=plan.width, height=plan.height,
        restore_faces=False, tiling=getattr(p, "tiling", False), do_not_save_samples=True, do_not_save_grid=True,
        override_settings={}, extra_generation_params={},
    )
    for copied in ("scheduler", "distilled_cfg_scale", "clip_skip"):  # host- and version-specific fields
        if hasattr(p, copied):
            wanted[copied] = getattr(p, copied)
    accepted = {f.name for f in dataclasses.fields(processing_class) if f.init}
    i2i = processing_class(**{key: value for key, value in wanted.items() if key in accepted})
    i2i.scripts = None   # nothing else runs inside the pass (and we never recurse)
    i2i.script_args = []
    setattr(i2i, INNER_ATTRIBUTE, True)
    i2i._ad_inner = True  # ADetailer leaves a pass marked like its own alone
    return i2i


def detail_image(p: Any, pp: Any, values: Sequence[Any], engine: Any, *,
                 processing: Any = None, save_image: Optional[Callable[..., Any]] = None) -> List[str]:
    """``postprocess_image``: detail the objects of ``pp.image`` one pass each and put the result in
    ``pp.image``. Returns console lines; a problem is reported, never raised."""
    params = getattr(p, "extra_generation_params", None)
    if isinstance(params, dict):
        params.pop(OBJECTS_KEY, None)
        params.pop(NOTE_KEY, None)
        params.pop(SCALED_KEY, None)
    settings, problems = _wanted_settings(p, values)
    if settings is None:
        return problems
    if processing is None:
        from modules import processing  # the host's processing module (imported here: WebUI only)
    state = _state()
    if _stopped(state):
        return []
    image = pp.image
    batch_index = int(getattr(p, "batch_index", 0) or 0)
    prompt = _batch_value(getattr(p, "prompts", None), batch_index, getattr(p, "prompt", ""))
    negative = _batch_value(getattr(p, "negative_prompts", None), batch_index, getattr(p, "negative_prompt", ""))
    seed = _batch_value(getattr(p, "seeds", None), batch_index, getattr(p, "seed", -1))
    try:
        found = objects_to_detail(engine, image, settings)
    except SamUserError as error:
        return [f"Detail each object: {error}"]
    if found.scaled_from is not None and isinstance(params, dict):
        params[SCALED_KEY] = "{}x{}".format(*found.scaled_from)
    plans, notes = plan_passes(found.objects, settings, prompt=prompt, negative_prompt=negative, seed=int(seed))
    notes = found.notes + notes
    messages = [f"Detail each object: {note}" for note in notes]
    if not plans:
        if isinstance(params, dict):
            params[OBJECTS_KEY] = 0
            if not settings.skip_if_nothing:
                params[NOTE_KEY] = "; ".join(notes) or "nothing to detail"
        return messages
    if isinstance(getattr(state, "job_count", None), int) and state.job_count > 0:
        state.job_count += len(plans)  # each pass is one more job: the progress bar stays truthful
    result, done = image, 0
    for plan in plans:
        if _stopped(state):
            messages.append(f"Detail each object: stopped after {done} of {len(plans)} object(s).")
            break
        state.textinfo = f"Detailing object {plan.index + 1} of {len(plans)} ('{plan.phrase}')"
        i2i = build_pass(p, result, plan, settings, processing.StableDiffusionProcessingImg2Img)
        try:
            processed = processing.process_images(i2i)
        finally:
            close = getattr(i2i, "close", None)
            if callable(close):
                close()
        if _stopped(state):  # the pass was cut short: its half-denoised object is not kept
            messages.append(f"Detail each object: stopped during object {plan.index + 1} of {len(plans)}; "
                            "that object is left as it was.")
            break
        images = getattr(processed, "images", None) or []
        if not images:
            messages.append(f"Detail each object: the pass for object {plan.index + 1} returned no image.")
            continue
        result, done = images[0], done + 1
    if isinstance(params, dict):
        params[OBJECTS_KEY] = done
    if done and settings.keep_original:
        _keep_original(p, image, seed, prompt, save_image)
    pp.image = result
    messages.append(f"Detail each object: {done} object(s) detailed ("
                    + ", ".join(f"'{plan.phrase}'" for plan in plans[:done]) + ").")
    return messages


def _keep_original(p: Any, image: Any, seed: Any, prompt: str, save_image: Optional[Callable[..., Any]]) -> None:
    kept = list(getattr(p, KEPT_ATTRIBUTE, None) or [])
    kept.append(image)
    setattr(p, KEPT_ATTRIBUTE, kept)
    if save_image is not None and callable(getattr(p, "save_samples", None)) and p.save_samples():
        save_image(p, image, seed, prompt, BEFORE_SUFFIX)


def save_with_host(p: Any, image: Any, seed: Any, prompt: str, suffix: str) -> None:
    """Save as the host saves its '-before-face-restoration' images: next to the samples."""
    from modules import images, shared  # the WebUI's own modules: importable only inside the host

    images.save_image(image, p.outpath_samples, "", seed, prompt, shared.opts.samples_format, p=p, suffix=suffix)


def add_kept_images(p: Any, processed: Any) -> int:
    """``postprocess``: the pre-detail images join the gallery after the generated ones."""
    kept = list(getattr(p, KEPT_ATTRIBUTE, None) or [])
    setattr(p, KEPT_ATTRIBUTE, [])
    images = getattr(processed, "images", None)
    if not kept or not isinstance(images, list):
        return 0
    images.extend(kept)
    infotexts = getattr(processed, "infotexts", None)
    if isinstance(infotexts, list):  # the gallery reads infotexts[i] for image i: keep them aligned
        infotexts.extend([infotexts[0] if infotexts else ""] * len(kept))
    return len(kept)


# ----- infotext paste and X/Y/Z ---------------------------------------------------------------------

def paste_fields(components: Dict[str, Any]) -> List[tuple]:
    """``Script.infotext_fields``: each component with a function of the parsed infotext that gives
    its value (None: leave it), so PNG Info and "Send to txt2img/img2img" restore the settings."""
    def reader(name: str) -> Callable[[Dict[str, Any]], Any]:
        def read(params: Dict[str, Any]) -> Any:
            return from_infotext(params).get(name)
        return read

    return [(components[s.name], reader(s.name)) for s in DETAIL_SETTINGS if s.name in components
            and (s.infotext is not None or s.name == "enabled")]


def find_xyz_module(scripts_data: Sequence[Any]) -> Any:
    for data in scripts_data:
        if os.path.basename(getattr(data, "path", "") or "") in ("xyz_grid.py", "xy_grid.py"):
            return data.module
    return None


def _axis_apply(name: str) -> Callable[[Any, Any, Any], None]:
    def apply(p: Any, value: Any, values: Any) -> None:
        setattr(p, OVERRIDES_ATTRIBUTE, {**(getattr(p, OVERRIDES_ATTRIBUTE, None) or {}), name: value})
    return apply


def add_xyz_axes(xyz: Any) -> int:
    """Add an axis per main setting to the X/Y/Z plot module (once). Returns how many were added."""
    existing = {getattr(option, "label", None) for option in xyz.axis_options}
    types = {"int": int, "float": float, "text": str, "choice": str, "bool": str}
    added = 0
    for setting in axis_settings():
        label = AXIS_PREFIX + setting.label
        if label in existing:
            continue
        choices = (lambda options=setting.choices: list(options)) if setting.choices else None
        xyz.axis_options.append(xyz.AxisOption(label, types[setting.kind], _axis_apply(setting.name), choices=choices))
        added += 1
    return added


def sampler_names() -> List[str]:
    try:
        from modules import sd_samplers  # the WebUI's own module: absent outside the host
    except ImportError:
        return []
    try:
        return list(sd_samplers.visible_sampler_names())
    except AttributeError:
        return [sampler.name for sampler in getattr(sd_samplers, "samplers_for_img2img", [])]
