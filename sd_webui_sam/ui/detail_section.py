"""The "Detail each object (Segment Anything)" section: one component per setting of
``detail_settings.DETAIL_SETTINGS``, in its order (which is the script's argument order)."""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Dict, List, Optional, Sequence

import gradio as gr

from sd_webui_sam import images
from sd_webui_sam.compat import gradio_compat as grc
from sd_webui_sam.detail_settings import DETAIL_SETTINGS, SOURCES, USE_GENERATION
from sd_webui_sam.script_schema import ScriptArg
from sd_webui_sam.ui import handlers

#: Settings laid out side by side, by name; the rest get a row of their own.
ROWS = (
    ("source", "caption"),
    ("sam_model", "dino_model"),
    ("box_threshold", "text_threshold"),
    ("max_objects", "order"),
    ("min_area", "max_area"),
    ("mask_expand", "mask_feather"),
    ("padding", "resolution"),
    ("denoising_strength", "seed_rule"),
    ("steps", "cfg_scale", "sampler"),
    ("skip_if_nothing", "keep_original"),
)


def _component(setting: ScriptArg, elem_id: str, choices: Dict[str, Sequence[str]]) -> Any:
    common = dict(label=setting.label, elem_id=elem_id)
    if setting.info:
        common["info"] = setting.info
    if setting.kind == "picture":  # the panel's masks: filled by the panel, sent with the generation
        return gr.Textbox(value=setting.default, visible=False, label=setting.label, elem_id=elem_id)
    if setting.kind == "bool":
        return gr.Checkbox(value=setting.default, **common)
    if setting.kind == "text":
        return gr.Textbox(value=setting.default, lines=setting.lines, **common)
    if setting.kind == "choice":
        options = list(setting.choices or choices.get(setting.name, ()))
        if setting.default not in options:
            options.insert(0, setting.default)
        return gr.Dropdown(choices=options, value=setting.default, **common)
    return gr.Slider(minimum=setting.minimum, maximum=setting.maximum, step=setting.step, value=setting.default,
                     **common)


def build_detail_section(elem_id: Callable[[str], str], *, sam_models: Sequence[str], dino_models: Sequence[str],
                         samplers: Sequence[str]) -> Dict[str, Any]:
    """Build the section (inside the caller's Blocks); returns {setting name: component}."""
    choices = {
        "sam_model": [""] + list(sam_models),
        "dino_model": [""] + list(dino_models),
        "sampler": [USE_GENERATION] + [name for name in samplers if name != USE_GENERATION],
    }
    by_name = {setting.name: setting for setting in DETAIL_SETTINGS}
    row_of = {name: row for row in ROWS for name in row}
    components: Dict[str, Any] = {}
    with gr.Accordion("Detail each object (Segment Anything)", open=False, elem_id=elem_id("accordion")):
        gr.Markdown("After each generated image, find every object the caption names (GroundingDINO + SAM), or "
                    "take each object of the Segment Anything panel's mask, and inpaint each one alone, *only "
                    "masked*, with its own mask. Empty model choices mean the first model found.")
        for setting in DETAIL_SETTINGS:
            if setting.name in components:
                continue
            row = row_of.get(setting.name)
            if row is None:
                components[setting.name] = _component(setting, elem_id(setting.name), choices)
                continue
            with gr.Row():
                for name in row:
                    components[name] = _component(by_name[name], elem_id(name), choices)
    return components


def ordered(components: Dict[str, Any]) -> List[Any]:
    """The components in the script's argument order."""
    return [components[setting.name] for setting in DETAIL_SETTINGS]


def panel_object_masks(candidates: Any, choice: Any, tools: Any) -> str:
    """The panel's current prediction as the section's objects: a JSON list with one PNG (base64) per
    object (box or click group), its chosen candidate after the mask tools (``handlers.MaskTools``),
    selected where the processed mask is at least half. Empty text when there is no prediction."""
    if candidates is None:
        return ""
    index = candidates.index(choice)
    per_object = candidates.object_masks if candidates.object_masks is not None else candidates.masks[None]
    encoded = []
    for object_candidates in per_object:
        # at the size the panel shows (the detailer scales masks to the generated image); without
        # the full-size decoder, which answers for the merged masks, not for this object
        alone = dataclasses.replace(candidates, masks=object_candidates, object_masks=None, full_size=None, _full_masks=None)
        alpha = handlers.processed_mask(alone, index, tools)
        encoded.append(images.bool_mask_png_base64(alpha >= 0.5, one_bit=True))
    return json.dumps(encoded)


#: The "Objects" choice that takes the panel's masks.
PANEL_SOURCE = SOURCES[1]


def wants_panel_masks(source: Any) -> bool:
    return source == PANEL_SOURCE


def follow_panel_masks(panel_parts: Optional[Dict[str, Any]], section_parts: Optional[Dict[str, Any]]) -> bool:
    """Connect the panel of a tab to this section in the same tab.

    ``panel_parts``: the panel's hidden boxes, "box" (its object masks, elem_id
    ``<tab>_sam_object_masks``) and "wanted" (``<tab>_sam_object_masks_wanted``); ``section_parts``:
    the section's "box" (its hidden argument) and "source" (its "Objects" choice). The panel makes
    its per-object PNGs only while "Objects" is the panel's masks (and at once when it is switched
    to them), and they are copied into the section's argument whenever they change. Returns whether
    all four were there to connect.
    """
    names = ("box", "wanted")
    if not panel_parts or not section_parts or any(panel_parts.get(name) is None for name in names) \
            or section_parts.get("box") is None or section_parts.get("source") is None:
        return False
    panel_box, wanted = panel_parts["box"], panel_parts["wanted"]
    source = section_parts["source"]
    grc.listen(panel_box.change, lambda text: text, [panel_box], [section_parts["box"]], show_progress=False)
    grc.listen(source.change, wants_panel_masks, [source], [wanted], show_progress=False)
    # The choice may have been restored from the saved UI defaults: the page starts in agreement.
    wanted.value = wants_panel_masks(getattr(source, "value", None))
    return True
