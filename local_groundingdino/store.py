"""GroundingDINO checkpoints: the official catalogue, discovery in the model folders, an LRU of loaded detectors.

Folders are searched in the order given (e.g. a user folder, the host's models/grounding-dino,
the extension's models/grounding-dino); the first folder holding a file name wins. Files are
listed only when their tensors identify them as GroundingDINO, so a SAM checkpoint dropped
into the folder is not offered.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from local_groundingdino.checkpoint import GroundingDinoSpec, identify_checkpoint
from local_groundingdino.detector import DEFAULT_MAX_SIDE, DEFAULT_SHORT_SIDE, Detector, load_detector
from sd_webui_sam import checkpoints, devices
from sd_webui_sam.checkpoints import is_candidate_file, validate_model_name
from sd_webui_sam.devices import Placement
from sd_webui_sam.downloads import ProgressCallback, catalogue_entry, download_file
from sd_webui_sam.errors import DownloadError, ModelNotFoundError, SamUserError
from sd_webui_sam.weights import tensor_bytes

logger = logging.getLogger(__name__)

MODEL_SUBDIR = "grounding-dino"
HF_REPOSITORY = "https://huggingface.co/ShilongLiu/GroundingDINO/resolve/main/"


@dataclass(frozen=True)
class GroundingDinoCatalogueEntry:
    file_name: str
    label: str
    size: int
    sha256: str

    @property
    def url(self) -> str:
        return HF_REPOSITORY + self.file_name


# sha256 and size of the files the authors published (identical on Hugging Face and in the
# GitHub releases v0.1.0-alpha / v0.1.0-alpha2).
CATALOGUE: Tuple[GroundingDinoCatalogueEntry, ...] = (
    GroundingDinoCatalogueEntry(
        "groundingdino_swint_ogc.pth", "GroundingDINO Swin-T (694 MB)", 693997677,
        "3b3ca2563c77c69f651d7bd133e97139c186df06231157a64c507099c52bc799",
    ),
    GroundingDinoCatalogueEntry(
        "groundingdino_swinb_cogcoor.pth", "GroundingDINO Swin-B (938 MB)", 938057991,
        "46270f7a822e6906b655b729c90613e48929d0f2bb8b9b76fd10a856f3ac6ab7",
    ),
)


#: The names the reference extension's API and UI use -> (catalogue file, architecture variant).
REFERENCE_MODEL_NAMES: Dict[str, Tuple[str, str]] = {
    "GroundingDINO_SwinT_OGC (694MB)": ("groundingdino_swint_ogc.pth", "swin_t"),
    "GroundingDINO_SwinB (938MB)": ("groundingdino_swinb_cogcoor.pth", "swin_b"),
}


@dataclass(frozen=True)
class GroundingDinoSettings:
    #: Searched in order; the first holds downloads.
    model_dirs: Tuple[Path, ...] = ()
    #: A folder with another BERT uncased vocab.txt; None uses the bundled one.
    tokenizer_dir: Optional[Path] = None
    cache_size: int = 1
    short_side: int = DEFAULT_SHORT_SIDE
    max_side: int = DEFAULT_MAX_SIDE


def download_checkpoint(file_name: str, dest_dir: Path, progress: Optional[ProgressCallback] = None, **options) -> Path:
    """Resumable, size- and sha256-verified download of a catalogued checkpoint into ``dest_dir``."""
    entry = catalogue_entry(file_name, CATALOGUE, "GroundingDINO checkpoint")
    return download_file(entry.url, dest_dir, entry.file_name, size=entry.size, sha256=entry.sha256, progress=progress, **options)


class GroundingDinoStore:
    """Discovery and the LRU of loaded detectors. Thread-safe."""

    def __init__(self, settings: GroundingDinoSettings, placement: Optional[Placement] = None,
                 loader: Callable[..., Detector] = load_detector):
        self.settings = settings
        self._placement = placement or devices.resolve_placement("auto")
        self._loader = loader
        self._lock = threading.RLock()
        self._specs: Dict[Tuple[str, int, int], Optional[GroundingDinoSpec]] = {}
        self._loaded: "OrderedDict[str, Detector]" = OrderedDict()

    @property
    def placement(self) -> Placement:
        return self._placement

    def _spec_of(self, path: Path) -> Optional[GroundingDinoSpec]:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in self._specs:
            try:
                self._specs[key] = identify_checkpoint(checkpoints.read_shapes(path))
            except SamUserError as error:
                logger.info("Skipping %s: %s", path, error)
                self._specs[key] = None
        return self._specs[key]

    def _scan(self) -> Dict[str, Path]:
        found: Dict[str, Path] = {}
        for directory in self.settings.model_dirs:
            directory = Path(directory)
            if not directory.is_dir():
                continue
            for path in sorted(directory.iterdir()):
                if path.name not in found and is_candidate_file(path) and self._spec_of(path) is not None:
                    found[path.name] = path
        return found

    def list_models(self) -> List[str]:
        """File names of the usable GroundingDINO checkpoints, sorted."""
        with self._lock:
            return sorted(self._scan())

    def describe(self, name: str) -> GroundingDinoSpec:
        path = self.resolve(name)
        spec = self._spec_of(path)
        if spec is None:
            raise ModelNotFoundError(f"{name} is not a GroundingDINO checkpoint.")
        return spec

    def resolve(self, name: str) -> Path:
        name = validate_model_name(name)
        for directory in self.settings.model_dirs:
            path = Path(directory) / name
            if is_candidate_file(path):
                return path
        hint = ""
        if any(entry.file_name == name for entry in CATALOGUE):
            hint = " Download it from the model list, or put the file there by hand."
        raise ModelNotFoundError(
            f"GroundingDINO model {name!r} was not found in {', '.join(str(d) for d in self.settings.model_dirs) or 'any folder'}.{hint}"
        )

    def detector(self, name: str) -> Detector:
        """The loaded detector for ``name``, loading it (and evicting the least recently used) if needed."""
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
            path = self.resolve(name)
            detector = self._loader(
                path, self._placement, tokenizer_dir=self.settings.tokenizer_dir,
                short_side=self.settings.short_side, max_side=self.settings.max_side,
            )
            self._loaded[name] = detector
            while len(self._loaded) > max(1, self.settings.cache_size):
                self._loaded.popitem(last=False)
                devices.release_memory()
            return detector

    def loaded(self) -> List[str]:
        with self._lock:
            return list(self._loaded)

    def memory(self) -> List[Dict[str, object]]:
        """Each loaded detector: name, label, device and the bytes its parameters and buffers hold."""
        with self._lock:
            return [
                {"name": name, "label": detector.label, "device": str(detector.placement.storage_device),
                 "bytes": tensor_bytes(detector.model)}
                for name, detector in self._loaded.items()
            ]

    def unload(self) -> List[Dict[str, object]]:
        """Free every loaded detector; returns what was freed (as :meth:`memory` described it)."""
        with self._lock:
            freed = self.memory()
            self._loaded.clear()
        devices.release_memory()
        return freed

    def set_placement(self, placement: Placement) -> None:
        """A new device/dtype/offload choice: loaded detectors are dropped and reload on next use."""
        with self._lock:
            if placement != self._placement:
                self._placement = placement
                self.unload()

    def download(self, file_name: str, progress: Optional[ProgressCallback] = None, **options) -> Path:
        """Fetch a catalogued checkpoint into the first model folder."""
        if not self.settings.model_dirs:
            raise DownloadError("No GroundingDINO model folder is configured to download into.")
        return download_checkpoint(file_name, Path(self.settings.model_dirs[0]), progress, **options)


def default_model_dirs(*roots: Path) -> Tuple[Path, ...]:
    """``<root>/models/grounding-dino`` for each root (e.g. the WebUI folder, then the extension folder)."""
    return tuple(Path(root) / "models" / MODEL_SUBDIR for root in roots)
