"""AUTOMATIC1111 versus Forge, and the ControlNet each ships with, behind one interface.

Only the WebUI adapter (``scripts/``) imports this module, and only once the host's ``modules``
package exists. The core never imports it.

``HostSession`` is the per-process object of the WebUI integration: it owns the one ``Engine``
and remembers the img2img components the panel sends to. ``host_session()`` returns that one
object; the WebUI re-imports ``scripts/`` on "Reload UI" but not this package, so the engine and
its caches survive a reload.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import importlib.util
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

LOG = logging.getLogger("sd_webui_sam.host")

SETTINGS_SECTION = ("segment_anything", "Segment Anything")

#: img2img components the panel writes to, captured as the host builds them.
INPAINT_TARGET_IDS = (
    "img_inpaint_base",
    "img_inpaint_mask",
    "img2img_mask_blur",
    "img2img_inpaint_full_res",
    "img2img_inpaint_full_res_padding",
    "img2img_inpainting_fill",
    "img2img_denoising_strength",
)

MIKUBILL_MODULE_CANDIDATES = (
    "extensions.sd-webui-controlnet.scripts.external_code",
    "extensions-builtin.sd-webui-controlnet.scripts.external_code",
)
FORGE_MODULE = "lib_controlnet.external_code"


def is_forge() -> bool:
    return importlib.util.find_spec("modules_forge") is not None


def read_option(opts: Any, key: str, default: Any) -> Any:
    """Options are read from ``opts.data``: our own are not registered yet when scripts import."""
    data = getattr(opts, "data", None)
    if not isinstance(data, dict):
        return default
    value = data.get(key, default)
    return default if value is None else value


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


# ----- ControlNet ------------------------------------------------------------------------------


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


# ----- settings --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    key: str
    default: Any
    label: str
    component: str = "textbox"          # textbox | checkbox | slider | radio
    component_args: Optional[Dict[str, Any]] = None


OPTIONS: Sequence[OptionSpec] = (
    OptionSpec("sam_model_dir", "", "SAM model directory (empty: models/sam of the WebUI and of the extension)"),
    OptionSpec("sam_device", "auto", "Device for Segment Anything", "radio", {"choices": ["auto", "cuda", "mps", "cpu"]}),
    OptionSpec("sam_model_cache_size", 1, "SAM models kept loaded", "slider", {"minimum": 1, "maximum": 4, "step": 1}),
    OptionSpec("sam_embedding_cache_entries", 8, "Image embeddings kept (clicks on a cached image skip the encoder)",
               "slider", {"minimum": 1, "maximum": 64, "step": 1}),
    OptionSpec("sam_max_objects", 20, "Text prompts: most objects segmented per picture (the most confident boxes)",
               "slider", {"minimum": 1, "maximum": 200, "step": 1}),
    OptionSpec("sam_api_busy_timeout", 30, "HTTP API: seconds a request waits while a generation or another job "
               "holds the GPU, before it is answered 503 with Retry-After", "slider",
               {"minimum": 1, "maximum": 600, "step": 1}),
    OptionSpec("sam_offload_to_cpu", False, "Move SAM to the CPU between uses (saves VRAM for generation)", "checkbox"),
    OptionSpec("sam_auto_preview", True, "Default: preview on every click", "checkbox"),
    OptionSpec("sam_default_expand", 0, "Default mask expand (+) / shrink (-), px", "slider",
               {"minimum": -64, "maximum": 64, "step": 1}),
    OptionSpec("sam_default_feather", 0.0, "Default mask feather, px", "slider", {"minimum": 0, "maximum": 32, "step": 0.5}),
    OptionSpec("sam_default_fill_holes", False, "Default: fill holes in masks", "checkbox"),
    OptionSpec("sam_default_min_island", 0, "Default: remove islands smaller than, px", "slider",
               {"minimum": 0, "maximum": 4096, "step": 16}),
)


def register_options(shared: Any, gradio: Any) -> None:
    """``on_ui_settings`` body; 2-tuple sections and no ``category_id`` keep v1.6 working."""
    components = {"checkbox": gradio.Checkbox, "slider": gradio.Slider, "radio": gradio.Radio, "textbox": gradio.Textbox}
    for spec in OPTIONS:
        info = shared.OptionInfo(
            spec.default, spec.label, components[spec.component], dict(spec.component_args or {}), section=SETTINGS_SECTION
        )
        shared.opts.add_option(spec.key, info)


def tool_defaults(opts: Any):
    from sd_webui_sam.ui.panel import ToolDefaults

    def number(key: str, default: float) -> float:
        try:
            return float(read_option(opts, key, default))
        except (TypeError, ValueError):
            return default

    return ToolDefaults(
        expand=int(number("sam_default_expand", 0)),
        feather=number("sam_default_feather", 0.0),
        fill_holes=bool(read_option(opts, "sam_default_fill_holes", False)),
        min_island=int(number("sam_default_min_island", 0)),
        auto_preview=bool(read_option(opts, "sam_auto_preview", True)),
    )


def engine_settings(opts: Any, cmd_opts: Any, models_path: Optional[str], extension_root: Optional[Path]):
    """Command-line flags win over settings; the host's models/sam comes before the extension's."""
    from sd_webui_sam.settings import EngineSettings

    user_dir = getattr(cmd_opts, "sam_model_dir", None) or read_option(opts, "sam_model_dir", "") or None
    defaults: List[Path] = []
    if models_path:
        defaults.append(Path(models_path) / "sam")
    if extension_root is not None:
        defaults.append(Path(extension_root) / "models" / "sam")
    device = getattr(cmd_opts, "sam_device", None) or read_option(opts, "sam_device", "auto")
    use_cpu = [str(v).lower() for v in (getattr(cmd_opts, "use_cpu", None) or [])]
    if "all" in use_cpu or "sam" in use_cpu:
        device = "cpu"
    return EngineSettings(
        user_model_dir=Path(user_dir).expanduser() if user_dir else None,
        default_model_dirs=tuple(defaults),
        device=str(device or "auto"),
        offload_to_cpu=bool(read_option(opts, "sam_offload_to_cpu", False)),
        model_cache_size=int(read_option(opts, "sam_model_cache_size", 1)),
        embedding_cache_entries=int(read_option(opts, "sam_embedding_cache_entries", 8)),
        max_objects=int(read_option(opts, "sam_max_objects", 20)),
    )


def api_settings(opts: Any):
    """The HTTP API's settings from the WebUI's options."""
    from sd_webui_sam.api.service import ApiSettings

    try:
        busy = float(read_option(opts, "sam_api_busy_timeout", 30))
    except (TypeError, ValueError):
        busy = 30.0
    return ApiSettings(busy_timeout_s=max(1.0, busy))


# ----- saving next to the generated images ----------------------------------------------------


def _free_stem(directory: str, stem: str, extension: str) -> str:
    """``stem``, or ``stem-1``, ``stem-2``... whichever names no existing file: nothing is written over."""
    import os

    candidate, number = stem, 0
    while os.path.exists(os.path.join(directory, f"{candidate}.{extension}")):
        number += 1
        candidate = f"{stem}-{number}"
    return candidate


def save_beside_samples(p: Any, image: Any, seed: Any, prompt: str, suffix: str, saved_beside: Optional[str] = None) -> str:
    """Save ``image`` with the WebUI's own ``modules.images.save_image``, as PNG (cut-outs have alpha).

    Beside the generated picture when it was saved (``<its name><suffix>.png``); otherwise in
    ``p.outpath_samples`` with the file-name pattern and ``suffix``, as the host names its own
    extra images ("-before-face-restoration"). Never replaces an existing file.
    """
    import os

    from modules import images, shared

    opts = shared.opts
    if saved_beside:
        directory = os.path.dirname(saved_beside)
        stem = _free_stem(directory, os.path.splitext(os.path.basename(saved_beside))[0] + suffix, "png")
        fullfn, _ = images.save_image(image, directory, "", seed, prompt, "png", p=p, forced_filename=stem,
                                      save_to_dirs=False)
        return fullfn
    path = p.outpath_samples
    if read_option(opts, "save_images_add_number", True):
        fullfn, _ = images.save_image(image, path, "", seed, prompt, "png", p=p, suffix=suffix)  # numbered: unique
        return fullfn
    # Without numbers save_image would reuse the name and write over the file: pick a free name first.
    namegen = images.FilenameGenerator(p, seed, prompt, image)
    save_to_dirs = bool(read_option(opts, "save_to_dirs", False))
    if save_to_dirs:
        pattern = read_option(opts, "directories_filename_pattern", "") or "[prompt_words]"
        path = os.path.join(path, namegen.apply(pattern).lstrip(" ").rstrip("\\ /"))
    decoration = read_option(opts, "samples_filename_pattern", "") or ("[seed]" if save_to_dirs else "[seed]-[prompt_spaces]")
    stem = _free_stem(path, namegen.apply(decoration) + suffix, "png")
    fullfn, _ = images.save_image(image, path, "", seed, prompt, "png", p=p, forced_filename=stem, save_to_dirs=False)
    return fullfn


# ----- the per-process session -----------------------------------------------------------------


class HostSession:
    """One per process: the engine, and what the host showed us while it built its tabs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engine: Any = None
        self._settings_factory: Optional[Callable[[], Any]] = None
        self.inpaint_targets: Dict[str, Any] = {}
        self.inpaint_targets_root: Any = None
        self.pending_send_panels: List[Any] = []  # panels built before img2img's inpaint images

    def configure(self, settings_factory: Callable[[], Any]) -> None:
        """How to build the engine's settings; read when the engine is first needed."""
        self._settings_factory = settings_factory

    def engine(self) -> Any:
        with self._lock:
            if self._engine is None:
                from sd_webui_sam.engine import Engine

                settings = self._settings_factory() if self._settings_factory else None
                self._engine = Engine(settings)
            return self._engine

    def engine_if_created(self) -> Any:
        return self._engine

    # The inpaint-upload images exist only once img2img is built, and both hosts build txt2img and
    # img2img as separate top-level gr.Blocks that are rendered into the page afterwards. So
    # txt2img's send button is wired later, inside img2img's Blocks, when those images appear: an
    # event may join components of two Blocks, since rendering copies both into the page.
    def capture_component(self, component: Any, root: Any) -> None:
        elem_id = getattr(component, "elem_id", None)
        if elem_id not in INPAINT_TARGET_IDS:
            return
        if root is not self.inpaint_targets_root:  # a new page build (first build, or "Reload UI")
            self.inpaint_targets = {}
            self.inpaint_targets_root = root
        self.inpaint_targets[elem_id] = component
        if self._all_targets_seen():
            self._wire_pending()

    def request_send_wiring(self, panel: Any, root: Any) -> None:
        """Wire now when this Blocks already holds the targets (img2img's panel), else when they appear.

        Only the newest panel of each tab waits: the API builds throw-away panels in blocks of its
        own (``init_default_script_args``), which must neither pile up nor be wired.
        """
        prefix = panel.options.prefix
        self.pending_send_panels = [entry for entry in self.pending_send_panels if entry.options.prefix != prefix]
        self.pending_send_panels.append(panel)
        # img2img's scripts come after its inpaint controls; a host that lacks a preset control
        # still gets its send buttons wired here, with the images alone.
        if root is self.inpaint_targets_root and {"img_inpaint_base", "img_inpaint_mask"} <= set(self.inpaint_targets):
            self._wire_pending()

    def _wire_pending(self) -> None:
        waiting, self.pending_send_panels = self.pending_send_panels, []
        for panel in waiting:
            self._wire(panel)

    def _all_targets_seen(self) -> bool:
        return all(name in self.inpaint_targets for name in INPAINT_TARGET_IDS)

    def _wire(self, panel: Any) -> None:
        from sd_webui_sam.ui.panel import wire_send_to_inpaint

        if getattr(panel, "_sam_send_wired", False):
            return
        wire_send_to_inpaint(panel, dict(self.inpaint_targets))
        panel._sam_send_wired = True


@functools.lru_cache(maxsize=None)
def host_session() -> HostSession:
    return HostSession()
