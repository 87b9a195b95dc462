"""Timing of text -> boxes, for the project's benchmark command."""
from __future__ import annotations

import time
from typing import Dict

import numpy as np
import torch

from local_groundingdino.detector import Detector


def time_detection(detector: Detector, image_rgb: np.ndarray, caption: str = "hand, face", repeats: int = 3) -> Dict[str, float]:
    """Seconds per ``detect`` call (after one warm-up), including preprocessing and post-processing."""
    detector.detect(image_rgb, caption)
    device = detector.placement.device
    timings = []
    for _ in range(max(1, repeats)):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        detector.detect(image_rgb, caption)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings.append(time.perf_counter() - start)
    return {"mean_s": float(np.mean(timings)), "min_s": float(np.min(timings)), "repeats": float(len(timings))}
