"""The blocking work behind the routes: decode, prompt, segment, encode the answer.

Routes call these methods through a worker thread (never on the event loop). The Engine
serialises model access, the detector included.
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
from typing import Any, Callable, ContextManager, Optional, Tuple

import numpy as np

from sd_webui_sam.api.codec import NotFoundError, SourcePolicy
from sd_webui_sam.errors import InvalidPromptError, SamUserError
from sd_webui_sam.images import image_content_key

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
