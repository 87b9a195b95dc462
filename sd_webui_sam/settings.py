"""Settings shared by every entry point (WebUI, standalone app, CLI, API).

The host adapters and the command line fill one :class:`EngineSettings`; the core never
reads WebUI options or environment variables anywhere else.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple

MODEL_DIR_ENV = "SAM_MODEL_DIR"
#: GroundingDINO's folder next to each default SAM folder (``models/sam`` -> ``models/grounding-dino``).
GROUNDING_DINO_SUBDIR = "grounding-dino"
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000  # 8000 x 8000; far past any SD image, far below a bomb
#: Objects one text prompt may segment: each costs a decode and full-size masks, and a low box
#: threshold can let hundreds of boxes through (900 boxes took a WebUI past 9.8 GB).
DEFAULT_MAX_OBJECTS = 20


@dataclass
class EngineSettings:
    #: Searched first: a directory from a setting, a command-line flag or $SAM_MODEL_DIR.
    user_model_dir: Optional[Path] = None
    #: Then these, in order (the host's models/sam, then the extension's own models/sam).
    default_model_dirs: Tuple[Path, ...] = ()
    device: str = "auto"
    #: The image encoders' precision, one of devices.PRECISION_CHOICES (decoders stay float32).
    precision: str = "auto"
    offload_to_cpu: bool = False
    #: Unload every model after this many minutes without use; 0 keeps them loaded.
    unload_after_idle_minutes: float = 0.0
    #: torch.compile the image encoder where it works (CUDA with Triton; compiled_encoder.py).
    compile_encoder: bool = False
    model_cache_size: int = 1
    embedding_cache_entries: int = 8
    embedding_cache_bytes: int = 2 * 1024**3
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    #: Images per image-encoder pass where several are encoded together (batch); 0: the
    #: device's default (devices.default_encode_batch). Out of memory halves it for the session.
    encode_batch_size: int = 0
    #: A text prompt keeps at most this many boxes, the most confident first.
    max_objects: int = DEFAULT_MAX_OBJECTS
    #: GroundingDINO (text prompts): a user folder searched first, then these; empty defaults mean
    #: the ``grounding-dino`` folder beside each default ``sam`` folder.
    gdino_user_model_dir: Optional[Path] = None
    gdino_default_model_dirs: Tuple[Path, ...] = ()
    #: A folder with another BERT-uncased vocab.txt; None uses the bundled one.
    gdino_tokenizer_dir: Optional[Path] = None
    gdino_cache_size: int = 1
    #: The detector's input size (it was trained at a short side of 800, long side at most 1333).
    gdino_short_side: int = 800
    gdino_max_side: int = 1333
    extra: dict = field(default_factory=dict)

    def model_dirs(self) -> Tuple[Path, ...]:
        """Directories to search, highest priority first, without duplicates."""
        ordered = []
        env_dir = os.environ.get(MODEL_DIR_ENV)
        candidates = [self.user_model_dir, Path(env_dir) if env_dir else None, *self.default_model_dirs]
        for candidate in candidates:
            if candidate is None:
                continue
            resolved = Path(candidate).expanduser().resolve()
            if resolved not in ordered:
                ordered.append(resolved)
        return tuple(ordered)

    def gdino_model_dirs(self) -> Tuple[Path, ...]:
        """GroundingDINO folders, highest priority first (the first one receives downloads)."""
        defaults = tuple(self.gdino_default_model_dirs) or tuple(
            Path(directory).parent / GROUNDING_DINO_SUBDIR for directory in self.default_model_dirs
        )
        ordered = []
        for candidate in (self.gdino_user_model_dir, *defaults):
            if candidate is None:
                continue
            resolved = Path(candidate).expanduser().resolve()
            if resolved not in ordered:
                ordered.append(resolved)
        return tuple(ordered)
