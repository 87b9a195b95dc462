"""Mask-toolkit timing for ``./benchmark.sh``."""
from __future__ import annotations

import math
import time

import cv2
import numpy as np

from sd_webui_sam.masks import expand


def time_expand_4096(radius: float = 100) -> float:
    """Seconds to expand a 4096 x 4096 mask by ``radius`` (best of 3).

    The mask is a large disk and a smaller one, so the work covers most of the image
    (about the size of the object mask a user selects on a large image).
    """
    mask = np.zeros((4096, 4096), np.uint8)
    cv2.circle(mask, (2048, 2200), 1500, 1, -1)
    cv2.circle(mask, (3500, 600), 350, 1, -1)
    boolean = mask.astype(bool)
    best = math.inf
    for _ in range(3):
        started = time.perf_counter()
        expand(boolean, radius)
        best = min(best, time.perf_counter() - started)
    return best
