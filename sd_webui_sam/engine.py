"""The Engine: the one explicit cache object.

It owns the settings, the SAM model store (discovery + loaded models), the image-embedding
cache and the GroundingDINO store (text prompts -> boxes), and is what the panel, the HTTP API,
batch and AutoSAM call. Model use is serialised by
one lock, so ``segment`` is safe to call from several threads (gradio queue, API workers).
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

import numpy as np

from local_groundingdino.store import REFERENCE_MODEL_NAMES, GroundingDinoSettings, GroundingDinoStore
from sd_webui_sam import compiled_encoder, devices
from sd_webui_sam.embedding_cache import EmbeddingCache, dtype_name
from sd_webui_sam.errors import ModelNotFoundError, OutOfMemoryError, SamUserError
from sd_webui_sam.checkpoints import match_model_name, validate_model_name
from sd_webui_sam.model_store import LoadedModel, ModelDescription, ModelStore
from sd_webui_sam.predictor import Predictor
from sd_webui_sam.prompts import check_caption
from sd_webui_sam.settings import EngineSettings

logger = logging.getLogger(__name__)


class Engine:
    def __init__(self, settings: Optional[EngineSettings] = None, clock: Callable[[], float] = time.monotonic):
        """``clock`` (seconds) times the idle unload; a test hands in its own."""
        self.settings = settings if settings is not None else EngineSettings()
        self.embeddings = EmbeddingCache.from_settings(self.settings)
        self.store = ModelStore(self.settings, on_drop=self._forget_embeddings)
        self.detectors = _detector_store(self.settings, self.store.placement)
        # Re-entrant: a managed predictor's calls take it, and so does segment() around them.
        self._lock = threading.RLock()
        self._device_preference = self.settings.device
        # Idle unload: uses in progress and when the last one ended (None: nothing waits to be
        # unloaded). Always taken after the engine lock, never before it.
        self._clock = clock
        self._idle = threading.Condition()
        self._uses = 0
        self._last_used: Optional[float] = None
        self._idle_watcher: Optional[threading.Thread] = None
        #: (model name, device) -> images per encoder pass, once an out-of-memory error lowered it
        self._encode_batch_sizes: Dict[Tuple[str, str], int] = {}

    # ------------------------------------------------------------------ models

    @property
    def placement(self) -> devices.Placement:
        return self.store.placement

    @property
    def device_preference(self) -> str:
        """The device last asked for ("auto", "cuda", ...): the settings' until :meth:`set_device`."""
        return self._device_preference

    def list_models(self, refresh: bool = False) -> List[str]:
        return self.store.list_models(refresh=refresh)

    def describe(self, name: str) -> ModelDescription:
        return self.store.describe(name)

    def model_label(self, name: str) -> str:
        """"SAM ViT-B (sam_vit_b_01ec64.pth)"; for an unusable file, the name and the reason."""
        return self.store.label(name)

    def inventory(self, refresh: bool = False) -> Tuple[List[str], List[Tuple[str, str]]]:
        """(usable model names, [(unusable file name, why)]), each in the listing's order.

        A file in the model folder is not a model until its tensors say so (a bogus or foreign
        checkpoint must neither be listed as a model nor become the default).
        """
        usable, unusable = [], []
        for name in self.list_models(refresh=refresh):
            try:
                description = self.describe(name)
            except SamUserError as error:  # vanished or unreadable since the listing
                unusable.append((name, str(error)))
                continue
            if description.usable:
                usable.append(name)
            else:
                unusable.append((name, str(description.error)))
        return usable, unusable

    def resolve_model(self, name: Optional[str]) -> str:
        """The model file a caller means: the exact file name, else a case-insensitive match, else
        a unique stem (the listing is re-read once before giving up); without a name, the first
        usable model."""
        if name is None:
            usable, unusable = self.inventory()
            if not usable:
                usable, unusable = self.inventory(refresh=True)
            if usable:
                return usable[0]
            if unusable:
                reasons = "; ".join(f"{file}: {why}" for file, why in unusable)
                raise ModelNotFoundError(f"No usable SAM model found ({reasons}).")
            raise ModelNotFoundError("No SAM model found; put a checkpoint (e.g. sam_vit_b_01ec64.pth) in the models/sam folder.")
        name = validate_model_name(name)
        available: List[str] = []
        for refresh in (False, True):
            available = self.list_models(refresh=refresh)
            matched = match_model_name(name, available)
            if matched:
                return matched
        listed = ", ".join(available) if available else "none"
        raise ModelNotFoundError(f"SAM model {name!r} not found. Available: {listed}.")

    def model(self, name: Optional[str]) -> "ManagedPredictor":
        """A handle on the model a caller means (see :meth:`resolve_model`): the name is resolved
        once, here; the handle's calls then use the exact file name."""
        return ManagedPredictor(self, self.resolve_model(name))

    def predictor(self, model_name: str) -> "ManagedPredictor":
        """A predictor for one model (its exact file name), loaded through the LRU.

        Each call on it runs under the engine lock with the model on the compute device, so it
        stays valid across CPU offload, device switches and unloads (it reloads when needed).
        """
        self.store.resolve(model_name)  # a bad name fails here, not on first use
        return ManagedPredictor(self, model_name)

    @contextmanager
    def use_predictor(self, model_name: str, *, advice: str = "a smaller image or model") -> Iterator[Predictor]:
        """A plain predictor for the block: the engine lock is held and the model stays on the
        compute device throughout, so a job of many calls (AutoSAM) is not interleaved with
        other users moving the model. Out of memory becomes OutOfMemoryError ("Use <advice>, ...")."""
        self.store.resolve(model_name)
        with self._run(model_name, advice) as predictor:
            yield predictor

    @contextmanager
    def _run(self, model_name: str, advice: str = "a smaller image or model") -> Iterator[Predictor]:
        """:meth:`use_predictor` for a name already resolved (a handle's calls)."""
        with self._lock, self._in_use():
            try:
                with self.store.use(model_name) as loaded:
                    start = self.encode_batch_size(model_name)
                    predictor = Predictor(loaded.model, self.store.placement, self.embeddings, model_id=loaded.model_id,
                                          encode_batch_size=start)
                    try:
                        yield predictor
                    finally:
                        if predictor.encode_batch_size < start:
                            self._encode_batch_sizes[(model_name, str(self.placement.device))] = predictor.encode_batch_size
            except OutOfMemoryError:
                raise
            except Exception as error:
                if not devices.is_out_of_memory(error):
                    raise
                self.embeddings.clear()
                devices.release_memory()
                raise OutOfMemoryError(
                    f"Out of memory running {model_name} on {self.store.placement.device}. "
                    f"Use {advice}, enable CPU offload, or switch SAM to the CPU."
                ) from error

    def encode_batch_size(self, model_name: str) -> int:
        """Images per encoder pass for one model on the current device: the settings' (or the
        device's default) until an out-of-memory error lowered it."""
        remembered = self._encode_batch_sizes.get((model_name, str(self.placement.device)))
        if remembered is not None:
            return remembered
        return max(1, int(self.settings.encode_batch_size or devices.default_encode_batch(self.placement.device)))

    def segment(
        self,
        model_name: str,
        image: np.ndarray,
        prompts: Any,
        *,
        multimask_output: bool = True,
        options: Optional[Mapping] = None,
        mask_size: Optional[Tuple[int, int]] = None,
        image_key: Optional[str] = None,
    ):
        """Encode ``image`` (or reuse its cached embeddings) and decode ``prompts`` -> Prediction
        (masks at ``mask_size``, (height, width), when given; else at the picture's size).
        ``image_key``: the picture's ``images.image_content_key`` when the caller holds it."""
        return self.predictor(model_name).predict(image, prompts, multimask_output=multimask_output, options=options or {},
                                                  mask_size=mask_size, image_key=image_key)

    # ------------------------------------------------------------------ text prompts (GroundingDINO)

    def list_detectors(self, refresh: bool = False) -> List[str]:
        """File names of the usable GroundingDINO checkpoints, sorted (the folders are always re-read)."""
        return self.detectors.list_models()

    def detector_dirs(self) -> List[Path]:
        return [Path(directory) for directory in self.detectors.settings.model_dirs]

    def resolve_detector(self, name: Optional[str]) -> str:
        """The GroundingDINO file a caller means.

        None: the first available. The reference's names ("GroundingDINO_SwinT_OGC (694MB)")
        mean their catalogue file, or failing that any file of the same architecture. Otherwise
        the exact file name, then a case-insensitive or stem match.
        """
        available = self.list_detectors()
        if not available:
            raise ModelNotFoundError(self._no_detector_message())
        if name is None or not str(name).strip():
            return available[0]
        name = str(name).strip()
        alias = REFERENCE_MODEL_NAMES.get(name)
        if alias is not None:
            file_name, variant = alias
            if file_name in available:
                return file_name
            for candidate in available:
                try:
                    if self.detectors.describe(candidate).variant == variant:
                        return candidate
                except SamUserError:
                    continue
            raise ModelNotFoundError(
                f"GroundingDINO model {name!r} means {file_name}, which is not in "
                f"{self._detector_dirs_text()}. Download it or put it there; available: {', '.join(available)}."
            )
        matched = match_model_name(name, available)
        if matched:
            return matched
        self.detectors.resolve(name)  # refuses paths and '..' with its own message
        raise ModelNotFoundError(f"GroundingDINO model {name!r} not found. Available: {', '.join(available)}.")

    def _detector_dirs_text(self) -> str:
        return ", ".join(str(d) for d in self.detector_dirs()) or "a GroundingDINO model folder (none is configured)"

    def _no_detector_message(self) -> str:
        return (
            "No GroundingDINO model for text prompts: put groundingdino_swint_ogc.pth (or groundingdino_swinb_cogcoor.pth) "
            f"in {self._detector_dirs_text()}, or download it from the text-prompt section."
        )

    def detect(self, model_name: Optional[str], image: np.ndarray, caption: str, box_threshold: float = 0.3,
               text_threshold: float = 0.25, nms: Optional[float] = None, like_reference: bool = False) -> list:
        """Boxes of what ``caption`` names ('hand, face' or 'hand . face'): a list of
        ``local_groundingdino.detector.Detection`` (image pixels, best first; in query order
        with ``like_reference``, see ``Detector.detect``)."""
        caption = check_caption(caption)
        name = self.resolve_detector(model_name)
        with self._lock, self._in_use():
            try:
                detector = self.detectors.detector(name)
                return detector.detect(image, caption, box_threshold=box_threshold, text_threshold=text_threshold,
                                       nms_threshold=nms, like_reference=like_reference)
            except OutOfMemoryError:
                raise
            except Exception as error:
                if devices.is_out_of_memory(error):
                    self.detectors.unload()
                    devices.release_memory()
                    raise OutOfMemoryError(
                        f"Out of memory running {name} on {self.store.placement.device}. "
                        "Use a smaller image, enable CPU offload, or switch Segment Anything to the CPU."
                    ) from error
                raise

    def download_detector(self, file_name: str, progress=None, **options) -> Path:
        """Resumable, sha256-verified download of a catalogued GroundingDINO checkpoint into the first folder."""
        return self.detectors.download(file_name, progress, **options)

    def _forget_embeddings(self, loaded: LoadedModel) -> None:
        # Embeddings of a model that left memory would only hold (device) memory.
        self.embeddings.discard_model(loaded.model_id)

    # ------------------------------------------------------------------ memory and devices

    def set_device(self, preference: str) -> devices.Placement:
        """Switch the compute device ("auto", "cuda", "cuda:1", "mps", "cpu"); loaded models follow.
        Returns where SAM runs now (a preference the machine cannot honour resolves elsewhere)."""
        try:
            placement = devices.resolve_placement(
                preference, offload_to_cpu=self.settings.offload_to_cpu, precision=self.settings.precision
            )
        except ValueError as error:
            raise SamUserError(str(error)) from error
        with self._lock:
            self._device_preference = preference
            if placement == self.store.placement:
                return placement
            # Embeddings live on the old device (and would be keyed to it): free them now.
            self.embeddings.clear()
            self.store.set_placement(placement)
            self.detectors.set_placement(placement)
        devices.release_memory()
        return placement

    def memory(self) -> Dict[str, Any]:
        """What is loaded and roughly how much memory it takes (parameter and buffer bytes for
        models, tensor bytes for embeddings), for a status line or /sam/v2/health."""
        # Not under the engine lock: each store guards itself, and a health check should not
        # wait for a long job to finish.
        models = [
            {"names": list(entry.names), "label": entry.spec.label, "family": entry.spec.family,
             "device": "cpu" if entry.on_cpu_until_used else str(self.store.placement.storage_device),
             "bytes": entry.nbytes}
            for entry in self.store.loaded()
        ]
        return _memory_report(models, self.detectors.memory(), self.embeddings.stats())

    def unload(self) -> Dict[str, Any]:
        """Free every loaded model and every cached embedding; returns what was freed, as
        :meth:`memory` described it just before (a panel button or /sam/v2/unload shows it)."""
        with self._lock:
            freed = self.memory()
            self.embeddings.clear()
            self.store.unload()
            self.detectors.unload()
            with self._idle:
                self._last_used = None  # nothing left to unload when idle
        devices.release_memory()
        return freed

    def move_to_cpu(self) -> int:
        """Move the loaded models off the accelerator until their next use, and drop the image
        embeddings kept there: the host generates and is short of VRAM. Returns the bytes freed
        on the accelerator. A job running now keeps its models (0): it needs them, and waiting
        for it would hold up the generation."""
        if self.store.placement.device.type == "cpu" or not self._lock.acquire(blocking=False):
            return 0
        try:
            freed = self.store.move_to_cpu() + self.detectors.move_to_cpu()
            if self.embeddings.nbytes:
                freed += self.embeddings.nbytes
                self.embeddings.clear()
        finally:
            self._lock.release()
        if freed:
            devices.release_memory()
            logger.info("Moved Segment Anything's models to the CPU (%.0f MiB freed on the GPU)", freed / 2**20)
        return freed

    # ------------------------------------------------------------------ idle unload

    @property
    def idle_limit_s(self) -> float:
        """Seconds without use after which every model is unloaded; 0 never."""
        try:
            return max(0.0, float(self.settings.unload_after_idle_minutes or 0)) * 60.0
        except (TypeError, ValueError):
            return 0.0

    @contextmanager
    def _in_use(self) -> Iterator[None]:
        """Marks a use of the models (under the engine lock); its end starts the idle countdown."""
        with self._idle:
            self._uses += 1
        try:
            yield
        finally:
            with self._idle:
                self._uses -= 1
                self._last_used = self._clock()
                self._idle.notify_all()
            self._start_idle_watcher()

    def _idle_remaining_s(self) -> Optional[float]:
        """(Under ``self._idle``.) Seconds until the models count as idle; None while nothing
        waits to be unloaded or a use is in progress."""
        if self._uses or self._last_used is None or self.idle_limit_s <= 0:
            return None
        return self._last_used + self.idle_limit_s - self._clock()

    def unload_if_idle(self) -> bool:
        """Unload every model and embedding when none was used for the idle limit. Returns whether it did."""
        if self.idle_limit_s <= 0:
            return False
        with self._lock:  # no use can start while it is held
            with self._idle:
                remaining = self._idle_remaining_s()
                if remaining is None or remaining > 0:
                    return False
            freed = self.unload()
        logger.info("Unloaded Segment Anything's models after %.0f idle minutes (%.1f MiB)",
                    self.idle_limit_s / 60, freed["total_mib"])
        return True

    def _start_idle_watcher(self) -> None:
        if self.idle_limit_s <= 0 or self._idle_watcher is not None:
            return
        with self._idle:
            if self._idle_watcher is None:
                self._idle_watcher = threading.Thread(target=self._watch_idle, name="sam-idle-unload", daemon=True)
                self._idle_watcher.start()

    def _watch_idle(self) -> None:
        """One thread per engine, asleep until the idle limit can have passed since the last use."""
        while True:
            with self._idle:
                remaining = self._idle_remaining_s()
                while remaining is None or remaining > 0:
                    self._idle.wait(remaining)
                    remaining = self._idle_remaining_s()
            self.unload_if_idle()

    def stats(self) -> Dict[str, Any]:
        placement = self.store.placement
        return {
            "device": str(placement.device),
            # What really runs: the image encoders in ``dtype``, the decoders in ``decoder_dtype``.
            "dtype": dtype_name(placement.dtype),
            "decoder_dtype": dtype_name(placement.decoder_dtype),
            "precision": self.settings.precision,
            "precision_note": placement.precision_note,
            "offload_to_cpu": placement.offload_to_cpu,
            "loaded_models": self.store.loaded_names(),
            # With compile_encoder on: "name: compiled (1 input shape)" or "name: eager: <why>".
            "encoder_compile": [f"{entry.name}: {status}" for entry in self.store.loaded()
                                if (status := compiled_encoder.status_of(entry.model)) is not None],
            "model_cache_size": self.store.capacity,
            "model_dirs": [str(directory) for directory in self.store.model_dirs()],
            "embedding_cache": self.embeddings.stats(),
            "loaded_detectors": self.detectors.loaded(),
            "detector_cache_size": self.detectors.settings.cache_size,
            "detector_dirs": [str(directory) for directory in self.detector_dirs()],
        }


def _memory_report(models: List[Dict[str, Any]], detectors: List[Dict[str, Any]], embeddings: Mapping[str, int]) -> Dict[str, Any]:
    embedding_part = {"entries": int(embeddings["entries"]), "bytes": int(embeddings["bytes"])}
    total = sum(int(item["bytes"]) for item in models + detectors) + embedding_part["bytes"]
    return {"models": models, "detectors": detectors, "embeddings": embedding_part, "total_bytes": total,
            "total_mib": round(total / 2**20, 1)}


def _detector_store(settings: EngineSettings, placement: devices.Placement) -> GroundingDinoStore:
    return GroundingDinoStore(
        GroundingDinoSettings(
            model_dirs=settings.gdino_model_dirs(),
            tokenizer_dir=Path(settings.gdino_tokenizer_dir) if settings.gdino_tokenizer_dir else None,
            cache_size=max(1, int(settings.gdino_cache_size)),
            short_side=int(settings.gdino_short_side),
            max_side=int(settings.gdino_max_side),
        ),
        placement,
    )


class ManagedPredictor:
    """A :class:`~sd_webui_sam.predictor.Predictor` whose every call goes through the engine.

    It holds a model name, not a model: each ``encode``/``predict`` takes the engine lock, gets
    the model from the store (loading it if it was evicted or unloaded) with it on the compute
    device, and runs the real predictor there.
    """

    def __init__(self, engine: Engine, model_name: str):
        self.engine = engine
        self.model_name = model_name

    @property
    def name(self) -> str:
        return self.model_name

    def _run(self, method: str, *args, **kwargs):
        with self.engine._run(self.model_name) as predictor:
            return getattr(predictor, method)(*args, **kwargs)

    def encode(self, image: np.ndarray, image_key: Optional[str] = None):
        return self._run("encode", image, image_key)

    def encode_many(self, images, max_batch: Optional[int] = None):
        """Several images' embeddings, encoded together (Predictor.encode_many)."""
        return self._run("encode_many", images, max_batch=max_batch)

    def predict(self, image_or_encoded, prompts, *, multimask_output: bool = True, options: Optional[Mapping] = None,
                mask_size: Optional[Tuple[int, int]] = None, image_key: Optional[str] = None):
        return self._run("predict", image_or_encoded, prompts, multimask_output=multimask_output, options=options or {},
                         mask_size=mask_size, image_key=image_key)
