"""The segmentation preprocessors of the host's ControlNet, found among the modules it has loaded.

Forge keeps a preprocessor registry in ``modules_forge.shared``; sd-webui-controlnet has a new
registry (``supported_preprocessor.Preprocessor``) and, in older versions, a table in
``global_state``. Nothing is imported, linked or copied from another extension: outside a WebUI
(or without ControlNet) nothing is found.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

__all__ = ["HostPreprocessor", "find_preprocessor"]


@dataclass(frozen=True)
class HostPreprocessor:
    """One preprocessor of the host: ``run(image, resolution)`` returns what the host's function does."""

    run: Callable[[Any, int], Any]
    source: str          # which registry it came from, for the log


def _module_ending(modules: Mapping[str, Any], suffix: str, attribute: str) -> Optional[Any]:
    for name, module in list(modules.items()):
        if module is not None and (name == suffix or name.endswith("." + suffix)) and hasattr(module, attribute):
            return module
    return None


def _forge_registry(modules: Mapping[str, Any]) -> Optional[Mapping[str, Any]]:
    shared = modules.get("modules_forge.shared")
    registry = getattr(shared, "supported_preprocessors", None) if shared is not None else None
    return registry if isinstance(registry, Mapping) else None


def _registry_call(preprocessor: Callable[..., Any]) -> Callable[[Any, int], Any]:
    def run(image, resolution: int):
        return preprocessor(image, resolution=resolution)

    return run


def _legacy_call(function: Callable[..., Any]) -> Callable[[Any, int], Any]:
    def run(image, resolution: int):
        return function(image, res=resolution)

    return run


def find_preprocessor(aliases: Sequence[str], modules: Optional[Mapping[str, Any]] = None) -> Optional[HostPreprocessor]:
    """The host's preprocessor under the first of ``aliases`` a registry knows: Forge's registry
    first, then sd-webui-controlnet's, then its legacy table. ``modules``: the loaded modules
    (``sys.modules`` by default)."""
    modules = sys.modules if modules is None else modules
    forge = _forge_registry(modules)
    if forge is not None:
        for alias in aliases:
            if alias in forge:
                return HostPreprocessor(_registry_call(forge[alias]), "forge")

    registry = _module_ending(modules, "supported_preprocessor", "Preprocessor")
    lookup = getattr(registry.Preprocessor, "get_preprocessor", None) if registry is not None else None
    if lookup is not None:
        for alias in aliases:
            try:
                preprocessor = lookup(alias)
            except Exception:  # another extension's registry must not break the tab
                preprocessor = None
            if preprocessor is not None:
                return HostPreprocessor(_registry_call(preprocessor), "sd-webui-controlnet")

    legacy = _module_ending(modules, "global_state", "cn_preprocessor_modules")
    if legacy is not None and isinstance(legacy.cn_preprocessor_modules, Mapping):
        table = legacy.cn_preprocessor_modules
        for alias in aliases:
            if callable(table.get(alias)):
                return HostPreprocessor(_legacy_call(table[alias]), "sd-webui-controlnet (legacy)")
    return None
