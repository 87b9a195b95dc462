"""Fuzzing of every route: Schemathesis, driven by our own /openapi.json, never gets a 5xx and every
answer matches the schema we publish; a few hand-written cases cover what it cannot generate.

Schemathesis builds each request from the operation's schema (valid bodies, and bodies that break
it one field at a time). Picture fields are plain strings in the schema, so random text would never
get past decoding: the schema is annotated here, test side only, with a format whose values are
the picture corpus below (thin, palette, 16-bit, CMYK, huge declared size, ...) as well as broken
base64. Server paths of /sam/v2/batch get the same treatment with paths inside and outside the
allowed folder.
"""
from __future__ import annotations

import base64
import copy
import io
import json
import os

import httpx
import numpy as np
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from sd_webui_sam.api import ApiSettings, mount_api
from sd_webui_sam.api.models import ImageUploadRequest
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
from tests.test_images import _png_claiming_size

H, W = 48, 64
#: Generated requests per operation (bounded, the same every run); raise it to fuzz harder.
EXAMPLES = int(os.environ.get("SAM_FUZZ_EXAMPLES", "20"))
#: A valid generated body for segment everything asks for up to thousands of points (about 9 s of
#: work each on a 2-core CPU, 3 minutes for 20): a quarter as many keeps the suite's time in bounds.
EXAMPLES_BY_PATH = {"/sam/v2/segment-everything": max(1, EXAMPLES // 4)}
GOOD_IMAGE = image_b64(sample_image(H, W))


def _encoded(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return b64(buffer.getvalue())


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
    "huge-declared": b64(_png_claiming_size(200_000, 200_000)),
}
BROKEN_PICTURES = ["", "!!!", "data:image/png;base64,AAAA", GOOD_IMAGE[:100], b64(b"not an image"),
                   b64(png_bytes(sample_image(8, 8))[:60]), "../../etc/passwd", "/etc/passwd"]

#: Values of the picture fields: mostly pictures that decode, so requests reach the engine.
PICTURE_FORMAT = "sam-fuzz-picture"
pictures = st.one_of(
    st.sampled_from([GOOD_IMAGE, "data:image/png;base64," + GOOD_IMAGE, *CORPUS.values()]),
    st.sampled_from(BROKEN_PICTURES),
    st.text(max_size=40),
)
schemathesis.openapi.format(PICTURE_FORMAT, pictures)
#: Body fields that carry a picture (the schema says so in words only).
PICTURE_FIELDS = {"input_image", "image", "mask", "segmentation_map", "previous_mask"}

MODEL_FORMAT = "sam-fuzz-model"
schemathesis.openapi.format(MODEL_FORMAT, st.sampled_from(["tiny_sam.pth", "sam_vit_h_4b8939.pth"]) | st.text(max_size=20))
MODEL_FIELDS = {"sam_model_name", "model"}

MASK_FORMAT_FORMAT = "sam-fuzz-mask-format"
schemathesis.openapi.format(MASK_FORMAT_FORMAT, st.sampled_from(["png", "rle", "none"]) | st.text(max_size=8))
MASK_FORMAT_FIELDS = {"mask_format"}

# These two need the running server: their values are set by the openapi_schema fixture.
SERVER_PATH_FORMAT = "sam-fuzz-server-path"
SERVER_PATH_FIELDS = {"inputs", "output_dir"}
IMAGE_ID_FORMAT = "sam-fuzz-image-id"
IMAGE_ID_FIELDS = {"image_id"}


def annotate(schema: dict, fields: set, fmt: str) -> dict:
    """A copy of the OpenAPI document where the string form of each named property of a request
    body has ``fmt`` (pydantic 1 writes ``{"type": "string"}``, pydantic 2 an ``anyOf`` with null;
    lists of strings too). Response bodies are left as published."""
    schema = copy.deepcopy(schema)

    def mark(node):
        if not isinstance(node, dict):
            return
        if node.get("type") == "string":
            node["format"] = fmt
        elif node.get("type") == "array":
            mark(node.get("items"))
        for key in ("anyOf", "oneOf", "allOf"):
            for branch in node.get(key, ()):
                mark(branch)

    for title, component in schema.get("components", {}).get("schemas", {}).items():
        if not title.endswith("Request"):
            continue
        for name, prop in component.get("properties", {}).items():
            if name in fields:
                mark(prop)
    return schema


def _document() -> dict:
    """Our /openapi.json (the document needs no engine: the routes only reach it when called)."""
    app = FastAPI()
    mount_api(app, engine=None)
    return app.openapi()


DOCUMENT = _document()
#: Every operation our OpenAPI document lists, /sam/* and /sam/v2/*.
OPERATIONS = [(method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item]
#: Operations with a body: the ones a request can break (the one path parameter, an image id, takes any text).
WITH_BODY = [(method, path) for method, path in OPERATIONS if "requestBody" in DOCUMENT["paths"][path][method.lower()]]
CASES = ([pytest.param(method, path, GenerationMode.POSITIVE, id=f"{method} {path} valid") for method, path in OPERATIONS]
         + [pytest.param(method, path, GenerationMode.NEGATIVE, id=f"{method} {path} invalid") for method, path in WITH_BODY])
#: Status codes the valid-body fuzzing got, per operation (read by the reach test after it).
ANSWERS: dict = {}


@pytest.fixture(scope="module")
def batch_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch_root")
    (root / "in").mkdir()
    Image.fromarray(sample_image(H, W)).save(root / "in" / "a.png")
    Image.fromarray(sample_image(32, 40, seed=1)).save(root / "in" / "b.jpg")
    return root


@pytest.fixture(scope="module")
def fuzz_api(api_engine, batch_root, tmp_path_factory):
    """(the app, our SamApi on it)."""
    app = FastAPI()
    use_fixed_detector(api_engine, FixedDetector(), tmp_path_factory.mktemp("gdino"))
    api = mount_api(app, api_engine, settings=ApiSettings(batch_roots=(batch_root,)))
    return app, api


@pytest.fixture(scope="module")
def openapi_schema(fuzz_api, batch_root):
    app, api = fuzz_api
    stored_id = api.upload_image(ImageUploadRequest(image=GOOD_IMAGE))["image_id"]
    schemathesis.openapi.format(IMAGE_ID_FORMAT, st.sampled_from([stored_id, "0" * 32]) | st.text(max_size=40))
    schemathesis.openapi.format(SERVER_PATH_FORMAT, st.sampled_from([
        str(batch_root / "in"), str(batch_root / "in" / "a.png"), str(batch_root / "out"), str(batch_root),
        str(batch_root / "in" / "missing.png"), str(batch_root / ".." / "escape"), "/etc", "relative/dir", "",
    ]) | st.text(max_size=20))
    document = schemathesis.openapi.from_asgi("/openapi.json", app).raw_schema
    for fields, fmt in ((PICTURE_FIELDS, PICTURE_FORMAT), (MODEL_FIELDS, MODEL_FORMAT),
                        (MASK_FORMAT_FIELDS, MASK_FORMAT_FORMAT), (SERVER_PATH_FIELDS, SERVER_PATH_FORMAT),
                        (IMAGE_ID_FIELDS, IMAGE_ID_FORMAT)):
        document = annotate(document, fields, fmt)
    schema = schemathesis.openapi.from_dict(document)
    schema.app = app
    return schema


def test_every_served_operation_is_fuzzed(openapi_schema):
    served = [(method.upper(), path) for path, item in openapi_schema.raw_schema["paths"].items() for method in item]
    assert served == OPERATIONS
    assert len(OPERATIONS) >= 16 and {path for _, path in OPERATIONS} >= {"/sam/sam-predict", "/sam/v2/predict"}


@pytest.mark.parametrize("method, path, mode", CASES)
def test_every_route_never_5xx_and_answers_as_documented(openapi_schema, method, path, mode):
    operation = openapi_schema[path][method]

    @settings(max_examples=EXAMPLES_BY_PATH.get(path, EXAMPLES), deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(mode))
    def fuzz(case):
        answer = case.call_and_validate(checks=[not_a_server_error, response_schema_conformance, content_type_conformance])
        if mode is GenerationMode.POSITIVE:
            ANSWERS.setdefault((method, path), []).append(answer.status_code)

    fuzz()



def test_the_fuzzing_reached_past_decoding():
    """The picture format works: generated bodies got answers (2xx) from the engine on most routes
    that take a picture, not only 4xx from decoding. (/sam/v2/predict and /sam/v2/batch need a
    combination of fields the schema cannot say, e.g. image or image_id; the hand-written tests
    below and tests/test_api_contract.py reach them.)"""
    takes_picture = {path for method, path in WITH_BODY
                     if PICTURE_FIELDS & set(_request_properties(DOCUMENT, path, method))}
    answered = {path for (method, path), codes in ANSWERS.items() if path in takes_picture and min(codes) < 300}
    assert len(answered) >= 4, (sorted(answered), sorted(takes_picture))


def _request_properties(document: dict, path: str, method: str) -> set:
    """Top-level and nested (one level, e.g. payload) property names of an operation's body."""
    body = document["paths"][path][method.lower()]["requestBody"]["content"]["application/json"]["schema"]
    schemas = document["components"]["schemas"]

    def resolve(node):
        while isinstance(node, dict) and "$ref" in node:
            node = schemas[node["$ref"].rsplit("/", 1)[1]]
        for key in ("allOf", "anyOf"):
            if isinstance(node, dict) and node.get(key):
                node = resolve(node[key][0])
        return node if isinstance(node, dict) else {}

    names = set()
    for name, prop in resolve(body).get("properties", {}).items():
        names.add(name)
        names.update(resolve(prop).get("properties", {}))
    return names


# --------------------------------------------------------------------------------------------
# What Schemathesis cannot generate: JSON that is not strict JSON (NaN, Infinity), and the
# behaviour owed to each picture of the corpus (a clear 413, a segmentation).
# --------------------------------------------------------------------------------------------

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
NUMBERS_JSON_ALLOWS_NOT = [float("nan"), float("inf"), -float("inf")]


@pytest.fixture(scope="module")
def fuzz_client(fuzz_api):
    with ServerThread(fuzz_api[0]) as server, httpx.Client(base_url=server.url, timeout=60, trust_env=False) as client:
        yield client


def test_every_post_route_takes_nan_and_infinity_without_5xx(fuzz_client):
    assert {path for method, path in WITH_BODY} >= set(VALID)
    for route, body in VALID.items():
        target = body.get("payload", body)
        for value in NUMBERS_JSON_ALLOWS_NOT:
            for bent in ({**target, "sam_positive_points": [[value, 1]], "points": [[1, value]]},
                         {**target, "boxes": [[0, 0, value, 5]], "dilate_amount": value, "box_threshold": value},
                         {**target, "max_masks": value, "dino_box_threshold": value, "expand": value}):
                sent = {**body, "payload": bent} if "payload" in body else bent
                answer = fuzz_client.post(route, content=json.dumps(sent, allow_nan=True),
                                          headers={"content-type": "application/json"})
                assert answer.status_code < 500, (route, value, answer.text[:300])


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_every_route_takes_the_picture_corpus_without_5xx(fuzz_client, name):
    for route, valid in VALID.items():
        body = json.loads(json.dumps(valid))
        target = body.get("payload", body)
        for field in ("input_image", "image", "mask"):
            if field in target:
                target[field] = CORPUS[name]
        answer = fuzz_client.post(route, json=body)
        assert answer.status_code < 500, (route, answer.status_code, answer.text[:300])
        if name == "huge-declared" and route != "/sam/v2/batch":
            assert answer.status_code == 413 and "bomb" not in answer.json()["msg"].lower(), (route, answer.text[:300])
    # the readable ones are segmented (a point in the middle of each)
    if name != "huge-declared":
        size = Image.open(io.BytesIO(base64.b64decode(CORPUS[name]))).size
        body = {"model": "tiny_sam.pth", "image": CORPUS[name], "points": [[size[0] / 2, size[1] / 2]],
                "mask_format": "rle"}
        answer = fuzz_client.post("/sam/v2/predict", json=body)
        assert answer.status_code == 200, answer.text[:300]
