"""The ControlNet each host ships with, behind one interface.

sd-webui-controlnet (AUTOMATIC1111) is reached through its ``external_code`` module; Forge's
built-in ControlNet has no processing helpers, so its unit is replaced in ``p.script_args``.
Only the WebUI adapter (``scripts/``) calls ``find_controlnet``, once the host's modules exist.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.util
from typing import Any, Callable, Optional

import numpy as np

__all__ = [
    "ControlNetAdapter", "ForgeControlNet", "InstalledControlNet", "MikubillControlNet", "NoControlNet",
    "controlnet_unit_count", "find_controlnet", "is_forge",
]

MIKUBILL_MODULE_CANDIDATES = (
    "extensions.sd-webui-controlnet.scripts.external_code",
    "extensions-builtin.sd-webui-controlnet.scripts.external_code",
)
FORGE_MODULE = "lib_controlnet.external_code"


def is_forge() -> bool:
    return importlib.util.find_spec("modules_forge") is not None


def controlnet_unit_count(opts: Any) -> int:
    """ControlNet's unit count: ``control_net_unit_count`` (v1.1.400+), else the legacy key."""
    data = getattr(opts, "data", None) or {}
    for key in ("control_net_unit_count", "control_net_max_models_num"):
        if key in data and data[key] is not None:
            try:
                return max(1, int(data[key]))
            except (TypeError, ValueError):
                continue
    return 3


class ControlNetAdapter:
    """Writes an image and a mask, or a finished control map, into one ControlNet unit of a processing object."""

    name = "none"

    def available(self) -> bool:
        return False

    def unit_count(self, opts: Any) -> int:
        return 0

    def assign(self, p: Any, unit_index: int, image: np.ndarray, mask: np.ndarray) -> str:
        """``image`` (H,W,3) uint8, ``mask`` (H,W) uint8, 255 = masked. Returns a note for the log."""
        raise RuntimeError("ControlNet is not installed.")

    def assign_control_image(self, p: Any, unit_index: int, image: np.ndarray) -> str:
        """``image`` (H,W,3) uint8 is the unit's finished control map (a segmentation or EditAnything
        map): no mask, and the unit's preprocessor is switched off so the map is used as it is."""
        raise RuntimeError("ControlNet is not installed.")


class NoControlNet(ControlNetAdapter):
    pass


class InstalledControlNet(ControlNetAdapter):
    """A ControlNet the host has loaded, reached through its ``external_code`` module."""

    def __init__(self, external_code: Any):
        self.external_code = external_code

    def available(self) -> bool:
        return True

    def unit_count(self, opts: Any) -> int:
        return controlnet_unit_count(opts)


def _missing_model_note(unit_index: int, unit: Any) -> str:
    """What to tell the user when the unit has no ControlNet model: ControlNet then raises "You
    have not selected any ControlNet Model" for the unit and the generation runs without it."""
    model = getattr(unit, "model", None)
    if model is not None and str(model).strip().lower() not in ("", "none"):
        return ""
    return (f"; but unit {unit_index} has no ControlNet model selected, so ControlNet will skip it: choose a "
            "model in that unit (ControlNet models go in models/ControlNet)")


def _find_controlnet_script(runner: Any) -> Optional[Any]:
    for script in getattr(runner, "alwayson_scripts", None) or []:
        try:
            if script.title().lower() == "controlnet":
                return script
        except Exception:  # another extension's title() must not stop us
            continue
    return None


class MikubillControlNet(InstalledControlNet):
    """sd-webui-controlnet through its ``external_code`` API."""

    name = "sd-webui-controlnet"

    def _edit_unit(self, p: Any, unit_index: int, edit: Callable[[Any], None]) -> Any:
        units = list(self.external_code.get_all_units_in_processing(p))
        if not units:
            raise RuntimeError("ControlNet is installed but not active in this generation.")
        if not 0 <= unit_index < len(units):
            raise RuntimeError(f"ControlNet has {len(units)} units; unit {unit_index} does not exist.")
        # The units in p.script_args are the session's gr.State objects: edit copies, never them.
        units = [copy.copy(unit) for unit in units]
        edit(units[unit_index])
        units[unit_index].enabled = True
        self.external_code.update_cn_script_in_processing(p, units)
        return units[unit_index]

    def assign(self, p: Any, unit_index: int, image: np.ndarray, mask: np.ndarray) -> str:
        def edit(unit: Any) -> None:
            unit.image = {"image": np.ascontiguousarray(image, dtype=np.uint8),
                          "mask": np.ascontiguousarray(mask, dtype=np.uint8)}

        unit = self._edit_unit(p, unit_index, edit)
        return f"mask sent to ControlNet unit {unit_index}" + _missing_model_note(unit_index, unit)

    def assign_control_image(self, p: Any, unit_index: int, image: np.ndarray) -> str:
        def edit(unit: Any) -> None:
            unit.image = np.ascontiguousarray(image, dtype=np.uint8)
            unit.module = "none"
            if hasattr(unit, "mask"):  # v1.1.455's separate mask field: a mask drawn for another picture
                unit.mask = None

        unit = self._edit_unit(p, unit_index, edit)
        return f"control map sent to ControlNet unit {unit_index} (preprocessor none)" + _missing_model_note(unit_index, unit)


class ForgeControlNet(InstalledControlNet):
    """Forge's built-in ControlNet: no processing helpers, so the unit is replaced in ``p.script_args``."""

    name = "forge"

    def _replace_unit(self, p: Any, unit_index: int, **changes: Any) -> Any:
        script = _find_controlnet_script(getattr(p, "scripts", None))
        if script is None:
            raise RuntimeError("Forge's ControlNet is not active in this generation.")
        args = list(p.script_args)
        position = script.args_from + unit_index
        if not script.args_from <= position < script.args_to:
            raise RuntimeError(f"ControlNet has {script.args_to - script.args_from} units; unit {unit_index} does not exist.")
        unit = args[position]
        unit_class = self.external_code.ControlNetUnit
        if isinstance(unit, dict):
            from_dict = getattr(unit_class, "from_dict", None)
            unit = from_dict(unit) if from_dict else unit_class(**unit)
        elif not dataclasses.is_dataclass(unit):
            unit = unit_class()
        # dataclasses.replace makes a new unit: the session's gr.State unit is left as it was.
        args[position] = dataclasses.replace(unit, enabled=True, **changes)
        p.script_args = tuple(args) if isinstance(p.script_args, tuple) else args
        return args[position]

    def assign(self, p: Any, unit_index: int, image: np.ndarray, mask: np.ndarray) -> str:
        mask3 = np.repeat(np.asarray(mask, dtype=np.uint8)[:, :, None], 3, axis=2)
        unit = self._replace_unit(p, unit_index, image=np.ascontiguousarray(image, dtype=np.uint8), image_fg=None,
                                  mask_image=mask3, mask_image_fg=None)
        return f"mask sent to ControlNet unit {unit_index}" + _missing_model_note(unit_index, unit)

    def assign_control_image(self, p: Any, unit_index: int, image: np.ndarray) -> str:
        image = np.ascontiguousarray(image, dtype=np.uint8)
        # Forge evaluates ``(image < 5).all() and (image_fg[..., 3] > 5).any()``: with image_fg None
        # that raises for a dark map (an EditAnything map of few segments is nearly black). An empty,
        # fully transparent foreground keeps the map as the input and adds no mask.
        empty_foreground = np.zeros(image.shape[:2] + (4,), dtype=np.uint8)
        unit = self._replace_unit(p, unit_index, module="None", image=image, image_fg=empty_foreground,
                                  mask_image=None, mask_image_fg=None)
        return f"control map sent to ControlNet unit {unit_index} (preprocessor None)" + _missing_model_note(unit_index, unit)


def find_controlnet(import_module: Callable[[str], Any] = importlib.import_module) -> ControlNetAdapter:
    """The ControlNet of this host, or ``NoControlNet``."""
    if is_forge():
        try:
            return ForgeControlNet(import_module(FORGE_MODULE))
        except Exception:
            return NoControlNet()
    for name in MIKUBILL_MODULE_CANDIDATES:
        try:
            module = import_module(name)
        except Exception:
            continue
        if hasattr(module, "get_all_units_in_processing"):
            return MikubillControlNet(module)
    return NoControlNet()
