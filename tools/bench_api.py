"""Speed figures for the lead's benchmark command (prints nothing, asserts nothing).

``api_latency`` : warm ``/sam/v2/predict`` with an image id vs ``/sam/sam-predict`` (which
sends and decodes the image on every call), over a real loopback server. Batch throughput is
in ``tools/bench_batch.py``.
"""
from __future__ import annotations

import base64
import io
import statistics
import time
from typing import Any, Dict, Sequence

import numpy as np
from PIL import Image


def _png_b64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _median_seconds(function, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def api_latency(engine: Any, model: str, image: np.ndarray, point: Sequence[float], repeats: int = 10) -> Dict[str, float]:
    """Median seconds per request, warm (embedding cached), for both routes and the ratio."""
    import httpx
    from fastapi import FastAPI

    from sd_webui_sam.api import mount_api
    from tools.server_thread import ServerThread

    app = FastAPI()
    mount_api(app, engine)
    encoded = _png_b64(image)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=600, trust_env=False) as client:
        image_id = client.post("/sam/v2/images", json={"image": encoded, "model": model}).json()["image_id"]
        v2_body = {"model": model, "image_id": image_id, "points": [list(point)], "best_only": True, "mask_format": "rle"}
        old_body = {"sam_model_name": model, "input_image": encoded, "sam_positive_points": [list(point)]}

        def v2():
            answer = client.post("/sam/v2/predict", json=v2_body)
            answer.raise_for_status()

        def old():
            answer = client.post("/sam/sam-predict", json=old_body)
            answer.raise_for_status()

        v2(), old()  # warm both paths
        v2_seconds = _median_seconds(v2, repeats)
        old_seconds = _median_seconds(old, repeats)
    return {"v2_image_id_s": v2_seconds, "sam_predict_s": old_seconds, "speedup": old_seconds / v2_seconds}
