"""Whether two checkpoint files hold the same bytes, so that a renamed copy shares one loaded model.

Used by both model stores (SAM and GroundingDINO). A cheap sampled fingerprint nominates
candidates; only a candidate costs a full sha256 of both files, so loading a file that matches
nothing reads no more than before. Both are cached per :data:`FileKey`.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Dict, Tuple

from sd_webui_sam import checkpoints
from sd_webui_sam.downloads import file_sha256

#: (resolved path, size in bytes, modification time in ns): a file replaced in place gets a new key.
FileKey = Tuple[str, int, int]


def file_key(path: Path) -> FileKey:
    stat = Path(path).stat()
    return (str(path), stat.st_size, stat.st_mtime_ns)


def unchanged(path: Path, key: FileKey) -> bool:
    """Whether the file still is what ``key`` described (False once deleted)."""
    try:
        return file_key(path) == key
    except OSError:
        return False


class ContentIdentity:
    """Fingerprints and digests of checkpoint files, computed once per file version. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fingerprints: Dict[FileKey, str] = {}
        self._digests: Dict[FileKey, str] = {}

    def fingerprint(self, path: Path, key: FileKey) -> str:
        return self._cached(self._fingerprints, key, lambda: checkpoints.sampled_fingerprint(path))

    def digest(self, path: Path, key: FileKey) -> str:
        return self._cached(self._digests, key, lambda: file_sha256(path))

    def same(self, path: Path, key: FileKey, other_path: Path, other_key: FileKey) -> bool:
        """Whether two files (as their keys describe them, and still so on disk) hold the same bytes."""
        if key[1] != other_key[1] or not unchanged(other_path, other_key):
            return False
        if self.fingerprint(path, key) != self.fingerprint(other_path, other_key):
            return False
        return self.digest(path, key) == self.digest(other_path, other_key)

    def _cached(self, cache: Dict[FileKey, str], key: FileKey, compute) -> str:
        with self._lock:
            if key in cache:
                return cache[key]
        value = compute()  # outside the lock: a sha256 of a GB file must not block other lookups
        with self._lock:
            cache[key] = value
        return value
