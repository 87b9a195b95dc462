"""HTTP API: the reference extension's ``/sam/*`` routes, drop-in compatible, plus ``/sam/v2/*``.

Hosts call :func:`mount_api` once: the WebUI from ``on_app_started`` (with or without
``--nowebui``), the standalone server on its own FastAPI app.
"""
from __future__ import annotations

from typing import Any, Callable, ContextManager, Optional

from fastapi import Depends

from sd_webui_sam.api.auth import Credentials, make_auth_dependency
from sd_webui_sam.api.codec import SourcePolicy
from sd_webui_sam.api.operations import SamApi
from sd_webui_sam.api.routes import _MountGuard, build_metrics_router, build_reference_router, build_v2_router
from sd_webui_sam.api.service import ApiSettings
from sd_webui_sam.engine import Engine

__all__ = ["mount_api", "ApiSettings", "SourcePolicy", "SamApi"]


def mount_api(app: Any, engine: Engine, *, auth: Credentials = None, prefix: str = "/sam",
              settings: Optional[ApiSettings] = None, gpu_lock: Optional[ContextManager] = None,
              autosam: Any = None, metrics: Any = None,
              metrics_path: str = "/metrics", batch_interrupt: Optional[Callable[[], bool]] = None,
              find_preprocessor: Optional[Callable[[Any], Any]] = None) -> SamApi:
    """Add our routes to ``app`` and return the :class:`SamApi` that serves them.

    auth: the WebUI's ``--api-auth`` string ("user:pass,...") or a mapping; None = open.
    gpu_lock: the host's GPU lock (A1111 ``modules.call_queue.queue_lock``) held around model work.
    metrics: an :class:`sd_webui_sam.metrics.ApiMetrics` (standalone server) to record and expose
    at ``metrics_path``.
    batch_interrupt: polled between files of /sam/v2/batch (the WebUI maps shared.state.interrupted).
    find_preprocessor: how AutoSAM's routes reach the host's ControlNet segmentation preprocessors
    (the WebUI adapter hands in compat.controlnet_preprocessors.find_preprocessor); None: none.
    Mounting the same app twice returns the first :class:`SamApi` without adding routes again.
    """
    with _MountGuard.lock:
        existing = getattr(app.state, "sd_webui_sam_api", None)
        if existing is not None:
            return existing
        extra = {"find_preprocessor": find_preprocessor} if find_preprocessor is not None else {}
        api = SamApi(engine, settings, gpu_lock=gpu_lock, autosam=autosam, metrics=metrics, **extra)
        dependency = make_auth_dependency(auth)
        dependencies = [Depends(dependency)] if dependency is not None else []
        prefix = "/" + prefix.strip("/")
        app.include_router(build_reference_router(api, dependencies), prefix=prefix)
        app.include_router(build_v2_router(api, dependencies, batch_interrupt=batch_interrupt), prefix=prefix + "/v2")
        if metrics is not None:
            app.include_router(build_metrics_router(api, dependencies, metrics_path))
        app.state.sd_webui_sam_api = api
        return api
