"""The Segment Anything script's generation arguments, declared once.

A WebUI script receives its arguments by position: the components ``Script.ui`` returns, in
order, or ``alwayson_scripts["segment anything"]["args"]`` over the WebUI's HTTP API. This list
names each position, its kind, the value a missing or empty one means, and its label in the panel.
The panel builds its components from it, the script reads its values by name through
:func:`parse_script_args`, and README's argument table is checked against it by a test.

Older API callers send the first 6 (mask hand-off), 12 (with cut-out after generation) or 15 (with the map) values;
the ones they leave out take their defaults, which mean off.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, Mapping, Sequence, Tuple

from sd_webui_sam.script_schema import ScriptArg

__all__ = ["ARG_NAMES", "CONTROL_MAP_ARGS", "CUTOUT_ALPHA_ARGS", "CUTOUT_ARGS", "HANDOFF_ARGS", "SCRIPT_ARGS",
           "ScriptArgValues", "parse_script_args", "script_arg"]

#: Send the panel's mask to img2img inpaint and/or a ControlNet unit.
HANDOFF_ARGS: Tuple[ScriptArg, ...] = (
    ScriptArg("use_for_generation", "bool", False, "Use this mask for the next generation (img2img inpaint)"),
    ScriptArg("image", "picture", None, "Image"),
    ScriptArg("mask", "picture", None, "Mask"),
    ScriptArg("controlnet_enabled", "bool", False, "Send to ControlNet unit"),
    ScriptArg("controlnet_unit", "int", 0, "ControlNet unit", minimum=0),
    ScriptArg("controlnet_invert", "bool", False, "Inpaint not masked (invert)"),
)
#: Cut out after generation: segment a text prompt in each generated picture.
CUTOUT_ARGS: Tuple[ScriptArg, ...] = (
    ScriptArg("cutout_enabled", "bool", False, "Cut out after generation"),
    ScriptArg("cutout_text", "text", "", "Cut out"),
    ScriptArg("cutout_sam_model", "model", None, "SAM model"),
    ScriptArg("cutout_dino_model", "model", None, "GroundingDINO model"),
    ScriptArg("cutout_box_threshold", "float", 0.3, "Box threshold", minimum=0.0, maximum=1.0),
    ScriptArg("cutout_text_threshold", "float", 0.25, "Text threshold", minimum=0.0, maximum=1.0),
)
#: An AutoSAM map as a ControlNet unit's control image.
CONTROL_MAP_ARGS: Tuple[ScriptArg, ...] = (
    ScriptArg("control_map_enabled", "bool", False, "Send the map to ControlNet at the next generation"),
    ScriptArg("control_map_unit", "int", 0, "ControlNet unit", minimum=0),
    ScriptArg("control_map_image", "picture", None, "Map sent to ControlNet (preprocessor: none)"),
)
#: Soft edges of 'cut out after generation' (added after the control map: older callers leave them out).
CUTOUT_ALPHA_ARGS: Tuple[ScriptArg, ...] = (
    ScriptArg("cutout_soft_edges", "bool", False, "Soft edges (alpha matte: hair, fur, glass)"),
    ScriptArg("cutout_edge_band", "float", 0.0, "Edge band (px each side, 0 = automatic)", minimum=0.0, maximum=240.0),
)
SCRIPT_ARGS: Tuple[ScriptArg, ...] = HANDOFF_ARGS + CUTOUT_ARGS + CONTROL_MAP_ARGS + CUTOUT_ALPHA_ARGS
ARG_NAMES: Tuple[str, ...] = tuple(arg.name for arg in SCRIPT_ARGS)
_BY_NAME: Dict[str, ScriptArg] = {arg.name: arg for arg in SCRIPT_ARGS}


def script_arg(name: str) -> ScriptArg:
    return _BY_NAME[name]


class ScriptArgValues(Mapping[str, Any]):
    """The script's values by name (``values.cutout_text`` or ``values["cutout_text"]``)."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def handoff_wanted(self) -> bool:
        return bool(self.use_for_generation or self.controlnet_enabled)


def parse_script_args(values: Sequence[Any]) -> ScriptArgValues:
    """The script's positional values, read by name; missing trailing values take their defaults."""
    values = list(values)
    return ScriptArgValues({arg.name: arg.parse(values[index]) if index < len(values) else arg.default
                            for index, arg in enumerate(SCRIPT_ARGS)})
