"""The settings of "Detail each object", declared once.

Everything else is derived from ``DETAIL_SETTINGS``: the section's components (ui/detail_section.py),
the script's positional arguments and their parsing (API callers may send the values in that
order, or one dict of named values, or both), the infotext keys that PNG Info / "Send to img2img"
read back, and the X/Y/Z plot axes. Nothing here knows about gradio or the WebUI.
"""
from __future__ import annotations

from dataclasses import field, fields, make_dataclass
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from sd_webui_sam.script_schema import ScriptArg

#: What the sampler, steps and CFG settings hold when the generation's own value is meant.
USE_GENERATION = "Use the generation's"
ORDERS = ("left to right", "largest first", "by score")
SEED_RULES = ("same seed", "seed + index")
#: Where the objects come from: GroundingDINO + SAM on each image, or the masks made in the panel.
SOURCES = ("found by caption", "the panel's masks")
#: Infotext keys start with this, so they never collide with the host's or other extensions'.
INFOTEXT_PREFIX = "SAM detail"


def _setting(name, kind, default, label, **extra) -> ScriptArg:
    return ScriptArg(name=name, kind=kind, default=default, label=label, **extra)


def _key(text: str) -> str:
    return f"{INFOTEXT_PREFIX} {text}"


#: In this order the script's positional arguments come (``alwayson_scripts`` "args").
DETAIL_SETTINGS: Tuple[ScriptArg, ...] = (
    _setting("enabled", "bool", False, "Detail each object"),
    _setting("caption", "text", "face", "Objects to detail", infotext=_key("caption"), axis=True,
             info="What GroundingDINO should find, e.g. 'face' or 'face, hand'."),
    _setting("sam_model", "choice", "", "SAM model", infotext=_key("SAM model")),
    _setting("dino_model", "choice", "", "GroundingDINO model", infotext=_key("GroundingDINO model")),
    _setting("box_threshold", "float", 0.3, "Box threshold", minimum=0.0, maximum=1.0, step=0.01,
             infotext=_key("box threshold"), axis=True),
    _setting("text_threshold", "float", 0.25, "Text threshold", minimum=0.0, maximum=1.0, step=0.01,
             infotext=_key("text threshold")),
    _setting("max_objects", "int", 10, "Max objects", minimum=1, maximum=100, step=1,
             infotext=_key("max objects"), axis=True),
    _setting("min_area", "float", 0.0, "Min area (fraction of the image)", minimum=0.0, maximum=1.0, step=0.001,
             infotext=_key("min area"), axis=True),
    _setting("max_area", "float", 1.0, "Max area (fraction of the image)", minimum=0.0, maximum=1.0, step=0.001,
             infotext=_key("max area"), axis=True),
    _setting("order", "choice", ORDERS[0], "Order", choices=ORDERS, infotext=_key("order")),
    _setting("prompt", "text", "", "Prompt", lines=2, infotext=_key("prompt"),
             info="Empty: the generation's prompt. [SEP] separates the 1st, 2nd, ... object's prompts; "
                  "[PROMPT] inserts the generation's prompt."),
    _setting("negative_prompt", "text", "", "Negative prompt", lines=2, infotext=_key("negative prompt")),
    _setting("mask_expand", "int", 4, "Mask expand (+) / shrink (-), px", minimum=-64, maximum=64, step=1,
             infotext=_key("mask expand"), axis=True),
    _setting("mask_feather", "float", 0.0, "Mask feather, px", minimum=0.0, maximum=32.0, step=0.5,
             infotext=_key("mask feather"), axis=True),
    _setting("padding", "int", 32, "Padding around the object, px", minimum=0, maximum=256, step=4,
             infotext=_key("padding"), axis=True),
    _setting("resolution", "int", 512, "Inpaint resolution (long side, per object)", minimum=64, maximum=2048,
             step=8, infotext=_key("resolution"), axis=True),
    _setting("denoising_strength", "float", 0.4, "Denoising strength", minimum=0.0, maximum=1.0, step=0.01,
             infotext=_key("denoising strength"), axis=True),
    _setting("steps", "int", 0, "Steps (0: the generation's)", minimum=0, maximum=150, step=1,
             infotext=_key("steps"), axis=True),
    _setting("cfg_scale", "float", 0.0, "CFG scale (0: the generation's)", minimum=0.0, maximum=30.0, step=0.5,
             infotext=_key("CFG scale"), axis=True),
    _setting("sampler", "choice", USE_GENERATION, "Sampler", infotext=_key("sampler")),
    _setting("seed_rule", "choice", SEED_RULES[0], "Seed", choices=SEED_RULES, infotext=_key("seed")),
    _setting("skip_if_nothing", "bool", True, "Skip if nothing found", infotext=_key("skip if nothing found"),
             info="Off: an image in which nothing is found gets a note in its infotext."),
    _setting("keep_original", "bool", False, "Also keep the image before detailing",
             infotext=_key("keep original")),
    # Added last, so positional API callers from before keep their meaning.
    _setting("source", "choice", SOURCES[0], "Objects", choices=SOURCES, infotext=_key("source"),
             info="Found by caption: GroundingDINO finds what 'Objects to detail' names. The panel's masks: each "
                  "object (box or click group) of the Segment Anything panel's current mask is detailed."),
    # The panel's masks, one PNG per object (base64 or data URL); a JSON list in the section's hidden
    # box, filled by the panel; a list of strings through the API. Too large for an infotext.
    _setting("panel_masks", "picture", "", "Panel masks"),
)
SETTINGS_BY_NAME: Dict[str, ScriptArg] = {setting.name: setting for setting in DETAIL_SETTINGS}
NAMES: Tuple[str, ...] = tuple(SETTINGS_BY_NAME)


class _DetailSettingsMethods:
    @classmethod
    def from_named(cls, values: Mapping[str, Any]) -> "DetailSettings":
        return cls(**{name: SETTINGS_BY_NAME[name].parse(values.get(name)) for name in NAMES})

    def replaced(self, overrides: Mapping[str, Any]) -> "DetailSettings":
        """These settings with some replaced (X/Y/Z plot values), each parsed by its own rule."""
        values = self.as_dict()
        values.update({name: value for name, value in overrides.items() if name in SETTINGS_BY_NAME})
        return DetailSettings.from_named(values)

    def as_dict(self) -> Dict[str, Any]:
        return {item.name: getattr(self, item.name) for item in fields(self)}


_TYPES = {"bool": bool, "text": str, "choice": str, "int": int, "float": float, "picture": object}
#: The parsed settings: a frozen dataclass with one field per ``DETAIL_SETTINGS`` entry (its default).
DetailSettings = make_dataclass(
    "DetailSettings", [(s.name, _TYPES[s.kind], field(default=s.default)) for s in DETAIL_SETTINGS],
    bases=(_DetailSettingsMethods,), frozen=True)
DetailSettings.__module__ = __name__


def parse_args(values: Sequence[Any]) -> DetailSettings:
    """The script's arguments: the values in ``DETAIL_SETTINGS`` order (missing trailing ones keep their
    defaults), where any value may instead be a dict of named values, which wins (adetailer's
    convention for ``alwayson_scripts``). A dict that does not say ``enabled`` means enabled: the
    caller asked for detailing by sending its settings."""
    named: Dict[str, Any] = {}
    dicts: List[Mapping[str, Any]] = []
    for name, value in zip(NAMES, values):
        if isinstance(value, Mapping):
            dicts.append(value)
        else:
            named[name] = value
    for extra in list(values[len(NAMES):]):
        if isinstance(extra, Mapping):
            dicts.append(extra)
    for given in dicts:
        unknown = sorted(set(given) - set(NAMES))
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(map(repr, unknown))}; known: {', '.join(NAMES)}")
        named.update(given)
        named["enabled"] = given.get("enabled", True)
    return DetailSettings.from_named(named)


def infotext_params(settings: DetailSettings) -> Dict[str, Any]:
    """What goes into the infotext (``p.extra_generation_params``): every setting that has a key and
    differs from its default, plus the caption always (its presence means "detailing was on")."""
    params: Dict[str, Any] = {}
    for setting in DETAIL_SETTINGS:
        if setting.infotext is None:
            continue
        value = getattr(settings, setting.name)
        if setting.name != "caption" and value == setting.default:
            continue
        params[setting.infotext] = value
    return params


def from_infotext(params: Mapping[str, Any]) -> Dict[str, Any]:
    """The settings an infotext's parameters restore (each parsed), ``enabled`` from the caption's
    presence; settings absent from it are their defaults (only non-defaults are written)."""
    caption_key = SETTINGS_BY_NAME["caption"].infotext
    if caption_key not in params:
        return {"enabled": False}
    restored: Dict[str, Any] = {"enabled": True}
    for setting in DETAIL_SETTINGS:
        if setting.infotext is not None:
            restored[setting.name] = setting.parse(params.get(setting.infotext, setting.default))
    return restored


def axis_settings() -> Tuple[ScriptArg, ...]:
    return tuple(setting for setting in DETAIL_SETTINGS if setting.axis)
