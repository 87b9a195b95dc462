"""Image embeddings, computed once per (image content, model, device, dtype) and kept in an LRU.

The encoder is the expensive half of SAM (seconds on a CPU); every further prompt on the same
image reuses its embeddings. The cache is bounded both by entry count and by bytes, since one
entry ranges from 4 MiB (SAM) to tens of MiB (HQ-SAM keeps early ViT features too).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor


@dataclass(frozen=True)
class CacheKey:
    image_hash: str
    model_id: str
    device: str
    dtype: str


@dataclass(frozen=True, eq=False)
class EncodedImage:
    """One image's encoder output, with the geometry needed to map prompts and masks.

    ``original_size`` is the image's (H, W); ``input_size`` the (h, w) it was resized to
    (longest side = the model's input size) before padding to a square.
    """

    key: CacheKey
    features: Mapping[str, Tensor]
    original_size: Tuple[int, int]
    input_size: Tuple[int, int]
    nbytes: int = field(default=0)

    @staticmethod
    def size_of(features: Mapping[str, Tensor]) -> int:
        return int(sum(tensor.numel() * tensor.element_size() for tensor in features.values()))


class EmbeddingCache:
    """Thread-safe LRU of :class:`EncodedImage`, bounded by entries and by bytes.

    An entry larger than ``max_bytes`` on its own is not kept (the caller still gets it).
    ``max_entries == 0`` turns caching off.
    """

    def __init__(self, max_entries: int = 8, max_bytes: int = 2 * 1024**3) -> None:
        if max_entries < 0 or max_bytes < 0:
            raise ValueError("Embedding cache limits must be >= 0.")
        self.max_entries = int(max_entries)
        self.max_bytes = int(max_bytes)
        self._entries: "OrderedDict[CacheKey, EncodedImage]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @classmethod
    def from_settings(cls, settings) -> "EmbeddingCache":
        return cls(settings.embedding_cache_entries, settings.embedding_cache_bytes)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: CacheKey) -> bool:
        return key in self._entries

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: CacheKey) -> Optional[EncodedImage]:
        """The entry (now most recently used), or None; counts a hit or a miss."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, encoded: EncodedImage) -> None:
        with self._lock:
            previous = self._entries.pop(encoded.key, None)
            if previous is not None:
                self._bytes -= previous.nbytes
            if self.max_entries == 0 or encoded.nbytes > self.max_bytes:
                return
            self._entries[encoded.key] = encoded
            self._bytes += encoded.nbytes
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
                self.evictions += 1

    def discard_model(self, model_id: str) -> int:
        """Drop every embedding of one model (it was unloaded or its file changed); returns how many."""
        with self._lock:
            doomed = [key for key in self._entries if key.model_id == model_id]
            for key in doomed:
                self._bytes -= self._entries.pop(key).nbytes
            return len(doomed)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def stats(self) -> Dict[str, int]:
        with self._lock:
            return {
                "entries": len(self._entries),
                "bytes": self._bytes,
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
                "max_entries": self.max_entries,
                "max_bytes": self.max_bytes,
            }


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")
