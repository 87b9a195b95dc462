"""Contract tests: the reference extension's request and response shapes, replayed against a
real uvicorn server on 127.0.0.1 with a real HTTP client, plus the v2 routes."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.fixtures.api_fixtures import (  # noqa: F401  (fixtures)
    FixedDetector,
    ServerThread,
    api_engine,
    api_model_dir,
    b64,
    decode_png,
    image_b64,
    png_bytes,
    sample_image,
    use_fixed_detector,
)

H, W = 96, 128


@pytest.fixture(scope="module")
def allowed_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("allowed")
    (root / "inside.png").write_bytes(png_bytes(sample_image(H, W)))
    return root


@pytest.fixture(scope="module")
def fixed_detector():
    return FixedDetector()


@pytest.fixture(scope="module")
def server(api_engine, allowed_root, fixed_detector, tmp_path_factory):
    from fastapi import FastAPI

    from sd_webui_sam.api import ApiSettings, SourcePolicy, mount_api
    from sd_webui_sam.metrics import ApiMetrics

    app = FastAPI()
    settings = ApiSettings(source_policy=SourcePolicy(allowed_roots=(allowed_root,)))
    use_fixed_detector(api_engine, fixed_detector, tmp_path_factory.mktemp("gdino"))
    mount_api(app, api_engine, settings=settings, metrics=ApiMetrics())
    with ServerThread(app) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120, trust_env=False) as c:
        yield c


@pytest.fixture(scope="module")
def image():
    return sample_image(H, W)


def test_heartbeat_and_model_list_is_live(client, api_model_dir):
    assert client.get("/sam/heartbeat").json() == {"msg": "Success!"}
    models = client.get("/sam/sam-model").json()
    assert models == ["sam_vit_h_4b8939.pth", "tiny_sam.pth"]
    extra = api_model_dir / "added_later.pth"
    extra.write_bytes((api_model_dir / "tiny_sam.pth").read_bytes())
    try:
        assert "added_later.pth" in client.get("/sam/sam-model").json()  # the reference's list was frozen at import
    finally:
        extra.unlink()
    assert "added_later.pth" not in client.get("/sam/sam-model").json()


def test_sam_predict_reference_shape(client, image):
    body = {"input_image": image_b64(image), "sam_positive_points": [[60, 48]], "sam_negative_points": [[5, 5]]}
    answer = client.post("/sam/sam-predict", json=body)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["msg"] == "SAM inference with 0 box(es), 1 positive prompts, 1 negative prompts done."
    for key in ("blended_images", "masks", "masked_images"):
        assert len(data[key]) == 3
    mask = decode_png(data["masks"][0])
    assert mask.mode == "1" and mask.size == (W, H)
    matte = decode_png(data["masked_images"][0])
    assert matte.mode == "RGBA" and matte.size == (W, H)
    alpha = np.asarray(matte)[..., 3] > 0
    assert np.array_equal(alpha, np.asarray(mask, dtype=bool))  # the matte is the image inside the mask
    assert decode_png(data["blended_images"][1]).size == (W, H)


def test_sam_predict_matches_engine(client, api_engine, image):
    from sd_webui_sam.predictor import Prompts

    body = {"sam_model_name": "tiny_sam.pth", "input_image": image_b64(image), "sam_positive_points": [[60, 48]]}
    data = client.post("/sam/sam-predict", json=body).json()
    expected = api_engine.segment("tiny_sam.pth", image, Prompts(points=[(60, 48)], labels=[1]), multimask_output=True)
    for index in range(3):
        got = np.asarray(decode_png(data["masks"][index]), dtype=bool)
        assert np.array_equal(got, expected.masks[:, index].any(axis=0))


def test_sam_predict_without_prompts_is_a_status_message(client, image):
    answer = client.post("/sam/sam-predict", json={"input_image": image_b64(image)})
    assert answer.status_code == 200
    assert answer.json() == {"msg": "You neither added point prompts nor enabled GroundingDINO. Segmentation cannot be generated."}


def test_sam_predict_with_dino_boxes_returns_boxes(client, image):
    body = {"input_image": image_b64(image), "dino_enabled": True, "dino_text_prompt": "dog . cat",
            "dino_box_threshold": 0.3, "sam_positive_points": [[60, 48]]}
    data = client.post("/sam/sam-predict", json=body).json()
    assert data["msg"].startswith("SAM inference with 2 box(es), 1 positive prompts")
    assert len(data["boxes"]) == 2 and all(len(b) == 4 for b in data["boxes"])
    assert all(0 <= b[2] <= W for b in data["boxes"])  # detector boxes are clipped to the image
    selected = client.post("/sam/sam-predict", json={**body, "dino_preview_checkbox": True,
                                                      "dino_preview_boxes_selection": [1]}).json()
    assert selected["boxes"] == [data["boxes"][1]]


def test_dino_predict_reference_shape_plus_boxes(client, image):
    body = {"input_image": image_b64(image), "text_prompt": "dog . cat . bird", "box_threshold": 0.6}
    data = client.post("/sam/dino-predict", json=body).json()
    assert data["msg"] == "Done"
    assert decode_png(data["image_with_box"]).size == (W, H)
    assert len(data["boxes"]) == 2  # the double scores 0.9, 0.7, 0.5
    assert data["phrases"][:2] == ["dog", "cat"]


def test_dilate_mask_grows_by_half_the_amount(client, image):
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[40:50, 60:70] = 255
    body = {"input_image": image_b64(image), "mask": b64(png_bytes(mask)), "dilate_amount": 10}
    data = client.post("/sam/dilate-mask", json=body).json()
    assert set(data) == {"blended_image", "mask", "masked_image"}
    grown = np.asarray(decode_png(data["mask"]), dtype=bool)
    rows = np.flatnonzero(grown.any(axis=1))
    assert rows[0] == 35 and rows[-1] == 54  # radius 5 = half the reference's kernel diameter
    unchanged = client.post("/sam/dilate-mask", json={**body, "dilate_amount": 0}).json()
    assert np.array_equal(np.asarray(decode_png(unchanged["mask"]), dtype=bool), mask > 0)


@pytest.mark.parametrize("route", ["/sam/controlnet-seg", "/sam/category-mask"])
def test_autosam_routes_take_the_embedded_body(client, image, route):
    payload = {"input_image": image_b64(image), "category": "7+12"}
    flat = client.post(route, json=payload)
    assert flat.status_code == 422  # both keys are required, as in the reference
    answer = client.post(route, json={"payload": payload, "autosam_conf": {}})
    # No ControlNet segmenter in this process and no uploaded map: a clear 404, never a 500.
    assert answer.status_code == 404, answer.text
    assert "ControlNet" in answer.json()["msg"]


def test_user_errors_are_4xx_with_a_message(client, image, allowed_root, tmp_path):
    good = image_b64(image)
    outside = tmp_path / "secret.png"
    outside.write_bytes(png_bytes(image))
    cases = [
        ({"input_image": "not base64 !!", "sam_positive_points": [[1, 1]]}, 400, "base64"),
        ({"input_image": b64(b"hello, not an image"), "sam_positive_points": [[1, 1]]}, 400, "image"),
        ({"input_image": b64(png_bytes(image)[:200]), "sam_positive_points": [[1, 1]]}, 400, "image"),
        ({"input_image": good, "sam_positive_points": [[W + 10, 1]]}, 400, "outside"),
        ({"input_image": good, "sam_model_name": "../../etc/passwd", "sam_positive_points": [[1, 1]]}, 400, "folders"),
        ({"input_image": good, "sam_model_name": "missing.pth", "sam_positive_points": [[1, 1]]}, 404, "not found"),
        ({"input_image": str(outside), "sam_positive_points": [[1, 1]]}, 403, "path"),
        ({"input_image": "/etc/passwd", "sam_positive_points": [[1, 1]]}, 403, "path"),
        ({"input_image": good, "dino_enabled": True, "dino_text_prompt": "", "sam_positive_points": [[1, 1]]}, 400, "empty"),
        ({"input_image": good, "dino_enabled": True, "dino_text_prompt": "x" * 5000}, 400, "longer"),
        ({"input_image": good, "dino_enabled": True, "dino_text_prompt": "dog", "dino_box_threshold": 7}, 400, "between"),
    ]
    for body, status, words in cases:
        answer = client.post("/sam/sam-predict", json=body)
        assert answer.status_code == status, (body.get("input_image", "")[:40], answer.text)
        assert words in answer.json()["msg"]
    nan = client.post("/sam/sam-predict", content=json.dumps({"input_image": good, "sam_positive_points": [[float("nan"), 1]]}),
                      headers={"content-type": "application/json"})
    assert nan.status_code in (400, 422)
    inside = client.post("/sam/sam-predict", json={"input_image": str(allowed_root / "inside.png"),
                                                    "sam_positive_points": [[10, 10]]})
    assert inside.status_code == 200 and len(inside.json()["masks"]) == 3


def test_pixel_limit_is_413(api_engine, image):
    from fastapi import FastAPI

    from sd_webui_sam.api import mount_api

    limit = api_engine.settings.max_image_pixels
    api_engine.settings.max_image_pixels = H * W - 1
    try:
        app = FastAPI()
        mount_api(app, api_engine)
        with ServerThread(app) as running, httpx.Client(base_url=running.url, timeout=60, trust_env=False) as c:
            answer = c.post("/sam/sam-predict", json={"input_image": image_b64(image), "sam_positive_points": [[1, 1]]})
    finally:
        api_engine.settings.max_image_pixels = limit
    assert answer.status_code == 413


def test_v2_image_id_flow_and_outputs(client, image):
    uploaded = client.post("/sam/v2/images", json={"image": image_b64(image), "model": "tiny_sam.pth"}).json()
    assert uploaded["width"] == W and uploaded["height"] == H and uploaded["encoded"] is True
    image_id = uploaded["image_id"]
    base = {"model": "tiny_sam.pth", "image_id": image_id, "points": [[60, 48], [5, 5]], "labels": [1, 0]}
    full = client.post("/sam/v2/predict", json=base).json()
    assert full["image_id"] == image_id and len(full["objects"]) == 1
    candidates = full["objects"][0]["masks"]
    assert len(candidates) == 3
    best = client.post("/sam/v2/predict", json={**base, "best_only": True, "mask_format": "rle", "return_logits": True}).json()
    (only,) = best["objects"][0]["masks"]
    assert only["score"] == max(c["score"] for c in candidates)
    from sd_webui_sam import rle

    decoded = np.asarray(rle.decode(only["mask"]), dtype=bool)
    best_png = next(c for c in candidates if c["score"] == only["score"])
    assert np.array_equal(decoded, np.asarray(decode_png(best_png["mask"])) > 127)
    assert only["area"] == int(decoded.sum())
    # refining with the returned logits is accepted and answers masks of the image's size
    refined = client.post("/sam/v2/predict", json={**base, "previous_logits": only["logits"], "multimask": False}).json()
    assert len(refined["objects"][0]["masks"]) == 1
    # the same request with the image instead of its id answers the same masks
    again = client.post("/sam/v2/predict", json={**{k: v for k, v in base.items() if k != "image_id"},
                                                  "image": image_b64(image)}).json()
    assert [m["mask"] for m in again["objects"][0]["masks"]] == [m["mask"] for m in candidates]


def test_v2_boxes_per_object_and_merged(client, image):
    body = {"model": "tiny_sam.pth", "image": image_b64(image), "boxes": [[10, 10, 60, 60], [70, 20, 120, 90]],
            "best_only": True, "mask_format": "rle"}
    per_object = client.post("/sam/v2/predict", json=body).json()
    assert [o["prompt_box"] for o in per_object["objects"]] == [[10, 10, 60, 60], [70, 20, 120, 90]]
    merged = client.post("/sam/v2/predict", json={**body, "merge": True}).json()
    assert len(merged["objects"]) == 1
    from sd_webui_sam import rle

    union = np.zeros((H, W), dtype=bool)
    for obj in per_object["objects"]:
        union |= np.asarray(rle.decode(obj["masks"][0]["mask"]), dtype=bool)
    assert np.array_equal(np.asarray(rle.decode(merged["objects"][0]["masks"][0]["mask"]), dtype=bool), union)


def test_v2_postprocess_invert_and_text(client, image):
    body = {"model": "tiny_sam.pth", "image": image_b64(image), "points": [[60, 48]], "best_only": True}
    plain = client.post("/sam/v2/predict", json=body).json()["objects"][0]["masks"][0]
    inverted = client.post("/sam/v2/predict", json={**body, "postprocess": {"invert": True}}).json()["objects"][0]["masks"][0]
    assert plain["area"] + inverted["area"] == H * W
    feathered = client.post("/sam/v2/predict", json={**body, "postprocess": {"feather": 4}}).json()["objects"][0]["masks"][0]
    values = np.unique(np.asarray(decode_png(feathered["mask"])))
    if 0 < plain["area"] < H * W:
        assert len(values) > 2  # a soft edge
    text = client.post("/sam/v2/predict", json={"model": "tiny_sam.pth", "image": image_b64(image), "text": "dog",
                                               "best_only": True}).json()
    assert text["objects"][0]["phrase"] == "dog" and text["objects"][0]["detection_score"] == pytest.approx(0.9)
    nothing = client.post("/sam/v2/predict", json={"model": "tiny_sam.pth", "image": image_b64(image), "text": "dog",
                                                  "box_threshold": 0.95})
    assert nothing.status_code == 200 and nothing.json()["objects"] == []
    assert client.post("/sam/v2/predict", json={"image": image_b64(image)}).status_code == 400


def test_v2_health_models_detect_metrics(client, image):
    health = client.get("/sam/v2/health").json()
    assert health["status"] == "ok" and "tiny_sam.pth" in health["models_available"] and health["device"]
    models = client.get("/sam/v2/models").json()["models"]
    assert {m["name"] for m in models} == {"sam_vit_h_4b8939.pth", "tiny_sam.pth"}
    detections = client.post("/sam/v2/detect", json={"image": image_b64(image), "text": "dog . cat"}).json()["detections"]
    assert [d["phrase"] for d in detections] == ["dog", "cat"]
    assert client.post("/sam/v2/predict", json={"image_id": "0" * 32, "points": [[1, 1]]}).status_code == 404
    metrics = client.get("/metrics").text
    assert 'sam_api_requests_total{route="/sam/v2/detect",status="200"}' in metrics
    assert "sam_embedding_cache_hit_ratio" in metrics
    assert 'sam_api_errors_total{kind="client",route="/sam/v2/predict"}' in metrics


def test_v2_batch_is_off_by_default(client, tmp_path):
    answer = client.post("/sam/v2/batch", json={"inputs": [str(tmp_path)], "output_dir": str(tmp_path / "out"),
                                               "points": [[1, 1]]})
    assert answer.status_code == 403 and "off" in answer.json()["detail"]


def test_openapi_describes_every_request_field(client):
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    for name in ("SamPredictRequest", "DINOPredictRequest", "DilateMaskRequest", "PredictV2Request",
                 "ImageUploadRequest", "DetectV2Request", "BatchV2Request", "MaskPostprocess", "AutoSAMConfig"):
        properties = components[name]["properties"]
        assert properties, name
        for field, spec in properties.items():
            assert spec.get("description"), (name, field)
    assert "/sam/v2/predict" in schema["paths"] and "/sam/sam-predict" in schema["paths"]


def test_api_auth_protects_our_routes(api_engine, image):
    from fastapi import FastAPI

    from sd_webui_sam.api import mount_api

    app = FastAPI()
    mount_api(app, api_engine, auth="alice:secret,bob:pw")
    with ServerThread(app) as running, httpx.Client(base_url=running.url, timeout=60, trust_env=False) as c:
        assert c.get("/sam/heartbeat").status_code == 401
        assert c.get("/sam/heartbeat", auth=("alice", "wrong")).status_code == 401
        assert c.get("/sam/heartbeat", auth=("bob", "pw")).json() == {"msg": "Success!"}
        assert c.post("/sam/v2/predict", json={}).status_code == 401
        assert c.get("/sam/v2/health", auth=("alice", "secret")).status_code == 200


def test_mounting_twice_adds_routes_once(api_engine):
    from fastapi import FastAPI

    from sd_webui_sam.api import mount_api

    app = FastAPI()
    first = mount_api(app, api_engine)
    count = len(app.routes)
    assert mount_api(app, api_engine) is first and len(app.routes) == count


@pytest.mark.parametrize("shape", [(1, 3000), (3000, 1)], ids=["1x3000", "3000x1"])
def test_a_thin_picture_is_segmented_not_a_500(client, shape):
    # issue #19 item 1: SAM's resize rule gave a 0-pixel side and a ValueError
    height, width = shape
    thin = image_b64(sample_image(height, width, seed=5))
    uploaded = client.post("/sam/v2/images", json={"image": thin, "model": "tiny_sam.pth"})
    assert uploaded.status_code == 200, uploaded.text
    assert (uploaded.json()["width"], uploaded.json()["height"]) == (width, height)
    answer = client.post("/sam/sam-predict", json={"sam_model_name": "tiny_sam.pth", "input_image": thin,
                                                    "sam_positive_points": [[width / 2, height / 2]]})
    assert answer.status_code == 200, answer.text
    assert decode_png(answer.json()["masks"][0]).size == (width, height)


def test_v2_several_boxes_do_not_cross_talk(client, image):
    # issue #19 item 2: a point inside box 1 must not change box 2's mask or score
    base = {"model": "tiny_sam.pth", "image": image_b64(image), "multimask": False, "mask_format": "rle",
            "return_logits": True}
    both = client.post("/sam/v2/predict", json={**base, "boxes": [[15, 15, 55, 45], [50, 34, 95, 68]],
                                                "points": [[35, 30]], "labels": [1]}).json()
    alone = client.post("/sam/v2/predict", json={**base, "boxes": [[50, 34, 95, 68]]}).json()
    second, single = both["objects"][1]["masks"][0], alone["objects"][0]["masks"][0]
    assert second["score"] == pytest.approx(single["score"], abs=1e-4)
    from sd_webui_sam import rle

    got, expected = (np.asarray(rle.decode(m["mask"]), dtype=bool) for m in (second, single))
    got_logits, expected_logits = (np.frombuffer(base64.b64decode(m["logits"]), dtype=np.float32) for m in (second, single))
    np.testing.assert_allclose(got_logits, expected_logits, atol=1e-4)
    assert np.array_equal(got, expected)


def test_reference_routes_segment_the_raw_colours_of_a_semi_transparent_picture(client, api_engine):
    # issue #19 item 3: the reference segments the RGB channels under alpha 128; v2 composites
    # on white unless asked not to
    from sd_webui_sam.images import load_image
    from sd_webui_sam.predictor import Prompts

    rgba = np.dstack([sample_image(H, W, seed=7), np.full((H, W), 128, np.uint8)])
    encoded = b64(png_bytes(rgba, "RGBA"))
    raw, white = rgba[..., :3], load_image(png_bytes(rgba, "RGBA"))
    assert not np.array_equal(raw, white)
    prompts = Prompts(points=[(60, 48)], labels=[1])
    expected = {name: api_engine.segment("tiny_sam.pth", picture, prompts, multimask_output=True).masks[0]
                for name, picture in (("raw", raw), ("white", white))}
    assert not np.array_equal(expected["raw"], expected["white"])
    body = {"sam_model_name": "tiny_sam.pth", "input_image": encoded, "sam_positive_points": [[60, 48]]}
    reference = client.post("/sam/sam-predict", json=body).json()
    for index in range(3):
        assert np.array_equal(np.asarray(decode_png(reference["masks"][index]), dtype=bool), expected["raw"][index])
    v2 = {"model": "tiny_sam.pth", "image": encoded, "points": [[60, 48]], "mask_format": "rle"}
    from sd_webui_sam import rle

    for transparency, name in ((None, "white"), ("white", "white"), ("ignore", "raw")):
        body = v2 if transparency is None else {**v2, "transparency": transparency}
        masks = client.post("/sam/v2/predict", json=body).json()["objects"][0]["masks"]
        for index in range(3):
            assert np.array_equal(np.asarray(rle.decode(masks[index]["mask"]), dtype=bool), expected[name][index])
    assert client.post("/sam/v2/predict", json={**v2, "transparency": "grey"}).status_code == 422


def test_reference_routes_ask_for_the_reference_detection_rule(client, image, fixed_detector):
    # issue #19 item 3: no extra phrase threshold, query order and the reference's phrase strings
    # on /sam/*; v2 keeps its own rule unless asked (the rule itself: tests/test_groundingdino.py)
    fixed_detector.rules.clear()
    client.post("/sam/dino-predict", json={"input_image": image_b64(image), "text_prompt": "dog"})
    client.post("/sam/sam-predict", json={"input_image": image_b64(image), "dino_enabled": True,
                                          "dino_text_prompt": "dog", "sam_model_name": "tiny_sam.pth"})
    client.post("/sam/v2/detect", json={"image": image_b64(image), "text": "dog"})
    client.post("/sam/v2/detect", json={"image": image_b64(image), "text": "dog", "detection_rule": "reference"})
    assert fixed_detector.rules == [True, True, False, True]
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    for name in ("PredictV2Request", "DetectV2Request"):
        assert "query order" in schema[name]["properties"]["detection_rule"]["description"]
        assert "composites them on white" in schema[name]["properties"]["transparency"]["description"]


def test_unusable_files_are_listed_apart_and_never_the_default(client, image, api_model_dir):
    # issue #19 item 6: a bogus file sorting first must not become the default model
    bogus = api_model_dir / "aaa_bogus.safetensors"
    bogus.write_bytes(b"not a safetensors file at all")
    try:
        answer = client.post("/sam/v2/predict", json={"image": image_b64(image), "points": [[60, 48]],
                                                      "mask_format": "none"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == "sam_vit_h_4b8939.pth"
        assert "aaa_bogus.safetensors" not in client.get("/sam/sam-model").json()
        health = client.get("/sam/v2/health").json()
        assert "aaa_bogus.safetensors" not in health["models_available"]
        (listed,) = health["models_unusable"]
        assert listed["name"] == "aaa_bogus.safetensors" and listed["reason"]
        models = client.get("/sam/v2/models").json()
        assert "aaa_bogus.safetensors" not in {m["name"] for m in models["models"]}
        assert [u["name"] for u in models["unusable"]] == ["aaa_bogus.safetensors"]
    finally:
        bogus.unlink()


def test_every_error_has_one_shape_and_types_are_not_coerced(client, image):
    # issue #19 item 9: `true` as a model name was searched for as 'True'; FastAPI's 422 had no msg
    for body in ({"input_image": image_b64(image), "sam_model_name": True},
                 {"input_image": image_b64(image), "sam_model_name": 12},
                 {"input_image": 5}):
        answer = client.post("/sam/sam-predict", json={"sam_positive_points": [[1, 1]], **body})
        assert answer.status_code == 422, answer.text
        data = answer.json()
        assert isinstance(data["msg"], str) and data["msg"] == data["detail"]
        assert ("sam_model_name" in data["msg"]) or ("input_image" in data["msg"])
    answer = client.post("/sam/v2/predict", json={"image": image_b64(image), "points": [[1, 1]], "model": False})
    assert answer.status_code == 422 and "model" in answer.json()["msg"]
    assert client.post("/sam/v2/detect", json={"image": image_b64(image), "text": 7}).status_code == 422
    # NaN where a number belongs: pydantic 2 echoes it in its errors, and the 422 failed to render (500)
    answer = client.post("/sam/dilate-mask", content=b'{"input_image": "x", "mask": "y", "dilate_amount": NaN}',
                         headers={"content-type": "application/json"})
    assert answer.status_code == 422 and "dilate_amount" in answer.json()["msg"], answer.text
    # a body that is not UTF-8: FastAPI raises Starlette's HTTPException (400), which had no msg
    answer = client.post("/sam/sam-predict", content=b"\x14\xff\xfe{", headers={"content-type": "application/json"})
    assert answer.status_code == 400 and answer.json()["msg"] == answer.json()["detail"], answer.text


def test_the_openapi_document_publishes_the_error_shape_we_send(client):
    # FastAPI published its own 422 body (a list under "detail") for every route; ours differs
    document = client.get("/openapi.json").json()
    error_schema = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert "422" not in operation["responses"], (method, path)
            for status in ("4XX", "5XX"):
                assert operation["responses"][status]["content"]["application/json"]["schema"] == error_schema
    published = document["components"]["schemas"]["ErrorResponse"]
    answer = client.post("/sam/sam-predict", json={"input_image": 5})
    assert answer.status_code == 422
    assert set(published["required"]) <= set(answer.json()) <= set(published["properties"])


def test_a_wrong_method_is_405_even_behind_a_catch_all_mount(api_engine):
    # issue #19 item 9: behind the panel mounted at "/" (as the standalone app and the WebUI do),
    # a GET on a POST route fell through to the mount's 404
    from fastapi import FastAPI
    from starlette.responses import PlainTextResponse

    from sd_webui_sam.api import mount_api

    async def catch_all(scope, receive, send):
        await PlainTextResponse("not found", status_code=404)(scope, receive, send)

    app = FastAPI()
    mount_api(app, api_engine)
    app.mount("/", catch_all)
    with ServerThread(app) as running, httpx.Client(base_url=running.url, timeout=60, trust_env=False) as c:
        answer = c.get("/sam/sam-predict")
        assert answer.status_code == 405 and answer.headers["allow"] == "POST"
        assert "POST" in answer.json()["msg"]
        assert c.post("/sam/v2/health").status_code == 405
        assert c.put("/sam/v2/images/" + "0" * 32).headers["allow"] == "DELETE"
        assert c.get("/sam/heartbeat").json() == {"msg": "Success!"}
        assert c.get("/elsewhere").status_code == 404
        assert "/sam/sam-predict" in c.get("/openapi.json").json()["paths"]


def test_a_short_request_is_not_starved_by_a_long_job(api_engine, image):
    # issue #19 item 7: /sam/sam-predict waited minutes behind an AutoSAM job holding the GPU lock
    import threading
    import time
    from types import SimpleNamespace

    from fastapi import FastAPI

    from sd_webui_sam.api import ApiSettings, mount_api

    started, release = threading.Event(), threading.Event()

    def long_autosam(engine, picture, body, conf):
        started.set()
        release.wait(20)
        return {"msg": "done"}

    app = FastAPI()
    mount_api(app, api_engine, gpu_lock=threading.Lock(), settings=ApiSettings(busy_timeout_s=0.5),
              autosam=SimpleNamespace(controlnet_seg=long_autosam))
    timer = threading.Timer(15, release.set)  # without a bound the short request would wait for this
    timer.start()
    try:
        with ServerThread(app) as running, httpx.Client(base_url=running.url, timeout=60, trust_env=False) as c:
            long_job = threading.Thread(target=c.post, args=("/sam/controlnet-seg",),
                                        kwargs={"json": {"payload": {"input_image": image_b64(image)}, "autosam_conf": {}}})
            long_job.start()
            assert started.wait(20)
            begun = time.monotonic()
            body = {"sam_model_name": "tiny_sam.pth", "input_image": image_b64(image), "sam_positive_points": [[60, 48]]}
            busy = c.post("/sam/sam-predict", json=body)
            assert time.monotonic() - begun < 10
            assert busy.status_code == 503, busy.text
            assert int(busy.headers["retry-after"]) >= 1
            assert "/sam/controlnet-seg" in busy.json()["msg"] and "running for" in busy.json()["msg"]
            release.set()
            long_job.join(30)
            assert c.post("/sam/sam-predict", json=body).status_code == 200
    finally:
        release.set()
        timer.cancel()
