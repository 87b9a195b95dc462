"""The WebUI's Interrupt button, as a flag long jobs of ours can poll."""
from __future__ import annotations

import sys
from typing import Any, Mapping, Optional

__all__ = ["webui_interrupted"]


def webui_interrupted(modules: Optional[Mapping[str, Any]] = None) -> bool:
    """``modules.shared.state.interrupted``, read from the modules the host has loaded (nothing is
    imported, so outside a WebUI this is simply False)."""
    shared = (sys.modules if modules is None else modules).get("modules.shared")
    state = getattr(shared, "state", None)
    return bool(getattr(state, "interrupted", False))
