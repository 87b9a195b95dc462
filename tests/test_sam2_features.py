"""A SAM 2.1 checkpoint in every feature that goes through the engine: clicks and boxes (the
encoder once per image, clicks through the decoder alone, high-res features cached with the
embedding), the reference-compatible and v2 API routes, and batch."""
from __future__ import annotations

import httpx
import numpy as np
import pytest
from PIL import Image

from sam2_image.hiera import Sam2ImageEncoder
from sd_webui_sam.batch import BatchOptions, run_batch
from sd_webui_sam.predictor import Prompts
from tests.fixtures.api_fixtures import ServerThread, image_b64, make_engine, sample_image
from tests.fixtures.sam2_checkpoints import write_tiny_sam2

MODEL = "sam2.1_hiera_tiny_reduced.pt"
H, W = 96, 128


@pytest.fixture(scope="module")
def sam2_engine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sam2_models")
    write_tiny_sam2(folder / MODEL)
    return make_engine(folder)


def test_click_and_box_through_the_engine_encode_once(sam2_engine, monkeypatch):
    engine = sam2_engine
    assert engine.model_label(MODEL).startswith("SAM 2.1 Hiera (custom")
    predictor = engine.predictor(MODEL)
    calls = []
    encoder_forward = Sam2ImageEncoder.forward
    monkeypatch.setattr(Sam2ImageEncoder, "forward", lambda self, pixels: calls.append(1) or encoder_forward(self, pixels))
    image = sample_image(H, W, seed=5)
    first = engine.segment(MODEL, image, Prompts(points=[(60, 40)], labels=[1]))
    assert first.masks.shape == (1, 3, H, W) and first.scores.shape == (1, 3)
    second = engine.segment(MODEL, image, Prompts(points=[(60, 40), (10, 10)], labels=[1, 0]), multimask_output=False)
    assert second.masks.shape == (1, 1, H, W)
    boxes = engine.segment(MODEL, image, Prompts(boxes=[(5, 5, 60, 50), (40, 30, 120, 90)]), multimask_output=False)
    assert boxes.masks.shape == (2, 1, H, W)
    refined = engine.segment(MODEL, image, Prompts(points=[(60, 40)], labels=[1], mask_input=first.low_res_logits[0, 0]))
    assert refined.masks.shape == (1, 3, H, W)
    assert np.abs(first.low_res_logits).max() <= 32.0
    assert len(calls) == 1, "the encoder ran again for a prompt on an already encoded image"
    encoded = predictor.encode(image)
    assert {"image_embeddings", "high_res_s0", "high_res_s1"} <= set(encoded.features)
    assert len(calls) == 1


@pytest.fixture(scope="module")
def client(sam2_engine):
    from fastapi import FastAPI

    from sd_webui_sam.api import ApiSettings, mount_api
    from sd_webui_sam.metrics import ApiMetrics

    app = FastAPI()
    mount_api(app, sam2_engine, settings=ApiSettings(), metrics=ApiMetrics())
    with ServerThread(app) as running, httpx.Client(base_url=running.url, timeout=120, trust_env=False) as c:
        yield c


def test_reference_route_by_model_name_and_v2_predict(client):
    image = sample_image(H, W, seed=6)
    assert MODEL in client.get("/sam/sam-model").json()
    answer = client.post("/sam/sam-predict", json={"input_image": image_b64(image), "sam_model_name": MODEL,
                                                    "sam_positive_points": [[60, 40]], "sam_negative_points": [[5, 5]]})
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert len(data["masks"]) == 3 and len(data["blended_images"]) == 3
    v2 = client.post("/sam/v2/predict", json={"model": MODEL, "image": image_b64(image), "boxes": [[5, 5, 60, 50]]})
    assert v2.status_code == 200, v2.text
    assert len(v2.json()["objects"]) == 1 and len(v2.json()["objects"][0]["masks"]) == 3


def test_batch_with_a_sam2_model(sam2_engine, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(2):
        Image.fromarray(sample_image(H, W, seed=index)).save(folder / f"img{index}.png")
    report = run_batch(sam2_engine, BatchOptions(inputs=[folder], output_dir=tmp_path / "out", model=MODEL,
                                                 points=[(60, 40)], labels=[1], outputs=("mask",), multimask=False))
    assert report.done == 2
    masks = sorted((tmp_path / "out").rglob("*mask*.png"))
    assert len(masks) == 2 and all(Image.open(path).size == (W, H) for path in masks)
