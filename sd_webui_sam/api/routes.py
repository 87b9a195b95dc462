"""FastAPI routers: the reference-compatible ``/sam/*`` set and the ``/sam/v2/*`` set.

Handlers are ``async`` only to hand the blocking work to a worker thread; nothing blocking
runs on the event loop. Every error, FastAPI's own included, is a JSON answer with both
``detail`` (FastAPI's convention) and ``msg`` (the reference's key), the same text.
"""
from __future__ import annotations

import logging
import math
import threading
from typing import Any, Callable, Optional

from fastapi import APIRouter, Body, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from sd_webui_sam.api import models as m
from sd_webui_sam.api.operations import SamApi
from sd_webui_sam.api.service import clock
from sd_webui_sam.errors import OutOfMemoryError, SamUserError

log = logging.getLogger(__name__)


#: What the OpenAPI document says of our errors: one shape for all (FastAPI would otherwise
#: publish its own 422 body, a list under ``detail``, which our routes do not send).
ERROR_RESPONSES = {
    "4XX": {"model": m.ErrorResponse, "description": "A bad request: the message says what to change."},
    "5XX": {"model": m.ErrorResponse, "description": "The server could not answer (busy, out of memory, a bug)."},
}

#: Methods a client might try on a route; the others than a route's own answer 405.
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def error_response(status: int, message: str, headers: Optional[dict] = None, **extra: Any) -> JSONResponse:
    """Every error of our routes has this shape: ``detail`` and ``msg``, the same text."""
    return JSONResponse(status_code=status, content={"detail": message, "msg": message, **extra}, headers=headers)


def describe_validation_errors(errors: list) -> str:
    """FastAPI's list of body errors as one sentence: 'body.sam_model_name: str type expected; ...'."""
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "Invalid request: " + "; ".join(parts) + "."


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as text: pydantic 2 echoes the bad input in its errors,
    and a JSON answer cannot hold them (the 422 itself would fail and answer 500)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


class SamRoute(APIRoute):
    """Our routes answer FastAPI's own errors (422 validation, 401 from the auth dependency) in
    our shape too, without touching the host app's handlers for its other routes."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as error:
                errors = json_safe(jsonable_encoder(error.errors()))
                return error_response(422, describe_validation_errors(errors), errors=errors)
            except StarletteHTTPException as error:  # FastAPI's own body errors raise Starlette's class
                return error_response(error.status_code, str(error.detail), headers=getattr(error, "headers", None))

        return route_handler


def add_method_not_allowed(router: APIRouter) -> None:
    """A wrong method on one of our paths answers 405 with ``Allow``. Starlette does that by
    itself only when no later route takes the path: behind the WebUI's or the panel's catch-all
    mount at "/", the mount would answer 404."""
    allowed: dict = {}
    for route in list(router.routes):
        allowed.setdefault(route.path, set()).update(getattr(route, "methods", ()) or ())
    for path, methods in allowed.items():
        allow = ", ".join(sorted(methods - {"HEAD"}))
        others = [method for method in _METHODS if method not in methods]
        if others:
            router.add_api_route(path, _not_allowed(path, allow), methods=others, include_in_schema=False)


def _not_allowed(path: str, allow: str) -> Callable:
    async def not_allowed() -> JSONResponse:
        return error_response(405, f"{path} accepts {allow} only.", headers={"Allow": allow})

    return not_allowed


async def run_operation(api: SamApi, route: str, operation: Callable[..., Any], *args: Any, **kwargs: Any):
    """Run ``operation`` in a worker thread, turning user errors into 4xx and recording metrics."""
    start = clock()
    status = 200
    try:
        return await run_in_threadpool(operation, *args, **kwargs)
    except SamUserError as error:
        status = error.http_status
        retry_after = getattr(error, "retry_after", None)
        return error_response(status, str(error), headers={"Retry-After": str(retry_after)} if retry_after else None)
    except MemoryError:
        status = OutOfMemoryError.http_status
        return error_response(status, "The server ran out of memory for this request; send a smaller image or fewer prompts.")
    except Exception:
        status = 500
        log.exception("sd_webui_sam API: %s failed", route)
        return error_response(500, f"Internal error in {route}; the server log has the details.")
    finally:
        if api.metrics is not None:
            api.metrics.observe_request(route, status, clock() - start)


def build_reference_router(api: SamApi, dependencies: list) -> APIRouter:
    router = APIRouter(dependencies=dependencies, tags=["Segment Anything (reference-compatible)"], route_class=SamRoute,
                       responses=ERROR_RESPONSES)

    @router.get("/heartbeat", summary="Is the SAM API up?")
    async def heartbeat():
        return {"msg": "Success!"}

    @router.get("/sam-model", summary="SAM checkpoint file names (live list)")
    async def sam_model():
        return await run_operation(api, "/sam/sam-model", api.list_models)

    @router.post("/sam-predict", summary="Segment with points and/or GroundingDINO boxes; 3 candidates")
    async def sam_predict(payload: m.SamPredictRequest = Body(...)):
        return await run_operation(api, "/sam/sam-predict", api.sam_predict, payload)

    @router.post("/dino-predict", summary="GroundingDINO boxes for a text prompt")
    async def dino_predict(payload: m.DINOPredictRequest = Body(...)):
        return await run_operation(api, "/sam/dino-predict", api.dino_predict, payload)

    @router.post("/dilate-mask", summary="Grow a mask")
    async def dilate_mask(payload: m.DilateMaskRequest = Body(...)):
        return await run_operation(api, "/sam/dilate-mask", api.dilate_mask, payload)

    @router.post("/controlnet-seg", summary="AutoSAM semantic segmentation for ControlNet")
    async def controlnet_seg(payload: m.ControlNetSegRequest = Body(...), autosam_conf: m.AutoSAMConfig = Body(...)):
        return await run_operation(api, "/sam/controlnet-seg", api.autosam, "controlnet_seg", payload, autosam_conf)

    @router.post("/category-mask", summary="AutoSAM mask of semantic categories")
    async def category_mask(payload: m.CategoryMaskRequest = Body(...), autosam_conf: m.AutoSAMConfig = Body(...)):
        return await run_operation(api, "/sam/category-mask", api.autosam, "category_mask", payload, autosam_conf)

    add_method_not_allowed(router)
    return router


def build_v2_router(api: SamApi, dependencies: list, *, batch_interrupt: Optional[Callable[[], bool]] = None) -> APIRouter:
    router = APIRouter(dependencies=dependencies, tags=["Segment Anything v2"], route_class=SamRoute,
                       responses=ERROR_RESPONSES)

    @router.get("/health", summary="Models available and loaded, device, memory")
    async def health():
        return await run_operation(api, "/sam/v2/health", api.health)

    @router.post("/unload", summary="Free every loaded model and cached embedding; says what and how much")
    async def unload():
        return await run_operation(api, "/sam/v2/unload", api.unload)

    @router.get("/models", summary="SAM models with their labels")
    async def models():
        return await run_operation(api, "/sam/v2/models", api.models)

    @router.post("/images", summary="Send an image once; get an id to prompt it many times",
                 response_model=m.ImageUploadResponse)
    async def upload_image(payload: m.ImageUploadRequest = Body(...)):
        return await run_operation(api, "/sam/v2/images", api.upload_image, payload)

    @router.delete("/images/{image_id}", summary="Forget a stored image")
    async def delete_image(image_id: str):
        return await run_operation(api, "/sam/v2/images/{id}", api.delete_image, image_id)

    @router.post("/predict", summary="Segment with points, boxes, text and/or a previous mask",
                 response_model=m.PredictV2Response)
    async def predict(payload: m.PredictV2Request = Body(...)):
        return await run_operation(api, "/sam/v2/predict", api.predict_v2, payload)

    @router.post("/detect", summary="GroundingDINO boxes, phrases and scores", response_model=m.DetectV2Response)
    async def detect(payload: m.DetectV2Request = Body(...)):
        return await run_operation(api, "/sam/v2/detect", api.detect_v2, payload)

    @router.post("/segment-everything", summary="AutoSAM: every object of an image as masks (RLE/PNG) with scores")
    async def segment_everything(payload: m.SegmentEverythingRequest = Body(...)):
        return await run_operation(api, "/sam/v2/segment-everything", api.segment_everything_v2, payload)

    @router.post("/batch", summary="Segment a folder on the server (only inside the allowed folders)")
    async def batch(payload: m.BatchV2Request = Body(...)):
        return await run_operation(api, "/sam/v2/batch", api.batch, payload, interrupt=batch_interrupt)

    add_method_not_allowed(router)
    return router


def build_metrics_router(api: SamApi, dependencies: list, path: str) -> APIRouter:
    router = APIRouter(dependencies=dependencies, tags=["Segment Anything v2"])

    @router.get(path, summary="Prometheus metrics", include_in_schema=False)
    async def metrics():
        body, content_type = api.metrics.render(api.engine)
        return Response(content=body, media_type=content_type)

    return router


class _MountGuard:
    """Remembers which apps already carry our routes (on_app_started can run more than once)."""

    lock = threading.Lock()
