"""Making room for the host's generation: our models leave the GPU when the host is short of VRAM.

A1111 says so once, on its command line (``--lowvram``, ``--medvram``, ``--medvram-sdxl`` for an
SDXL model): then the models move to the CPU before every generation. Forge decides as it goes:
its ``backend.memory_management.free_memory(memory_required, device)`` runs whenever it needs room
on the GPU for its own models, so it is wrapped to move ours off first when the free memory is
below what Forge asks for (its low/no-VRAM modes ask for everything). The setting
``sam_move_to_cpu_while_generating`` moves them before every generation in either host. The next
use of a model brings it back.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional

from sd_webui_sam.compat.options import read_option

__all__ = ["FORGE_HOOK_MARK", "before_generation", "install_forge_hook", "short_of_vram"]

logger = logging.getLogger(__name__)

#: Set on Forge's wrapped ``free_memory``, so a "Reload UI" does not wrap it twice.
FORGE_HOOK_MARK = "_sam_moves_models_to_cpu"
_FORGE_SHORT_STATES = ("LOW_VRAM", "NO_VRAM")

#: Returns the engine if one was created, without creating it (no models, nothing to move).
EngineLookup = Callable[[], Optional[Any]]


def short_of_vram(cmd_opts: Any, sd_model: Any = None, memory_management: Any = None) -> bool:
    """Whether the host runs in a mode that keeps VRAM tight: A1111's flags, Forge's VRAM state."""
    if getattr(cmd_opts, "lowvram", False) or getattr(cmd_opts, "medvram", False):
        return True
    if getattr(cmd_opts, "medvram_sdxl", False) and getattr(sd_model, "is_sdxl", False):
        return True
    if memory_management is not None:
        state = getattr(getattr(memory_management, "vram_state", None), "name", "")
        return state in _FORGE_SHORT_STATES or bool(getattr(memory_management, "ALWAYS_VRAM_OFFLOAD", False))
    return False


def before_generation(engine: EngineLookup, opts: Any, cmd_opts: Any, sd_model: Any = None) -> Optional[str]:
    """The script's ``before_process``: move our models to the CPU when asked to or the host is
    short of VRAM. Returns a line for the log when it freed something."""
    loaded = engine()
    if loaded is None:
        return None
    wanted = bool(read_option(opts, "sam_move_to_cpu_while_generating", False)) or short_of_vram(
        cmd_opts, sd_model, _forge_memory_management())
    if not wanted:
        return None
    try:
        freed = loaded.move_to_cpu()
    except Exception as error:  # the generation must go on whatever happens here
        return f"could not move its models to the CPU: {error}"
    return f"moved its models to the CPU for the generation ({freed / 2**20:.0f} MiB of VRAM freed)" if freed else None


def install_forge_hook(engine: EngineLookup) -> bool:
    """In Forge, wrap ``memory_management.free_memory`` (see the module's text). False elsewhere."""
    memory_management = _forge_memory_management()
    if memory_management is None:
        return False
    original = memory_management.free_memory
    if getattr(original, FORGE_HOOK_MARK, False):
        return True

    def free_memory(memory_required, device, *args, **kwargs):
        loaded = engine()
        if loaded is not None and getattr(device, "type", str(device)) != "cpu":
            try:
                short = memory_management.get_free_memory(device) < memory_required
            except Exception as error:  # an odd device must never break the host's own memory management
                logger.debug("Segment Anything: no free-memory figure for %s: %s", device, error)
                short = False
            if short or short_of_vram(None, None, memory_management):
                try:
                    loaded.move_to_cpu()
                except Exception as error:  # Forge's own clean-up must run regardless
                    logger.warning("Segment Anything: could not move its models to the CPU: %s", error)
        return original(memory_required, device, *args, **kwargs)

    setattr(free_memory, FORGE_HOOK_MARK, True)
    free_memory.__wrapped__ = original  # type: ignore[attr-defined]
    memory_management.free_memory = free_memory
    return True


def _forge_memory_management() -> Optional[Any]:
    try:
        from backend import memory_management  # Forge only (A1111 has no ``backend`` package)
    except ImportError:
        return None
    return memory_management if hasattr(memory_management, "free_memory") else None
