"""The panel's memory line: what Segment Anything has loaded and how much memory it takes
(``Engine.memory``), with a "Free SAM memory" button. The line is re-read whenever the panel's
status or the text prompt's status changes, which is after every load, answer and device switch.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Sequence

import gradio as gr

from sd_webui_sam.compat import gradio_compat as grc
from sd_webui_sam.ui import handlers
from sd_webui_sam.ui.elements import elem, status_html

__all__ = ["build", "memory_text", "wire"]


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


def memory_text(memory: Mapping[str, Any]) -> str:
    """'Loaded: SAM ViT-B 358 MiB (cpu), ... (412 MiB in all).' or 'Nothing loaded.'"""
    parts = [f"{item['label']} {_mib(item['bytes'])} ({item['device']})"
             for item in [*memory["models"], *memory["detectors"]]]
    embeddings = memory["embeddings"]
    if embeddings["entries"]:
        count = embeddings["entries"]
        parts.append(f"{count} image embedding{'s' if count != 1 else ''} {_mib(embeddings['bytes'])}")
    if not parts:
        return "Nothing loaded."
    return f"Loaded: {', '.join(parts)} ({_mib(memory['total_bytes'])} in all)."


def _line(engine: Callable[[], Any]) -> str:
    try:
        return status_html(memory_text(engine().memory()))
    except Exception as error:  # a broken set-up must not break the panel
        return status_html(f"Memory use unknown: {handlers.describe_failure(error)}", error=True)


def build(prefix: str, engine: Callable[[], Any]) -> Dict[str, Any]:
    with gr.Row():
        line = gr.HTML(_line(engine), elem_id=elem(prefix, "memory"), elem_classes=["sam-status", "sam-memory"])
        free = gr.Button("Free SAM memory", elem_id=elem(prefix, "free_memory"), size="sm", scale=0, min_width=150)
    return {"memory_line": line, "free_memory": free}


def wire(line: Any, free: Any, status: Any, refresh_after: Sequence[Any], engine: Callable[[], Any]) -> None:
    """``free`` unloads everything and says how much in ``status``; each of ``refresh_after``
    (status lines) re-reads the line when it changes."""

    def free_memory():
        freed = engine().unload()
        message = f"Freed {_mib(freed['total_bytes'])}." if freed["total_bytes"] else "Nothing was loaded."
        return _line(engine), status_html(message)

    def free_failure(message: str):
        return _line(engine), status_html(message, error=True)

    def refresh_memory_line():
        return _line(engine)

    grc.listen(free.click, handlers.guarded(free_memory, free_failure), [], [line, status], show_progress=False)
    for component in refresh_after:
        grc.listen(component.change, refresh_memory_line, [], [line], show_progress=False)
