"""Text prompts over the HTTP API with a real (tiny) GroundingDINO loaded through the Engine.

No fake detector: the routes reach ``engine.detect``, which loads the checkpoint from the
GroundingDINO folder through the engine's one store (served on 127.0.0.1 by uvicorn).
"""
from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.fixtures.api_fixtures import ServerThread, api_model_dir, decode_png, image_b64, sample_image  # noqa: F401
from tests.fixtures.text_prompt_fixtures import gdino_folder, tiny_text_engine

H, W = 96, 128
ALL = {"box_threshold": 0.0, "text_threshold": 0.0}


@pytest.fixture(scope="module")
def gdino(tmp_path_factory):
    return gdino_folder(tmp_path_factory.mktemp("gdino"))


@pytest.fixture(scope="module")
def engine(api_model_dir, gdino):
    return tiny_text_engine(api_model_dir, *gdino)


def _serve(engine):
    from fastapi import FastAPI

    from sd_webui_sam.api import mount_api

    app = FastAPI()
    mount_api(app, engine)  # no detector given: the API must use the engine's
    return ServerThread(app)


@pytest.fixture(scope="module")
def client(engine):
    with _serve(engine) as running, httpx.Client(base_url=running.url, timeout=120, trust_env=False) as c:
        yield c


@pytest.fixture(scope="module")
def image():
    return sample_image(H, W)


def _expected_boxes(engine, image, caption="hand, face", text_threshold=0.0, like_reference=False, keep_empty=False):
    """The boxes a route should answer, clamped to the image; boxes without area dropped
    unless ``keep_empty`` (the reference rule keeps them so that indices stay the reference's)."""
    found = engine.detect("groundingdino_swint_ogc.pth", image, caption, 0.0, text_threshold,
                          like_reference=like_reference)
    boxes = []
    for d in found:
        x1, y1, x2, y2 = d.box
        x1, x2 = min(max(x1, 0.0), W), min(max(x2, 0.0), W)
        y1, y2 = min(max(y1, 0.0), H), min(max(y2, 0.0), H)
        if keep_empty or (x2 - x1 >= 1 and y2 - y1 >= 1):
            boxes.append([x1, y1, x2, y2])
    return boxes, found


def test_dino_predict_with_the_reference_model_name(client, engine, image):
    body = {"input_image": image_b64(image), "text_prompt": "hand, face", "box_threshold": 0.0,
            "dino_model_name": "GroundingDINO_SwinT_OGC (694MB)"}
    answer = client.post("/sam/dino-predict", json=body)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    # the reference's rule: every box past box_threshold in query order, GroundingDINO's own phrase strings
    expected, found = _expected_boxes(engine, image, text_threshold=0.25, like_reference=True, keep_empty=True)
    assert expected and np.allclose(data["boxes"], expected, atol=1e-3)
    assert data["phrases"] == [d.phrase for d in found]
    assert len(found) > len(_expected_boxes(engine, image, text_threshold=0.25)[0])  # no phrase threshold
    assert decode_png(data["image_with_box"]).size == (W, H)
    assert engine.stats()["loaded_detectors"] == ["groundingdino_swint_ogc.pth"]


def test_reference_name_of_a_missing_file_says_which_file(client, image):
    body = {"input_image": image_b64(image), "text_prompt": "hand", "dino_model_name": "GroundingDINO_SwinB (938MB)"}
    answer = client.post("/sam/dino-predict", json=body)
    assert answer.status_code == 404
    assert "groundingdino_swinb_cogcoor.pth" in answer.json()["msg"]


def test_v2_detect_names_each_box(client, engine, image):
    answer = client.post("/sam/v2/detect", json={"image": image_b64(image), "text": "hand . face", **ALL})
    assert answer.status_code == 200, answer.text
    detections = answer.json()["detections"]
    expected, _ = _expected_boxes(engine, image, "hand . face")
    assert np.allclose([d["box"] for d in detections], expected, atol=1e-3)
    assert all(d["phrase"] in ("hand", "face") and 0 <= d["score"] <= 1 for d in detections)


def test_sam_predict_with_dino_segments_the_kept_boxes(client, engine, image):
    body = {"input_image": image_b64(image), "dino_enabled": True, "dino_text_prompt": "hand, face",
            "dino_box_threshold": 0.0}
    data = client.post("/sam/sam-predict", json=body).json()
    expected, _ = _expected_boxes(engine, image, text_threshold=0.25, like_reference=True)
    assert len(data["masks"]) == 3 and np.allclose(data["boxes"], expected, atol=1e-3)
    assert f"{len(expected)} box(es)" in data["msg"]
    picked = client.post("/sam/sam-predict", json={**body, "dino_preview_checkbox": True,
                                                   "dino_preview_boxes_selection": [1]}).json()
    # indices are those of /sam/dino-predict's list (query order, boxes without area included)
    listed, _ = _expected_boxes(engine, image, text_threshold=0.25, like_reference=True, keep_empty=True)
    assert np.allclose(picked["boxes"], [listed[1]], atol=1e-3)


def test_sam_predict_without_boxes_suggests_lowering_the_threshold(client, image):
    body = {"input_image": image_b64(image), "dino_enabled": True, "dino_text_prompt": "hand",
            "dino_box_threshold": 1.0}
    data = client.post("/sam/sam-predict", json=body).json()
    assert "masks" not in data and "threshold" in data["msg"].lower()


def test_v2_predict_with_text_gives_one_object_per_box_or_merged(client, engine, image):
    expected, _ = _expected_boxes(engine, image)
    body = {"image": image_b64(image), "text": "hand, face", **ALL, "multimask": False, "mask_format": "rle"}
    data = client.post("/sam/v2/predict", json=body).json()
    assert len(data["objects"]) == len(expected)
    assert np.allclose([o["prompt_box"] for o in data["objects"]], expected, atol=1e-3)
    assert all(o["phrase"] in ("hand", "face") for o in data["objects"])
    merged = client.post("/sam/v2/predict", json={**body, "merge": True}).json()
    assert len(merged["objects"]) == 1
    nothing = client.post("/sam/v2/predict", json={**body, "box_threshold": 1.0}).json()
    assert nothing["objects"] == [] and "box_threshold" in nothing["msg"]


def test_text_prompts_segment_at_most_max_objects_the_most_confident(client, engine, image, monkeypatch):
    """A threshold that lets every query through must not run SAM on every box (900 boxes took a
    WebUI past 9.8 GB): the most confident 'max objects' are segmented, and the answer says so."""
    found = engine.detect("groundingdino_swint_ogc.pth", image, "hand, face", 0.0, 0.0)
    assert len(found) > 2
    monkeypatch.setattr(engine.settings, "max_objects", 2)
    body = {"image": image_b64(image), "text": "hand, face", **ALL, "multimask": False, "mask_format": "rle"}
    data = client.post("/sam/v2/predict", json=body).json()
    assert len(data["objects"]) == 2
    assert f"{len(found) - 2} less confident detection(s) were left out" in data["msg"]
    reference = client.post("/sam/sam-predict", json={"input_image": image_b64(image), "dino_enabled": True,
                                                      "dino_text_prompt": "hand, face", "dino_box_threshold": 0.0}).json()
    assert len(reference["boxes"]) == 2 and "left out (max objects 2)" in reference["msg"]
    too_many = client.post("/sam/v2/predict", json={"image": image_b64(image), "boxes": [[0, 0, 10, 10]] * 3})
    assert too_many.status_code == 400 and "at most 2 objects" in too_many.json()["msg"]


@pytest.mark.parametrize("text", ["", "  ", "."])
def test_empty_text_is_a_clear_error(client, image, text):
    answer = client.post("/sam/v2/detect", json={"image": image_b64(image), "text": text})
    assert answer.status_code == 400 and "empty" in answer.json()["msg"]


def test_no_groundingdino_model_says_where_to_put_it(api_model_dir, tmp_path, image):
    empty = tmp_path / "grounding-dino"
    engine = tiny_text_engine(api_model_dir, empty)
    with _serve(engine) as running, httpx.Client(base_url=running.url, timeout=60, trust_env=False) as c:
        answer = c.post("/sam/dino-predict", json={"input_image": image_b64(image), "text_prompt": "hand"})
    assert answer.status_code == 404
    message = answer.json()["msg"]
    assert "groundingdino_swint_ogc.pth" in message and str(empty) in message


def test_batch_text_prompts_use_the_engine_detector(engine, image, tmp_path):
    from PIL import Image

    from sd_webui_sam import batch

    source = tmp_path / "in"
    source.mkdir()
    Image.fromarray(image).save(source / "a.png")
    options = batch.BatchOptions(inputs=[source], output_dir=tmp_path / "out", model="tiny_sam.pth",
                                 text="hand, face", box_threshold=0.0, text_threshold=0.0, outputs=("mask",))
    report = batch.run_batch(engine, options)  # no detector given: the engine's
    assert report.done == 1 and not report.failed and report.outputs_written >= 1
