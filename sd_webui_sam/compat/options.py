"""The extension's WebUI settings: their declaration, and reading them into the core's settings.

Options are read from ``opts.data``: ours are not registered yet when the scripts are imported.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from sd_webui_sam.devices import DEVICE_CHOICES, PRECISION_CHOICES
from sd_webui_sam.settings import EngineSettings

__all__ = ["OPTIONS", "OptionSpec", "SETTINGS_SECTION", "api_busy_timeout_s", "engine_settings", "read_option",
           "register_options", "tool_default_values"]

SETTINGS_SECTION = ("segment_anything", "Segment Anything")


def read_option(opts: Any, key: str, default: Any) -> Any:
    """``opts.data[key]``, or ``default`` when it is missing or None."""
    data = getattr(opts, "data", None)
    if not isinstance(data, dict):
        return default
    value = data.get(key, default)
    return default if value is None else value


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    key: str
    default: Any
    label: str
    component: str = "textbox"          # textbox | checkbox | slider | radio
    component_args: Optional[Dict[str, Any]] = None


OPTIONS: Sequence[OptionSpec] = (
    OptionSpec("sam_model_dir", "", "SAM model directory (empty: models/sam of the WebUI and of the extension)"),
    OptionSpec("sam_device", "auto", "Device for Segment Anything", "radio", {"choices": list(DEVICE_CHOICES)}),
    OptionSpec("sam_precision", "auto", "Precision of Segment Anything's image encoder (auto: bf16 or fp16 on an "
               "NVIDIA GPU, fp32 on the CPU; the mask decoder always runs in fp32; applies after a restart)",
               "radio", {"choices": list(PRECISION_CHOICES)}),
    OptionSpec("sam_compile_encoder", False, "Compile the SAM image encoder with torch.compile (CUDA with Triton "
               "only; the first encode of each model is slow while it compiles; applies after a restart)", "checkbox"),
    OptionSpec("sam_model_cache_size", 1, "SAM models kept loaded", "slider", {"minimum": 1, "maximum": 4, "step": 1}),
    OptionSpec("sam_embedding_cache_entries", 8, "Image embeddings kept (clicks on a cached image skip the encoder)",
               "slider", {"minimum": 1, "maximum": 64, "step": 1}),
    OptionSpec("sam_max_objects", 20, "Text prompts: most objects segmented per picture (the most confident boxes)",
               "slider", {"minimum": 1, "maximum": 200, "step": 1}),
    OptionSpec("sam_api_busy_timeout", 30, "HTTP API: seconds a request waits while a generation or another job "
               "holds the GPU, before it is answered 503 with Retry-After", "slider",
               {"minimum": 1, "maximum": 600, "step": 1}),
    OptionSpec("sam_offload_to_cpu", False, "Move SAM to the CPU between uses (saves VRAM for generation)", "checkbox"),
    OptionSpec("sam_unload_after_idle_minutes", 0, "Unload Segment Anything's models after this many idle minutes "
               "(0: never)", "slider", {"minimum": 0, "maximum": 240, "step": 1}),
    OptionSpec("sam_move_to_cpu_while_generating", False, "Move Segment Anything's models to the CPU whenever a "
               "generation starts (done anyway with --lowvram/--medvram, or when Forge is short of VRAM)", "checkbox"),
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


def tool_default_values(opts: Any) -> Dict[str, Any]:
    """The panel's tool defaults from the settings, by the names of ``ui.panel.ToolDefaults``."""

    def number(key: str, default: float) -> float:
        try:
            return float(read_option(opts, key, default))
        except (TypeError, ValueError):
            return default

    return dict(
        expand=int(number("sam_default_expand", 0)),
        feather=number("sam_default_feather", 0.0),
        fill_holes=bool(read_option(opts, "sam_default_fill_holes", False)),
        min_island=int(number("sam_default_min_island", 0)),
        auto_preview=bool(read_option(opts, "sam_auto_preview", True)),
    )


def engine_settings(opts: Any, cmd_opts: Any, models_path: Optional[str], extension_root: Optional[Path]) -> EngineSettings:
    """Command-line flags win over settings; the host's models/sam comes before the extension's."""
    user_dir = getattr(cmd_opts, "sam_model_dir", None) or read_option(opts, "sam_model_dir", "") or None
    defaults: List[Path] = []
    if models_path:
        defaults.append(Path(models_path) / "sam")
    if extension_root is not None:
        defaults.append(Path(extension_root) / "models" / "sam")
    device = getattr(cmd_opts, "sam_device", None) or read_option(opts, "sam_device", "auto")
    precision = str(getattr(cmd_opts, "sam_precision", None) or read_option(opts, "sam_precision", "auto")).lower()
    use_cpu = [str(v).lower() for v in (getattr(cmd_opts, "use_cpu", None) or [])]
    if "all" in use_cpu or "sam" in use_cpu:
        device = "cpu"
    return EngineSettings(
        user_model_dir=Path(user_dir).expanduser() if user_dir else None,
        default_model_dirs=tuple(defaults),
        device=str(device or "auto"),
        compile_encoder=bool(read_option(opts, "sam_compile_encoder", False)),
        precision=precision if precision in PRECISION_CHOICES else "auto",
        offload_to_cpu=bool(read_option(opts, "sam_offload_to_cpu", False)),
        unload_after_idle_minutes=_non_negative(read_option(opts, "sam_unload_after_idle_minutes", 0)),
        model_cache_size=int(read_option(opts, "sam_model_cache_size", 1)),
        embedding_cache_entries=int(read_option(opts, "sam_embedding_cache_entries", 8)),
        max_objects=int(read_option(opts, "sam_max_objects", 20)),
    )


def _non_negative(value: Any) -> float:
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return 0.0


def api_busy_timeout_s(opts: Any) -> float:
    """How long an HTTP request waits while a generation holds the GPU (at least a second)."""
    try:
        busy = float(read_option(opts, "sam_api_busy_timeout", 30))
    except (TypeError, ValueError):
        busy = 30.0
    return max(1.0, busy)
