"""Bounded fuzzing: malformed requests to every route never get a 5xx, and the server keeps answering."""
from __future__ import annotations

import base64
import io
import json
import os

import httpx
import numpy as np
import pytest
from PIL import Image

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from tests.fixtures.api_fixtures import (  # noqa: E402,F401
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

H, W = 48, 64
EXAMPLES = int(os.environ.get("SAM_FUZZ_EXAMPLES", "60"))  # bounded by default; raise it to fuzz harder
GOOD_IMAGE = image_b64(sample_image(H, W))

VALID = {
    "/sam/sam-predict": {"sam_model_name": "tiny_sam.pth", "input_image": GOOD_IMAGE, "sam_positive_points": [[10, 10]]},
    "/sam/dino-predict": {"input_image": GOOD_IMAGE, "text_prompt": "dog"},
    "/sam/dilate-mask": {"input_image": GOOD_IMAGE, "mask": GOOD_IMAGE, "dilate_amount": 4},
    "/sam/controlnet-seg": {"payload": {"input_image": GOOD_IMAGE}, "autosam_conf": {}},
    "/sam/category-mask": {"payload": {"input_image": GOOD_IMAGE, "category": "1"}, "autosam_conf": {}},
    "/sam/v2/images": {"image": GOOD_IMAGE},
    "/sam/v2/predict": {"model": "tiny_sam.pth", "image": GOOD_IMAGE, "points": [[10, 10]], "boxes": [[1, 1, 30, 30]],
                        "best_only": True, "mask_format": "rle", "postprocess": {"expand": 2}},
    "/sam/v2/detect": {"image": GOOD_IMAGE, "text": "dog . cat"},
    "/sam/v2/batch": {"inputs": ["/tmp"], "output_dir": "/tmp/x", "points": [[1, 1]]},
    "/sam/v2/segment-everything": {"image": GOOD_IMAGE, "autosam_conf": {"points_per_side": 2}, "max_masks": 2},
}
GET_ROUTES = ["/sam/heartbeat", "/sam/sam-model", "/sam/v2/health", "/sam/v2/models"]


def _encoded(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return b64(buffer.getvalue())


def _huge_declared_png() -> str:
    from tests.test_images import _png_claiming_size

    return b64(_png_claiming_size(200_000, 200_000))


def _palette_with_transparency() -> str:
    image = Image.fromarray(sample_image(H, W)).convert("P")
    image.info["transparency"] = 0
    return _encoded(image)


#: Pictures a black-box check sends (issue #19): thin, palette, 16-bit, CMYK, a huge declared size.
CORPUS = {
    "thin-1x3000": image_b64(sample_image(3000, 1)),
    "thin-3000x1": image_b64(sample_image(1, 3000)),
    "palette": _palette_with_transparency(),
    "16-bit": _encoded(Image.fromarray((np.arange(H * W, dtype=np.uint16).reshape(H, W) * 13), mode="I;16")),
    "cmyk-jpeg": _encoded(Image.fromarray(sample_image(H, W)).convert("CMYK"), "JPEG"),
    "huge-declared": _huge_declared_png(),
}
IMAGE_FIELDS = ("input_image", "image", "mask", "segmentation_map")

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**20, max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["", "../../etc/passwd", "/etc/passwd", "data:image/png;base64,AAAA", "!!!", GOOD_IMAGE[:100],
                     b64(b"not an image"), b64(png_bytes(sample_image(8, 8))[:60]), "0" * 32, "nan", "png", "rle",
                     *CORPUS.values()]),
)
json_value = st.recursive(json_leaf, lambda children: st.one_of(
    st.lists(children, max_size=5), st.dictionaries(st.text(max_size=12), children, max_size=5)), max_leaves=12)


@st.composite
def mutated_body(draw, route):
    body = json.loads(json.dumps(VALID[route]))
    target = body["payload"] if "payload" in body and draw(st.booleans()) else body
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["replace", "drop", "add"]))
        keys = list(target)
        if action == "replace" and keys:
            target[draw(st.sampled_from(keys))] = draw(json_value)
        elif action == "drop" and keys:
            target.pop(draw(st.sampled_from(keys)))
        else:
            target[draw(st.sampled_from(["points", "boxes", "labels", "sam_negative_points", "previous_mask",
                                         "previous_logits", "image_id", "text", "dilate_amount", "extra",
                                         "processor", "segmentation_map", "pixel_perfect", "target_W"]))] = draw(json_value)
    return body


@pytest.fixture(scope="module")
def fuzz_client(api_engine, tmp_path_factory):
    from fastapi import FastAPI

    from sd_webui_sam.api import mount_api

    app = FastAPI()
    use_fixed_detector(api_engine, FixedDetector(), tmp_path_factory.mktemp("gdino"))
    mount_api(app, api_engine)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=60, trust_env=False) as client:
        yield client


ROUTES = sorted(VALID)


def acceptable(route: str, answer: httpx.Response) -> bool:
    """No 5xx (AutoSAM routes included: without a host segmenter they answer 404 with a message)."""
    return answer.status_code < 500


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_mutated_valid_bodies_never_5xx(fuzz_client, data):
    route = data.draw(st.sampled_from(ROUTES))
    body = data.draw(mutated_body(route))
    answer = fuzz_client.post(route, content=json.dumps(body, allow_nan=True), headers={"content-type": "application/json"})
    assert acceptable(route, answer), (route, answer.status_code, answer.text[:300])


@settings(max_examples=max(10, EXAMPLES // 2), deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(route=st.sampled_from(ROUTES), raw=st.one_of(st.binary(max_size=64), json_value.map(lambda v: json.dumps(v).encode())))
def test_arbitrary_bodies_never_5xx(fuzz_client, route, raw):
    answer = fuzz_client.post(route, content=raw, headers={"content-type": "application/json"})
    assert acceptable(route, answer), (route, raw[:80], answer.text[:300])


def test_get_routes_and_server_still_answers(fuzz_client):
    for route in GET_ROUTES:
        assert fuzz_client.get(route).status_code == 200
    assert fuzz_client.get("/sam/heartbeat").json() == {"msg": "Success!"}
    answer = fuzz_client.post("/sam/v2/predict", json=VALID["/sam/v2/predict"])
    assert answer.status_code == 200 and answer.json()["objects"]


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_every_route_takes_the_picture_corpus_without_5xx(fuzz_client, name):
    for route in ROUTES:
        body = json.loads(json.dumps(VALID[route]))
        target = body.get("payload", body)
        for field in IMAGE_FIELDS:
            if field in target:
                target[field] = CORPUS[name]
        answer = fuzz_client.post(route, json=body)
        assert acceptable(route, answer), (route, answer.status_code, answer.text[:300])
        if name == "huge-declared" and route != "/sam/v2/batch":
            assert answer.status_code == 413 and "bomb" not in answer.json()["msg"].lower(), (route, answer.text[:300])
    # the readable ones are segmented (a point in the middle of each)
    if name != "huge-declared":
        size = Image.open(io.BytesIO(base64.b64decode(CORPUS[name]))).size
        body = {"model": "tiny_sam.pth", "image": CORPUS[name], "points": [[size[0] / 2, size[1] / 2]],
                "mask_format": "rle"}
        answer = fuzz_client.post("/sam/v2/predict", json=body)
        assert answer.status_code == 200, answer.text[:300]
