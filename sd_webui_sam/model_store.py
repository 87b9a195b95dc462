"""Finding checkpoints in the model folders and keeping a few loaded.

Models are named by file name only. Folders are searched in :meth:`EngineSettings.model_dirs`
order (user folder, the host's models/sam, the extension's models/sam); when two folders hold
the same file name the first one wins. Loaded models live in a small LRU; with CPU offload they
rest on the CPU and visit the GPU only inside :meth:`ModelStore.use`.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from sd_webui_sam import checkpoints, compiled_encoder, devices
from sd_webui_sam.checkpoints import is_candidate_file, validate_model_name
from sd_webui_sam.devices import Placement
from sd_webui_sam.embedding_cache import dtype_name
from sd_webui_sam.errors import ModelNotFoundError, OutOfMemoryError, SamUserError
from sd_webui_sam.model_registry import ModelSpec, build_model, identify
from sd_webui_sam.modeling import PromptableSegmenter
from sd_webui_sam.same_content import ContentIdentity, FileKey, file_key
from sd_webui_sam.settings import EngineSettings
from sd_webui_sam.weights import tensor_bytes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelDescription:
    """What a checkpoint file holds, or why it cannot be used."""

    name: str
    path: Path
    size: int
    spec: Optional[ModelSpec]
    error: Optional[str] = None

    @property
    def usable(self) -> bool:
        return self.spec is not None

    @property
    def label(self) -> str:
        if self.spec is not None:
            return f"{self.spec.label} ({self.name})"
        return f"{self.name} (not usable: {self.error})"


@dataclass
class LoadedModel:
    name: str  # the file it was loaded from; ``names`` also lists identical copies sharing it
    path: Path
    spec: ModelSpec
    model: PromptableSegmenter
    file_key: FileKey
    names: List[str] = field(default_factory=list)
    nbytes: int = 0  # parameters and buffers
    #: Moved to the CPU while the host needed the VRAM; the next use brings it back.
    on_cpu_until_used: bool = False

    @property
    def model_id(self) -> str:
        """Identifies these exact weights (for embedding cache keys); changes when the file does."""
        _, size, mtime_ns = self.file_key
        return f"{self.name}:{size}:{mtime_ns}"


class ModelStore:
    """Model discovery, descriptions and the LRU of loaded models. Thread-safe."""

    def __init__(
        self,
        settings: EngineSettings,
        placement: Optional[Placement] = None,
        on_drop: Optional[Callable[[LoadedModel], None]] = None,
    ):
        """``on_drop`` is told about every model leaving memory (evicted, unloaded, file replaced),
        so caches keyed to it (embeddings) can go with it."""
        self.settings = settings
        self._on_drop = on_drop
        self._placement = placement or devices.resolve_placement(
            settings.device, offload_to_cpu=settings.offload_to_cpu, precision=settings.precision
        )
        _log_precision(self._placement)
        self._scan_lock = threading.Lock()
        self._models_lock = threading.RLock()
        self._listing: Optional[Dict[str, Path]] = None
        self._descriptions: Dict[FileKey, ModelDescription] = {}
        # Keyed by id(entry), least recently used first (not by name: the name a model was loaded
        # under may since hold another file while copies keep the model). Every name whose file
        # has the same content maps to the one entry in ``_by_name``, with the file key it had
        # when it joined (a file replaced since then no longer belongs there).
        self._loaded: "OrderedDict[int, LoadedModel]" = OrderedDict()
        self._by_name: Dict[str, Tuple[LoadedModel, FileKey]] = {}
        self._content = ContentIdentity()

    # ------------------------------------------------------------------ discovery

    @property
    def placement(self) -> Placement:
        return self._placement

    def model_dirs(self) -> Tuple[Path, ...]:
        return self.settings.model_dirs()

    def list_models(self, refresh: bool = False) -> List[str]:
        """Checkpoint file names across all model folders, sorted, first folder winning."""
        return sorted(self._scan(refresh), key=lambda name: (name.lower(), name))

    def _scan(self, refresh: bool) -> Dict[str, Path]:
        with self._scan_lock:
            if self._listing is None or refresh:
                found: Dict[str, Path] = {}
                for directory in self.model_dirs():
                    try:
                        entries = sorted(directory.iterdir())
                    except OSError:
                        continue  # a configured folder that does not exist (yet) is not an error
                    for entry in entries:
                        if entry.name not in found and is_candidate_file(entry):
                            found[entry.name] = entry
                self._listing = found
                live = {str(path) for path in found.values()}
                self._descriptions = {key: value for key, value in self._descriptions.items() if key[0] in live}
            return dict(self._listing)

    def resolve(self, name: str) -> Path:
        """The file for a model name, searched only inside the model folders."""
        name = validate_model_name(name)
        path = self._scan(refresh=False).get(name)
        if path is None or not is_candidate_file(path):
            path = self._scan(refresh=True).get(name)
        if path is None:
            folders = ", ".join(str(directory) for directory in self.model_dirs()) or "(no model folder configured)"
            raise ModelNotFoundError(
                f"SAM model {name!r} was not found. Put the checkpoint in one of: {folders}, then refresh the model list."
            )
        return path

    def describe(self, name: str) -> ModelDescription:
        """Family, variant and label of a model file; cached until the file changes."""
        path = self.resolve(name)
        key = file_key(path)
        with self._scan_lock:
            cached = self._descriptions.get(key)
        if cached is not None:
            return cached
        try:
            spec = identify(checkpoints.read_shapes(path))
            description = ModelDescription(name=name, path=path, size=key[1], spec=spec)
        except SamUserError as error:
            description = ModelDescription(name=name, path=path, size=key[1], spec=None, error=str(error))
        with self._scan_lock:
            self._descriptions[key] = description
        return description

    def label(self, name: str) -> str:
        return self.describe(name).label

    # ------------------------------------------------------------------ loading

    @property
    def capacity(self) -> int:
        return max(1, int(self.settings.model_cache_size or 1))

    def loaded_names(self) -> List[str]:
        """Names of the loaded models, least recently used first; copies sharing a model follow it."""
        with self._models_lock:
            return [name for entry in self._loaded.values() for name in entry.names]

    def loaded(self) -> List[LoadedModel]:
        with self._models_lock:
            return list(self._loaded.values())

    def get(self, name: str) -> LoadedModel:
        """The loaded model (on its resting device), loading it through the LRU if needed.

        A file with the same content as a loaded one (a renamed copy) shares that model.
        """
        path = self.resolve(name)
        key = file_key(path)
        with self._models_lock:
            attached = self._by_name.get(name)
            if attached is not None and attached[1] == key:
                self._loaded.move_to_end(id(attached[0]))
                return attached[0]
            if attached is not None:  # the file was replaced on disk
                self._detach(name)
            entry = self._same_content(path, key)
            if entry is None:
                # Free the least recently used models before loading, so that two large models
                # never have to fit at once.
                if len(self._loaded) >= self.capacity:
                    while len(self._loaded) >= self.capacity:
                        self._drop(next(iter(self._loaded)))
                    devices.release_memory()
                entry = self._load(name, path, key)
                self._loaded[id(entry)] = entry
            else:
                logger.info("%s has the same content as %s: sharing the loaded model", name, entry.name)
                self._loaded.move_to_end(id(entry))
            entry.names.append(name)
            self._by_name[name] = (entry, key)
            return entry

    def _same_content(self, path: Path, key: FileKey) -> Optional[LoadedModel]:
        """The loaded model whose file holds exactly these bytes, if any (its file unchanged since)."""
        for entry in self._loaded.values():
            if self._content.same(path, key, entry.path, entry.file_key):
                return entry
        return None

    def _load(self, name: str, path: Path, key: FileKey) -> LoadedModel:
        state_dict = checkpoints.load_state_dict(path)
        spec = identify({tensor_name: tuple(tensor.shape) for tensor_name, tensor in state_dict.items()})
        try:
            # The parameters are the (memory-mapped) file's tensors; this is their one move.
            model = build_model(spec, state_dict, source=name)
            del state_dict
            model.requires_grad_(False)
            model.place(self._placement.storage_device, self._placement.dtype)
            if self.settings.compile_encoder:
                compiled_encoder.install(model, name)
        except Exception as error:
            if devices.is_out_of_memory(error):
                devices.release_memory()
                raise OutOfMemoryError(
                    f"Not enough memory to load {name} on {self._placement.storage_device}. "
                    "Unload other models, choose a smaller SAM model, or enable CPU offload / use the CPU."
                ) from error
            raise
        with self._scan_lock:
            self._descriptions[key] = ModelDescription(name=name, path=path, size=key[1], spec=spec)
        logger.info("Loaded %s (%s) on %s, image encoder in %s", name, spec.label, self._placement.storage_device,
                    dtype_name(self._placement.dtype))
        return LoadedModel(name=name, path=path, spec=spec, model=model, file_key=key,
                           nbytes=tensor_bytes(model))

    @contextmanager
    def use(self, name: str) -> Iterator[LoadedModel]:
        """The model on the compute device for the duration of the block.

        Holds the store's lock, so uses are serialised. With CPU offload the model goes to the
        device on entry and back to the CPU on exit, even when the block fails.
        """
        with self._models_lock:
            entry = self.get(name)
            placement = self._placement
            if placement.offload_to_cpu or entry.on_cpu_until_used:
                entry.model.to(placement.device)
                entry.on_cpu_until_used = False
            try:
                yield entry
            finally:
                if placement.offload_to_cpu and self._loaded.get(id(entry)) is entry:
                    entry.model.to(placement.storage_device)

    def unload(self, name: Optional[str] = None) -> List[LoadedModel]:
        """Drop one loaded model (with the copies sharing it), or all of them, and give the
        memory back. Returns what was dropped (their ``model`` is None by then)."""
        with self._models_lock:
            if name is None:
                keys = list(self._loaded)
            else:
                attached = self._by_name.get(name)
                keys = [id(attached[0])] if attached is not None else []
            dropped = [entry for entry in map(self._drop, keys) if entry is not None]
        devices.release_memory()
        return dropped

    def _detach(self, name: str) -> None:
        """One name leaves its model (its file changed); the model goes when no name is left."""
        entry, _ = self._by_name.pop(name)
        entry.names.remove(name)
        if not entry.names:
            self._drop(id(entry))

    def _drop(self, key: int) -> Optional[LoadedModel]:
        entry = self._loaded.pop(key, None)
        if entry is not None:
            logger.info("Unloaded %s", ", ".join(entry.names) or entry.name)
            for alias in entry.names:
                self._by_name.pop(alias, None)
            if self._on_drop is not None:
                self._on_drop(entry)
            # The LoadedModel may still be referenced by a caller; release the weights anyway.
            entry.model = None  # type: ignore[assignment]
        return entry

    def move_to_cpu(self) -> int:
        """Move every loaded model resting on an accelerator to the CPU until its next use.
        Returns the bytes moved."""
        moved = 0
        with self._models_lock:
            if self._placement.storage_device.type == "cpu":
                return 0
            for entry in self._loaded.values():
                if not entry.on_cpu_until_used:
                    entry.model.to("cpu")
                    entry.on_cpu_until_used = True
                    moved += entry.nbytes
        return moved

    def set_placement(self, placement: Placement) -> None:
        """Move loaded models to a new device/dtype (e.g. the user switched to the CPU)."""
        with self._models_lock:
            self._placement = placement
            _log_precision(placement)
            for entry in self._loaded.values():
                entry.model.place(placement.storage_device, placement.dtype)
                entry.on_cpu_until_used = False
                entry.nbytes = tensor_bytes(entry.model)
        devices.release_memory()


def _log_precision(placement: Placement) -> None:
    if placement.precision_note:
        logger.warning("%s", placement.precision_note)
