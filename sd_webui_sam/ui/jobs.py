"""Long jobs in the panel: the Stop signal each tab owns, and progress shown through gr.Progress.

A tab makes one :class:`StopSignal`; its Stop button (wired off the queue, so it answers while the
job holds the queue's worker) sets it, and ``start()`` gives the job its interrupt callable: that
Stop, or the host's Interrupt (the WebUI's, or the standalone app's shutdown) turning on during
the run.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Optional

from sd_webui_sam.ui import handlers

__all__ = ["StopSignal", "guarded_with_progress"]


class StopSignal:
    """Set by the Stop button; cleared when a run starts. One per built tab."""

    def __init__(self, host_interrupted: Optional[Callable[[], bool]] = None) -> None:
        self.event = threading.Event()
        self.host_interrupted = host_interrupted

    def start(self) -> Callable[[], bool]:
        """The interrupt callable for one run: the Stop button, or the host's interrupt turning on."""
        self.event.clear()
        host = self.host_interrupted
        was_on = bool(host()) if host is not None else False  # a stale flag from an earlier generation

        def interrupted() -> bool:
            return self.event.is_set() or (host is not None and not was_on and bool(host()))

        return interrupted

    def stop(self) -> None:
        self.event.set()


def guarded_with_progress(function: Callable[..., Any], failure: Callable[[str], Any]) -> Callable[..., Any]:
    """``handlers.guarded`` for a handler whose first parameter is ``progress=gr.Progress()``
    (gradio looks for it among the positional parameters only, through ``__wrapped__``)."""
    run = handlers.guarded(function, failure)
    run.__wrapped__ = function
    return run
