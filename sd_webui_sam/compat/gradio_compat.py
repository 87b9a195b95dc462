"""The few gradio spellings that differ between 3.41 (A1111) and 4.x (Forge 2).

Everything else in the panel uses the API the two versions share; any new difference goes here.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import gradio as gr

__all__ = ["FAST_EVENT_QUEUE", "GRADIO_MAJOR", "IS_GRADIO_4", "current_root_block", "gallery", "image_input", "image_output",
           "js_kwargs", "listen", "on_load", "update"]

def _major(version: str) -> int:
    try:
        return int(version.split(".", 1)[0])
    except ValueError:
        return 3


GRADIO_MAJOR: int = _major(getattr(gr, "__version__", "3"))
IS_GRADIO_4: bool = GRADIO_MAJOR >= 4
#: ``queue=`` for events that must answer fast (a click's preview). gradio 3's queue opens a
#: websocket and does a handshake per event, and the standalone app's queue runs one event at a
#: time; off the queue it is one HTTP call. gradio 4's queue is one message on an open stream.
FAST_EVENT_QUEUE: Optional[bool] = None if IS_GRADIO_4 else False


def image_input(label: str, *, elem_id: str, image_mode: str = "RGB", **kwargs: Any) -> gr.Image:
    """An upload-only image whose value is a PIL image."""
    if IS_GRADIO_4:
        kwargs["sources"] = ["upload", "clipboard"]
        kwargs.setdefault("format", "png")
    else:
        kwargs["source"] = "upload"
    return gr.Image(label=label, elem_id=elem_id, type="pil", image_mode=image_mode, interactive=True, **kwargs)


def image_output(label: str, *, elem_id: str, image_mode: Optional[str] = None, **kwargs: Any) -> gr.Image:
    """A read-only image, always sent to the browser as lossless PNG (gradio 4 defaults to webp)."""
    if IS_GRADIO_4:
        kwargs["format"] = "png"
        kwargs.setdefault("show_download_button", True)
    else:
        kwargs.setdefault("show_download_button", True)
    if image_mode is not None:
        kwargs["image_mode"] = image_mode
    return gr.Image(label=label, elem_id=elem_id, type="pil", interactive=False, **kwargs)


def gallery(label: str, *, elem_id: str, columns: int = 3, **kwargs: Any) -> gr.Gallery:
    if IS_GRADIO_4:
        kwargs.setdefault("format", "png")
        kwargs.setdefault("allow_preview", False)
    else:
        kwargs.setdefault("allow_preview", False)
    return gr.Gallery(label=label, elem_id=elem_id, columns=columns, **kwargs)


def js_kwargs(js: Optional[str]) -> dict:
    """The keyword an event listener takes for its browser-side function."""
    if not js:
        return {}
    return {"js": js} if IS_GRADIO_4 else {"_js": js}


def listen(
    event: Callable,
    fn: Optional[Callable],
    inputs: Sequence = (),
    outputs: Sequence = (),
    *,
    js: Optional[str] = None,
    show_progress: Any = None,
    queue: Optional[bool] = None,
) -> Any:
    """``component.click(...)`` and friends, with the js keyword spelt for this gradio."""
    kwargs: dict = dict(js_kwargs(js))
    if show_progress is not None:
        if IS_GRADIO_4 and show_progress is False:
            kwargs["show_progress"] = "hidden"
        elif IS_GRADIO_4 and show_progress is True:
            kwargs["show_progress"] = "full"
        else:
            kwargs["show_progress"] = show_progress
    if queue is not None:
        kwargs["queue"] = queue
    return event(fn, inputs=list(inputs), outputs=list(outputs), **kwargs)


def update(**kwargs: Any) -> Any:
    """``gr.update`` exists in both versions; ``Component.update`` only in 3.x."""
    return gr.update(**kwargs)


def on_load(blocks: gr.Blocks, js: str) -> None:
    """Run a browser-side script once the page has loaded (the standalone app's way to ship its JS)."""
    blocks.load(None, inputs=None, outputs=None, **js_kwargs(js))


def current_root_block() -> Optional[Any]:
    """The ``gr.Blocks`` being built right now, or None outside any."""
    try:
        from gradio.context import Context  # gradio's internal module: absent from other versions
    except ImportError:  # pragma: no cover - both supported versions have it
        return None
    return getattr(Context, "root_block", None)
