"""The standalone app: the same panel as in the WebUI, minus the Stable Diffusion controls.

    python -m sd_webui_sam app [--host 127.0.0.1] [--port 7860] [--model-dir DIR] [--device auto]
        [--precision auto]

Served by one FastAPI app: the panel at ``/`` and the HTTP API under ``/sam``.

SIGTERM (or Ctrl-C) ends the server within a few seconds even during a job: the panel's jobs see
the shutdown as the host's Interrupt and stop at their next step, open requests get
SHUTDOWN_GRACE_S to finish, and a job that does not stop in time is abandoned with the process.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, List, Optional

from sd_webui_sam import metrics
from sd_webui_sam.devices import DEVICE_CHOICES, PRECISION_CHOICES
from sd_webui_sam.engine import Engine
from sd_webui_sam.settings import DEFAULT_MAX_OBJECTS, EngineSettings

__all__ = ["LocalPageMiddleware", "build_blocks", "build_parser", "create_app", "engine_from_args", "local_theme", "main",
           "make_engine", "serve"]

PACKAGE_ROOT = Path(__file__).resolve().parent
EXTENSION_ROOT = PACKAGE_ROOT.parent
#: The panel's scripts: all of this folder's, in name order, as the WebUI loads an extension's javascript/.
FRONT_END_DIR = EXTENSION_ROOT / "javascript"
STYLE_CSS = EXTENSION_ROOT / "style.css"
PANEL_PREFIX = "sam"

LOG = logging.getLogger("sd_webui_sam.app")

#: Seconds open requests get after SIGTERM; the process is gone at most EXIT_DEADLINE_S after it.
SHUTDOWN_GRACE_S = 2.0
EXIT_DEADLINE_S = 5.0

#: System fonts: gradio's default theme imports Google Fonts, a request off this machine on every load.
LOCAL_FONTS = ("ui-sans-serif", "system-ui", "sans-serif")
LOCAL_MONO_FONTS = ("ui-monospace", "Consolas", "monospace")
#: What gradio's page template loads from elsewhere (an iframe-resizer script from a CDN, font
#: preconnects): the app is a local tool and must work, and stay quiet, offline.
EXTERNAL_TAGS = re.compile(
    rb'<script[^>]*\ssrc="https?://[^"]*"[^>]*>\s*</script>|<link[^>]*\shref="https?://[^"]*"[^>]*>', re.IGNORECASE
)


def local_theme():
    import gradio as gr  # heavy: loaded only when the page is built, not for --help or the batch command

    return gr.themes.Default(font=LOCAL_FONTS, font_mono=LOCAL_MONO_FONTS)


class LocalPageMiddleware:
    """ASGI middleware: the HTML pages it serves lose their external scripts and links.

    Pure ASGI (not BaseHTTPMiddleware) so gradio's streamed event replies pass through untouched;
    only ``text/html`` bodies are buffered and rewritten.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or scope.get("method") != "GET":
            await self.app(scope, receive, send)
            return
        start: dict = {}
        chunks: List[bytes] = []

        async def capture(message):
            if message["type"] == "http.response.start":
                headers = dict((k.lower(), v) for k, v in message.get("headers", []))
                if b"text/html" not in headers.get(b"content-type", b""):
                    start["passthrough"] = True
                    await send(message)
                    return
                start["message"] = message
                return
            if start.get("passthrough"):
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = EXTERNAL_TAGS.sub(b"", b"".join(chunks))
            headers = [(k, v) for k, v in start["message"].get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode("ascii")))
            await send({**start["message"], "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, capture)


def build_blocks(engine: Any, shutdown: Optional[threading.Event] = None):
    """The gradio page; its JavaScript runs from the page's load event (no WebUI to inject it).
    ``shutdown``: set when the server is stopping; the panel's jobs take it as the host's Interrupt."""
    import gradio as gr  # heavy: loaded only when the page is built

    from sd_webui_sam.compat import gradio_compat as grc  # imports gradio: likewise
    from sd_webui_sam.ui.panel import PanelOptions, build_panel  # imports gradio: likewise

    with gr.Blocks(title="Segment Anything", css=STYLE_CSS.read_text(encoding="utf-8"), analytics_enabled=False,
                   theme=local_theme()) as blocks:
        gr.Markdown("## Segment Anything")
        build_panel(PanelOptions(prefix=PANEL_PREFIX, engine=lambda: engine, accordion=False,
                                 host_interrupted=shutdown.is_set if shutdown is not None else None))
        scripts = "\n".join(path.read_text(encoding="utf-8") for path in sorted(FRONT_END_DIR.glob("*.js")))
        grc.on_load(blocks, "() => {\n" + scripts + "\n}")
    return blocks


def create_app(engine: Any, shutdown: Optional[threading.Event] = None):
    """FastAPI app with the API routes and the panel mounted at ``/``."""
    import gradio as gr  # heavy: loaded only when the server is made
    from fastapi import FastAPI  # heavy: likewise

    app = FastAPI(title="Segment Anything")
    try:
        from sd_webui_sam.api import mount_api  # needs fastapi, which may be missing: the panel works without
    except ImportError as error:
        LOG.warning("HTTP API not available: %s", error)
    else:
        # Only the standalone server exposes /metrics: inside the WebUI the host owns monitoring.
        mount_api(app, engine, metrics=metrics.ApiMetrics() if metrics.available() else None)
    blocks = build_blocks(engine, shutdown)
    blocks.queue()
    app.add_middleware(LocalPageMiddleware)
    return gr.mount_gradio_app(app, blocks, path="/")


def make_engine(model_dir: Optional[str], device: str = "auto", max_objects: int = DEFAULT_MAX_OBJECTS,
                gdino_model_dir: Optional[str] = None, unload_after_idle_minutes: float = 0.0,
                compile_encoder: bool = False, precision: str = "auto") -> Engine:
    return Engine(EngineSettings(
        user_model_dir=Path(model_dir).expanduser() if model_dir else None,
        gdino_user_model_dir=Path(gdino_model_dir).expanduser() if gdino_model_dir else None,
        default_model_dirs=(EXTENSION_ROOT / "models" / "sam",),
        device=device,
        precision=precision,
        max_objects=max_objects,
        unload_after_idle_minutes=unload_after_idle_minutes,
        compile_encoder=compile_encoder,
    ))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sd_webui_sam app", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--model-dir", default=None, help="directory with SAM checkpoints (default: models/sam)")
    parser.add_argument("--gdino-model-dir", default=None,
                        help="directory with GroundingDINO checkpoints, searched first (default: models/grounding-dino)")
    parser.add_argument("--device", default="auto", choices=list(DEVICE_CHOICES), help="where SAM runs")
    parser.add_argument("--precision", default="auto", choices=list(PRECISION_CHOICES),
                        help="the image encoders' precision (default auto: bf16 or fp16 on an NVIDIA GPU, fp32 on the "
                             "CPU; bf16 also runs on the CPU); the mask decoder always runs in fp32")
    parser.add_argument("--max-objects", type=int, default=DEFAULT_MAX_OBJECTS,
                        help=f"most objects a text prompt segments per picture (default {DEFAULT_MAX_OBJECTS})")
    parser.add_argument("--unload-after-idle", type=float, default=0.0, metavar="MINUTES",
                        help="unload the models after this many minutes without use (default 0: never)")
    parser.add_argument("--compile-encoder", action="store_true",
                        help="torch.compile the image encoder (CUDA with Triton only; elsewhere it runs as usual)")
    return parser


def engine_from_args(args: argparse.Namespace) -> Engine:
    """The engine the parsed flags ask for."""
    return make_engine(args.model_dir, args.device, args.max_objects, args.gdino_model_dir,
                       max(0.0, args.unload_after_idle), compile_encoder=args.compile_encoder,
                       precision=args.precision)


def _exit_after(seconds: float) -> None:
    """Ends the process after ``seconds`` unless it ended before: a job thread that ignores the
    interrupt (inside one long model call) must not keep a stopped server alive."""
    def wait_then_exit() -> None:
        time.sleep(seconds)
        LOG.warning("A job did not stop within %.0f s of the shutdown; exiting without it.", seconds)
        logging.shutdown()
        os._exit(1)

    threading.Thread(target=wait_then_exit, name="sam-exit-deadline", daemon=True).start()


def serve(app: Any, host: str, port: int, shutdown: threading.Event) -> None:
    """uvicorn, with SIGTERM/SIGINT also setting ``shutdown`` and bounding how long exiting takes."""
    import uvicorn  # heavy and server-only: not needed to build the app in tests

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if not shutdown.is_set():
                shutdown.set()
                _exit_after(EXIT_DEADLINE_S)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    Server(config).run()


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # gradio talks to its own server through httpx, which logs every such request at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    engine = engine_from_args(args)
    shutdown = threading.Event()
    app = create_app(engine, shutdown)
    print(f"Segment Anything: http://{args.host}:{args.port}/  (models: {', '.join(map(str, engine.settings.model_dirs()))})")
    serve(app, args.host, args.port, shutdown)
    return 0
