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
from sd_webui_sam.same_content import ContentIdentity, FileKey, file_key
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
    """Discovery and the LRU of loaded detectors. Thread-safe.

    Files with the same content (a renamed copy) share one loaded detector; a file replaced on
    disk is loaded anew.
    """

    def __init__(self, settings: GroundingDinoSettings, placement: Optional[Placement] = None,
                 loader: Callable[..., Detector] = load_detector):
        self.settings = settings
        self._placement = placement or devices.resolve_placement("auto")
        self._loader = loader
        self._lock = threading.RLock()
        self._specs: Dict[FileKey, Optional[GroundingDinoSpec]] = {}
        # Name -> detector, least recently used first; the names of one detector move together.
        self._loaded: "OrderedDict[str, Detector]" = OrderedDict()
        self._files: Dict[str, Tuple[Path, FileKey]] = {}  # the file version each name was loaded from
        self._content = ContentIdentity()

    @property
    def placement(self) -> Placement:
        return self._placement

    def _spec_of(self, path: Path) -> Optional[GroundingDinoSpec]:
        key = file_key(path)
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
        """The loaded detector for ``name``, loading it if needed: the least recently used ones
        leave first, so that two never have to fit at once."""
        with self._lock:
            path = self.resolve(name)
            key = file_key(path)
            if name in self._loaded and self._files[name][1] != key:  # the file was replaced on disk
                self._forget([name])
            detector = self._loaded.get(name) or self._same_content(path, key)
            if detector is None:
                while len(self._distinct()) >= max(1, self.settings.cache_size):
                    self._forget(self._names_of(next(iter(self._loaded.values()))))
                    devices.release_memory()
                detector = self._loader(
                    path, self._placement, tokenizer_dir=self.settings.tokenizer_dir,
                    short_side=self.settings.short_side, max_side=self.settings.max_side,
                )
            elif name not in self._loaded:
                logger.info("%s has the same content as %s: sharing the loaded detector", name, detector.name)
            self._loaded[name] = detector
            self._files[name] = (path, key)
            for shared_name in self._names_of(detector):
                self._loaded.move_to_end(shared_name)
            return detector

    def _same_content(self, path: Path, key: FileKey) -> Optional[Detector]:
        for other_name, detector in self._loaded.items():
            other_path, other_key = self._files[other_name]
            if self._content.same(path, key, other_path, other_key):
                return detector
        return None

    def _distinct(self) -> List[Detector]:
        """The loaded detectors, each once, least recently used first."""
        return list({id(detector): detector for detector in self._loaded.values()}.values())

    def _names_of(self, detector: Detector) -> List[str]:
        return [name for name, loaded in self._loaded.items() if loaded is detector]

    def _forget(self, names: List[str]) -> None:
        for name in names:
            self._loaded.pop(name, None)
            self._files.pop(name, None)

    def loaded(self) -> List[str]:
        with self._lock:
            return list(self._loaded)

    def memory(self) -> List[Dict[str, object]]:
        """Each loaded detector once: its first name, every name sharing it, label, the device its
        weights are on now and the bytes its parameters and buffers hold."""
        with self._lock:
            return [
                {"name": self._names_of(detector)[0], "names": self._names_of(detector), "label": detector.label,
                 "device": str(next(detector.model.parameters()).device), "bytes": tensor_bytes(detector.model)}
                for detector in self._distinct()
            ]

    def move_to_cpu(self) -> int:
        """Move the detectors' weights to the CPU until their next run (which moves them back).
        Returns the bytes moved off an accelerator."""
        moved = 0
        with self._lock:
            for detector in self._distinct():
                if next(detector.model.parameters()).device.type != "cpu":
                    detector.model.to("cpu")
                    moved += tensor_bytes(detector.model)
        return moved

    def unload(self) -> List[Dict[str, object]]:
        """Free every loaded detector; returns what was freed (as :meth:`memory` described it)."""
        with self._lock:
            freed = self.memory()
            self._forget(list(self._loaded))
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
