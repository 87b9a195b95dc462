"""AutoSAM over HTTP: /sam/controlnet-seg, /sam/category-mask (reference shapes) and
/sam/v2/segment-everything, on a real uvicorn server with the tiny SAM checkpoint."""
from __future__ import annotations

import sys
import types

import httpx
import numpy as np
import pytest

from tests.fixtures.api_fixtures import (  # noqa: F401  (fixtures)
    ServerThread,
    api_engine,
    api_model_dir,
    decode_png,
    image_b64,
    sample_image,
)

H, W = 48, 64
# permissive and coarse: random weights give masks only without the quality filters
CONF = {"points_per_side": 3, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 0.9}


@pytest.fixture(scope="module")
def client(api_engine):
    from fastapi import FastAPI

    from sd_webui_sam.api import mount_api
    from sd_webui_sam.compat.controlnet_preprocessors import find_preprocessor

    app = FastAPI()
    mount_api(app, api_engine, find_preprocessor=find_preprocessor)  # as scripts/segment_anything.py does
    with ServerThread(app) as running:
        with httpx.Client(base_url=running.url, timeout=120, trust_env=False) as c:
            yield c


@pytest.fixture(scope="module")
def image():
    return sample_image(H, W)


def ade_map(image: np.ndarray) -> np.ndarray:
    """An ADE20K colour map: 'wall' (0) everywhere, 'bed' (7) over the right half."""
    from sd_webui_sam.autosam.semantic import dataset

    palette = dataset("ade20k").palette
    colours = np.empty(image.shape[:2] + (3,), dtype=np.uint8)
    colours[:] = palette[0]
    colours[:, image.shape[1] // 2:] = palette[7]
    return colours


@pytest.fixture()
def host_segmenter(monkeypatch):
    """A host whose ControlNet offers seg_ofade20k (Forge's preprocessor registry), drawing ade_map."""
    calls = []

    def preprocessor(picture, resolution=512):
        calls.append(resolution)
        return ade_map(picture)

    shared = types.ModuleType("modules_forge.shared")
    shared.supported_preprocessors = {"seg_ofade20k": preprocessor}
    monkeypatch.setitem(sys.modules, "modules_forge.shared", shared)
    return calls


def post(client, route, payload, conf=CONF):
    return client.post(route, json={"payload": payload, "autosam_conf": conf})


def test_random_segmentation_has_the_reference_keys_and_is_seeded(client, image):
    body = {"input_image": image_b64(image), "processor": "random", "sam_model_name": "tiny_sam.pth"}
    answer = post(client, "/sam/controlnet-seg", body)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert set(data) == {"msg", "blended_images", "random_seg", "edit_anything_control"}
    colour = np.asarray(decode_png(data["random_seg"]).convert("RGB"))
    control = np.asarray(decode_png(data["edit_anything_control"]).convert("RGB"))
    assert colour.shape == control.shape == (H, W, 3)
    assert colour.any(), "some segment should be coloured"
    assert (control[..., 2] == 0).all() and control[..., 0].max() >= 1  # segment ids in R (and G)
    again = post(client, "/sam/controlnet-seg", body).json()
    assert again["random_seg"] == data["random_seg"]
    other = post(client, "/sam/controlnet-seg", {**body, "seed": 7}).json()
    assert other["random_seg"] != data["random_seg"]


def test_semantic_without_a_host_segmenter_is_a_clear_404(client, image):
    answer = post(client, "/sam/controlnet-seg", {"input_image": image_b64(image), "processor": "seg_ofade20k"})
    assert answer.status_code == 404
    assert "ControlNet" in answer.json()["msg"] and "segmentation map" in answer.json()["msg"]


def test_semantic_with_the_host_preprocessor(client, image, host_segmenter):
    answer = post(client, "/sam/controlnet-seg", {"input_image": image_b64(image), "processor": "seg_ofade20k",
                                                  "processor_res": 256})
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert set(data) == {"msg", "sem_presam", "sem_postsam", "blended_presam", "blended_postsam"}
    assert host_segmenter == [256]
    before = np.asarray(decode_png(data["sem_presam"]).convert("RGB"))
    assert before.shape == (H, W, 3) and np.array_equal(before, ade_map(image))
    after = np.asarray(decode_png(data["sem_postsam"]).convert("RGB"))
    assert after.shape == (H, W, 3)


def test_uploaded_colour_map_replaces_the_preprocessor(client, image):
    body = {"input_image": image_b64(image), "processor": "seg_ofade20k", "segmentation_map": image_b64(ade_map(image))}
    data = post(client, "/sam/controlnet-seg", body).json()
    assert np.array_equal(np.asarray(decode_png(data["sem_presam"]).convert("RGB")), ade_map(image))


def test_category_mask_by_name_and_id_at_original_resolution(client, image):
    body = {"input_image": image_b64(image), "processor": "seg_ofade20k", "category": "bed",
            "segmentation_map": image_b64(ade_map(image))}
    # no SAM refinement effect on the check: a grid of 1 point (one mask at most)
    answer = post(client, "/sam/category-mask", body, conf={"points_per_side": 1, "pred_iou_thresh": 1.0})
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert set(data) == {"msg", "blended_image", "mask", "masked_image", "resized_input"}
    mask = np.asarray(decode_png(data["mask"]).convert("L")) > 0
    expected = np.zeros((H, W), dtype=bool)
    expected[:, W // 2:] = True
    assert np.array_equal(mask, expected)
    by_id = post(client, "/sam/category-mask", {**body, "category": "7"},
                 conf={"points_per_side": 1, "pred_iou_thresh": 1.0}).json()
    assert by_id["mask"] == data["mask"]
    assert decode_png(data["resized_input"]).size == (W, H)


@pytest.mark.parametrize("change, status, words", [
    ({"pixel_perfect": True}, 400, "target"),                 # the reference crashed (500) here
    ({"category": "no-such-class"}, 400, "Unknown"),
    ({"category": ""}, 400, "class"),
    ({"processor": "random"}, 400, "semantic"),
    ({"sam_model_name": "missing.pth"}, 404, "not found"),
])
def test_category_mask_user_errors_are_4xx(client, image, change, status, words):
    body = {"input_image": image_b64(image), "processor": "seg_ofade20k", "category": "bed",
            "segmentation_map": image_b64(ade_map(image)), **change}
    answer = post(client, "/sam/category-mask", body)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["msg"]


def test_bad_autosam_settings_are_400(client, image):
    answer = post(client, "/sam/controlnet-seg", {"input_image": image_b64(image), "processor": "random"},
                  conf={"pred_iou_thresh": 3})
    assert answer.status_code == 400 and "pred_iou_thresh" in answer.json()["msg"]


def test_pixel_perfect_with_target_size(client, image, host_segmenter):
    body = {"input_image": image_b64(image), "processor": "seg_ofade20k", "pixel_perfect": True,
            "target_W": 512, "target_H": 384}
    assert post(client, "/sam/controlnet-seg", body).status_code == 200
    # k = max(384/48, 512/64) = 8; 8 * 48 = 384
    assert host_segmenter == [384]


def test_v2_segment_everything_records(client, image, api_engine):
    from sd_webui_sam import rle
    from sd_webui_sam.autosam.generator import AutoSamConfig, generate_masks_with_engine

    answer = client.post("/sam/v2/segment-everything", json={"image": image_b64(image), "model": "tiny_sam.pth",
                                                             "autosam_conf": CONF})
    assert answer.status_code == 200, answer.text
    data = answer.json()
    direct = generate_masks_with_engine(api_engine, "tiny_sam.pth", image, AutoSamConfig.from_mapping(CONF))
    assert data["count"] == len(direct) == len(data["masks"]) > 0
    areas = [m["area"] for m in data["masks"]]
    assert areas == sorted(areas, reverse=True)
    for record in data["masks"]:
        mask = rle.decode(record["mask"])
        assert mask.shape == (H, W) and int(mask.sum()) == record["area"]
        x0, y0, x1, y1 = record["box"]
        ys, xs = np.nonzero(mask)
        assert (xs.min(), ys.min(), xs.max(), ys.max()) == (x0, y0, x1, y1)
        assert 0 <= record["point"][0] <= W and 0 <= record["point"][1] <= H
        assert set(record) >= {"predicted_iou", "stability_score", "bbox", "crop_box"}
    capped = client.post("/sam/v2/segment-everything", json={"image": image_b64(image), "autosam_conf": CONF,
                                                             "mask_format": "png", "max_masks": 1}).json()
    assert len(capped["masks"]) == 1 and capped["count"] == data["count"]
    png = np.asarray(decode_png(capped["masks"][0]["mask"]).convert("L")) > 0
    assert int(png.sum()) == capped["masks"][0]["area"]
    bad = client.post("/sam/v2/segment-everything", json={"image": image_b64(image), "mask_format": "jpeg"})
    assert bad.status_code == 400
