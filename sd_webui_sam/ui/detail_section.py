"""The "Detail each object (Segment Anything)" section: one component per setting of
``detail_settings.DETAIL_SETTINGS``, in its order (which is the script's argument order)."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence

import gradio as gr

from sd_webui_sam.detail_settings import DETAIL_SETTINGS, USE_GENERATION
from sd_webui_sam.script_schema import ScriptArg

#: Settings laid out side by side, by name; the rest get a row of their own.
ROWS = (
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
        gr.Markdown("After each generated image, find every object the caption names (GroundingDINO + SAM) and "
                    "inpaint each one alone, *only masked*, with its own mask. Empty model choices mean the "
                    "first model found.")
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
