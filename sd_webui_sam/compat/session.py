"""The per-process object of the WebUI integration.

``HostSession`` owns the one ``Engine`` and remembers the img2img components the panel sends to.
``host_session()`` returns that one object; the WebUI re-imports ``scripts/`` on "Reload UI" but
not this package, so the engine and its caches survive a reload.
"""
from __future__ import annotations

import functools
import threading
from typing import Any, Callable, Dict, List, Optional

from sd_webui_sam.engine import Engine

__all__ = ["INPAINT_TARGET_IDS", "HostSession", "host_session"]

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


class HostSession:
    """One per process: the engine, and what the host showed us while it built its tabs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engine: Any = None
        self._settings_factory: Optional[Callable[[], Any]] = None
        self._wire_send: Optional[Callable[[Any, Dict[str, Any]], None]] = None
        self.inpaint_targets: Dict[str, Any] = {}
        self.inpaint_targets_root: Any = None
        self.pending_send_panels: List[Any] = []  # panels built before img2img's inpaint images

    def configure(self, settings_factory: Callable[[], Any],
                  wire_send: Optional[Callable[[Any, Dict[str, Any]], None]] = None) -> None:
        """How to build the engine's settings (read when the engine is first needed), and how to
        wire a panel's send button to img2img's components (``wire_send(panel, targets)``, from the
        UI: handed in, so that this package never imports it); None keeps the one given before."""
        self._settings_factory = settings_factory
        if wire_send is not None:
            self._wire_send = wire_send

    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                settings = self._settings_factory() if self._settings_factory else None
                self._engine = Engine(settings)
            return self._engine

    def engine_if_created(self) -> Optional[Engine]:
        """The engine, or None before anything needed it (then no model is loaded either)."""
        with self._lock:
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
        if getattr(panel, "_sam_send_wired", False) or self._wire_send is None:
            return
        self._wire_send(panel, dict(self.inpaint_targets))
        panel._sam_send_wired = True


@functools.lru_cache(maxsize=None)
def host_session() -> HostSession:
    return HostSession()
