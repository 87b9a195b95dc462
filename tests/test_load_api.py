"""Load on loopback: 8 concurrent clients, mixed routes and images, every answer identical to
the serial answer for the same request (no mixing between requests on different images)."""
from __future__ import annotations

import random
import threading
import time

import httpx
import numpy as np
import pytest

from tests.fixtures.api_fixtures import (  # noqa: F401
    FixedDetector,
    use_fixed_detector,
    ServerThread,
    api_engine,
    api_model_dir,
    b64,
    image_b64,
    png_bytes,
    sample_image,
)

CLIENTS = 8
REQUESTS_PER_CLIENT = 6
TIME_LIMIT_S = 240


def build_requests(client: httpx.Client):
    images = [sample_image(h, w, seed=i) for i, (h, w) in enumerate([(96, 128), (120, 80), (64, 64), (80, 96)])]
    requests = []
    for index, image in enumerate(images):
        h, w = image.shape[:2]
        encoded = image_b64(image)
        image_id = client.post("/sam/v2/images", json={"image": encoded}).json()["image_id"]
        point = [w * (0.3 + 0.1 * index), h * 0.5]
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[h // 4: h // 2, w // 4: w // 2] = 255
        requests += [
            ("POST", "/sam/sam-predict", {"sam_model_name": "tiny_sam.pth", "input_image": encoded,
                                          "sam_positive_points": [point]}),
            ("POST", "/sam/v2/predict", {"model": "tiny_sam.pth", "image_id": image_id, "points": [point],
                                         "mask_format": "rle"}),
            ("POST", "/sam/v2/predict", {"model": "tiny_sam.pth", "image": encoded, "boxes": [[2, 2, w / 2, h / 2]],
                                         "best_only": True, "postprocess": {"expand": 3}}),
            ("POST", "/sam/dilate-mask", {"input_image": encoded, "mask": b64(png_bytes(mask)), "dilate_amount": 6}),
        ]
    requests += [("GET", "/sam/heartbeat", None), ("GET", "/sam/sam-model", None)]
    return requests


def send(client: httpx.Client, request):
    method, path, body = request
    answer = client.request(method, path, json=body)
    return answer.status_code, answer.json()


def test_concurrent_clients_get_the_serial_answers(api_engine, tmp_path_factory):
    from fastapi import FastAPI

    from sd_webui_sam.api import mount_api

    app = FastAPI()
    use_fixed_detector(api_engine, FixedDetector(), tmp_path_factory.mktemp("gdino"))
    mount_api(app, api_engine)
    started = time.monotonic()
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=120, trust_env=False) as client:
        requests = build_requests(client)
        serial = [send(client, request) for request in requests]
        assert all(status == 200 for status, _ in serial), [s for s in serial if s[0] != 200]
        results = {}
        failures = []

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            order = [rng.randrange(len(requests)) for _ in range(REQUESTS_PER_CLIENT)]
            try:
                with httpx.Client(base_url=server.url, timeout=120, trust_env=False) as own:
                    results[seed] = [(i, send(own, requests[i])) for i in order]
            except Exception as error:  # reported below, with the seed
                failures.append((seed, repr(error)))

        threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=TIME_LIMIT_S)
        assert not any(t.is_alive() for t in threads), "clients did not finish in time"
        assert not failures, failures
        assert len(results) == CLIENTS
        for seed, answers in results.items():
            for index, answer in answers:
                assert answer == serial[index], (seed, requests[index][1])
        assert client.get("/sam/heartbeat").status_code == 200
    assert time.monotonic() - started < TIME_LIMIT_S
