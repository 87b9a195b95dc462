"""The blocking work behind the routes: decode, prompt, segment, encode the answer.

Routes call these methods through a worker thread (never on the event loop). The Engine
serialises model access; the detector, which has no such guarantee, is serialised here.
Nothing here keeps per-request state on ``self`` except the bounded image store, whose
entries are immutable arrays keyed by their content, so concurrent requests on different
images cannot see each other's data.
"""
from __future__ import annotations

import contextlib
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, List, Optional, Sequence, Tuple

import numpy as np

from sd_webui_sam.api import codec
from sd_webui_sam.api.codec import NotFoundError, SourcePolicy
from sd_webui_sam.errors import InvalidPromptError, SamUserError
from sd_webui_sam.images import image_content_key
from sd_webui_sam.prompts import check_caption

#: Upper bound on K objects x C candidates x H x W full-resolution mask pixels one request
#: may make the engine produce (bool bytes); beyond it the request is refused, not attempted.
MAX_MASK_PIXELS = 1_500_000_000


class NotImplementedYetError(SamUserError):
    http_status = 501


class ServiceUnavailableError(SamUserError):
    http_status = 503


class BusyError(ServiceUnavailableError):
    """The GPU is held by another job for longer than a request may wait; try again later."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


@dataclass
class ApiSettings:
    """What a server owner decides about the API (filled by the host adapters)."""

    source_policy: SourcePolicy = field(default_factory=SourcePolicy)
    #: Folders the batch route may read from and write to; empty disables /sam/v2/batch.
    batch_roots: Tuple[Path, ...] = ()
    image_store_entries: int = 32
    image_store_bytes: int = 512 * 1024 * 1024
    #: Seconds a request waits for the host's GPU lock (A1111's queue_lock) while another job
    #: (a generation, an AutoSAM run) holds it, before answering 503 with Retry-After.
    busy_timeout_s: float = 30.0


class ImageStore:
    """Decoded images by id (a content hash), least recently used first out, bounded in bytes."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self._max_entries = max(1, max_entries)
        self._max_bytes = max_bytes
        self._images: "OrderedDict[str, np.ndarray]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, image: np.ndarray) -> str:
        image_id = image_content_key(image)
        frozen = np.array(image, copy=True)
        frozen.setflags(write=False)
        with self._lock:
            if image_id in self._images:
                self._images.move_to_end(image_id)
                return image_id
            self._images[image_id] = frozen
            self._bytes += frozen.nbytes
            while len(self._images) > 1 and (len(self._images) > self._max_entries or self._bytes > self._max_bytes):
                _, evicted = self._images.popitem(last=False)
                self._bytes -= evicted.nbytes
        return image_id

    def get(self, image_id: Any) -> np.ndarray:
        if not isinstance(image_id, str) or not re.fullmatch(r"[0-9a-f]{32}", image_id):
            raise InvalidPromptError("image_id must be the 32-character id returned by /sam/v2/images.")
        with self._lock:
            image = self._images.get(image_id)
            if image is None:
                raise NotFoundError("Unknown or expired image_id; send the image again (POST /sam/v2/images).")
            self._images.move_to_end(image_id)
            return image

    def delete(self, image_id: str) -> bool:
        with self._lock:
            image = self._images.pop(image_id, None)
            if image is not None:
                self._bytes -= image.nbytes
            return image is not None

    def __len__(self) -> int:
        with self._lock:
            return len(self._images)


def check_mask_budget(objects: int, candidates: int, shape: Tuple[int, int]) -> None:
    if objects * candidates * shape[0] * shape[1] > MAX_MASK_PIXELS:
        raise InvalidPromptError(
            f"{objects} objects x {candidates} candidates at {shape[1]}x{shape[0]} is too much for one request; "
            "send fewer boxes, turn multimask off, or use a smaller image."
        )


@dataclass
class Detection:
    box: Tuple[float, float, float, float]
    phrase: str
    score: float

    @property
    def has_area(self) -> bool:
        """False for a box clamped to a line (it lay wholly outside the picture): nothing to segment."""
        return self.box[2] - self.box[0] >= 1 and self.box[3] - self.box[1] >= 1


class DetectorAccess:
    """GroundingDINO for the API and batch: the engine's detector store (the one cache), or a
    ``provider(name) -> detector`` a host or a test supplies, serialised by one lock."""

    def __init__(self, provider: Optional[Callable[[Optional[str]], Any]] = None, lock: Optional[threading.Lock] = None,
                 engine: Any = None):
        self._provider = provider
        self._lock = lock or threading.Lock()
        self._engine = engine

    def bind(self, engine: Any) -> "DetectorAccess":
        """Use ``engine``'s detector when no provider or engine was given (SamApi binds its engine)."""
        if self._provider is None and self._engine is None:
            self._engine = engine
        return self

    def _raw(self, image: np.ndarray, caption: str, model: Optional[str], box_threshold: float,
             text_threshold: float, like_reference: bool) -> List[Any]:
        # only a reference-style request passes the flag, so a provider's detector that has
        # no such mode still serves the v2 rule
        extra = {"like_reference": True} if like_reference else {}
        if self._provider is not None:
            with self._lock:
                detector = self._provider(model)
                return list(detector.detect(image, caption, box_threshold=box_threshold, text_threshold=text_threshold,
                                            **extra))
        if self._engine is None or not hasattr(self._engine, "detect"):
            raise ServiceUnavailableError("GroundingDINO is not available on this server (no engine to run it).")
        return list(self._engine.detect(model, image, caption, box_threshold, text_threshold, **extra))

    def detect(self, image: np.ndarray, text: str, *, model: Optional[str], box_threshold: float,
               text_threshold: float = 0.25, like_reference: bool = False) -> List[Detection]:
        """Detections in image pixels, clamped to the image.

        like_reference: the reference extension's boxes, order and phrase strings (see
        ``Detector.detect``); a box lying wholly outside the image is then kept (clamped to
        an edge) so that box indices stay the reference's; otherwise it is dropped.
        """
        caption = check_caption(text)
        height, width = image.shape[:2]
        raw = self._raw(image, caption, model, box_threshold, text_threshold, like_reference)
        detections = []
        for item in raw:
            box = getattr(item, "box", None)
            if box is None:
                box = getattr(item, "box_xyxy", None)
            if box is None and isinstance(item, dict):
                box = item["box"]
            x1, y1, x2, y2 = (float(v) for v in box)
            # GroundingDINO boxes can stick out of the image; SAM wants them inside.
            x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
            y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
            if (x2 - x1 < 1 or y2 - y1 < 1) and not like_reference:
                continue
            phrase = getattr(item, "phrase", None) if not isinstance(item, dict) else item.get("phrase")
            score = getattr(item, "score", None) if not isinstance(item, dict) else item.get("score")
            detections.append(Detection((x1, y1, x2, y2), str(phrase or ""), float(score if score is not None else 0.0)))
        return detections


class GpuGate:
    """The host's GPU lock, waited for at most ``timeout`` seconds, knowing which of our jobs holds it.

    A long job (AutoSAM on a big picture) holds the lock for minutes; a short request must
    not queue silently behind it, so it gets a 503 that says what is running and when to retry.
    """

    def __init__(self, lock: Optional[ContextManager], timeout: float) -> None:
        self._lock = lock
        self._timeout = max(0.0, float(timeout))
        self._holder: Optional[Tuple[str, float]] = None

    @contextlib.contextmanager
    def hold(self, what: str):
        if self._lock is None:
            yield
            return
        acquire = getattr(self._lock, "acquire", None)
        if acquire is None:  # a bare context manager cannot be waited for with a bound
            with self._lock:
                yield
            return
        if not self._acquire_within(acquire):
            raise self._busy()
        self._holder = (what, time.monotonic())
        try:
            yield
        finally:
            self._holder = None
            self._lock.release()

    #: How often a lock without a timed acquire is tried again.
    POLL_S = 0.05

    def _acquire_within(self, acquire: Callable[..., bool]) -> bool:
        """Acquire in at most ``timeout`` seconds. A1111's and Forge's ``queue_lock`` is a FIFOLock
        whose ``acquire`` takes ``blocking`` only, so it is tried without blocking until then."""
        try:
            return bool(acquire(timeout=self._timeout))
        except TypeError:
            pass
        deadline = time.monotonic() + self._timeout
        while not acquire(blocking=False):
            if time.monotonic() >= deadline:
                return False
            time.sleep(self.POLL_S)
        return True

    def _busy(self) -> BusyError:
        holder = self._holder
        if holder is None:
            running = "The WebUI is busy with another job (an image generation or another extension)"
            retry = self._timeout or 10
        else:
            elapsed = time.monotonic() - holder[1]
            running = f"The GPU is busy with {holder[0]}, running for {elapsed:.0f} s"
            retry = max(self._timeout, 5.0)
        return BusyError(f"{running}; this request waited {self._timeout:g} s. Try again later.", int(retry + 0.5))


def clock() -> float:
    return time.perf_counter()
