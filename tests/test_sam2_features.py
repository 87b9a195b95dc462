"""A SAM 2.1 checkpoint in every feature that goes through the engine: clicks and boxes (the
encoder once per image, clicks through the decoder alone, high-res features cached with the
embedding), the reference-compatible and v2 API routes, batch, text prompts (GroundingDINO boxes
-> SAM 2.1 masks), AutoSAM (segment everything, ControlNet's random segmentation) and "cut out
after generation" in the stand-in WebUI."""
from __future__ import annotations

import dataclasses

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from sam2_image.hiera import Sam2ImageEncoder
from sd_webui_sam import rle
from sd_webui_sam.autosam.generator import AutoSamConfig, generate_masks_with_engine
from sd_webui_sam.batch import BatchOptions, run_batch
from sd_webui_sam.engine import Engine
from sd_webui_sam.predictor import Prompts
from tests.fixtures.api_fixtures import ServerThread, decode_png, image_b64, sample_image
from tests.fixtures.text_prompt_fixtures import gdino_folder, tiny_text_settings
from tools.fixtures.sam2_checkpoints import write_tiny_sam2

MODEL = "sam2.1_hiera_tiny_reduced.pt"
H, W = 96, 128


#: Permissive and coarse: random weights give masks only without the quality filters.
AUTOSAM_CONF = {"points_per_side": 3, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 0.9}


@pytest.fixture(scope="module")
def sam2_folders(tmp_path_factory):
    """(a SAM folder holding only the reduced SAM 2.1 file, GroundingDINO folder, its vocabulary)."""
    folder = tmp_path_factory.mktemp("sam2_models")
    torch.manual_seed(0)  # write_tiny_sam2 starts from the model's own (global-RNG) initialisation
    write_tiny_sam2(folder / MODEL)
    return (folder, *gdino_folder(tmp_path_factory.mktemp("gdino")))


@pytest.fixture(scope="module")
def sam2_engine(sam2_folders):
    settings = dataclasses.replace(tiny_text_settings(*sam2_folders), embedding_cache_entries=16)
    return Engine(settings)


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


def _mask(text: str) -> np.ndarray:
    return np.asarray(decode_png(text).convert("L")) > 127


def test_text_prompt_boxes_become_sam2_masks(client, sam2_engine):
    image = sample_image(H, W, seed=7)
    answer = client.post("/sam/sam-predict", json={"input_image": image_b64(image), "sam_model_name": MODEL,
                                                    "dino_enabled": True, "dino_text_prompt": "hand, face",
                                                    "dino_box_threshold": 0.0})
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert data["boxes"] and len(data["masks"]) == 3
    # the masks are SAM 2.1's answer to GroundingDINO's boxes (every box's candidate c, united)
    expected = sam2_engine.segment(MODEL, image, Prompts(boxes=[tuple(box) for box in data["boxes"]])).merged()
    for index, text in enumerate(data["masks"]):
        assert np.array_equal(_mask(text), expected.masks[0, index])
    assert MODEL in sam2_engine.stats()["loaded_models"]


def test_autosam_with_sam2(client, sam2_engine):
    image = sample_image(H, W, seed=8)
    answer = client.post("/sam/v2/segment-everything", json={"image": image_b64(image), "model": MODEL,
                                                             "autosam_conf": AUTOSAM_CONF})
    assert answer.status_code == 200, answer.text
    data = answer.json()
    direct = generate_masks_with_engine(sam2_engine, MODEL, image, AutoSamConfig.from_mapping(AUTOSAM_CONF))
    assert data["count"] == len(direct) == len(data["masks"]) > 0
    assert sorted(int(rle.decode(record["mask"]).sum()) for record in data["masks"]) == sorted(
        int(record.mask().sum()) for record in direct)
    # ControlNet's random segmentation (the reference's AutoSAM route) by SAM 2.1's name
    random_seg = client.post("/sam/controlnet-seg", json={
        "payload": {"input_image": image_b64(image), "processor": "random", "sam_model_name": MODEL},
        "autosam_conf": AUTOSAM_CONF})
    assert random_seg.status_code == 200, random_seg.text
    assert np.asarray(decode_png(random_seg.json()["random_seg"]).convert("RGB")).any()


def test_cutout_after_generation_with_sam2(sam2_folders, tmp_path):
    from sd_webui_sam.compat.session import host_session
    from tests.webui_stub.harness import FakeWebUI

    ui = FakeWebUI()
    try:
        from modules import processing  # the stand-in WebUI's, importable once it exists

        ui.load_scripts()
        host_session().configure(lambda: tiny_text_settings(*sam2_folders))
        ui.create_ui()
        runner = ui.txt2img
        script = ui.script(runner, "Segment Anything")
        values = [0] + [getattr(c, "value", None) for c in runner.inputs[1:]]
        mine = values[script.args_from:script.args_to]
        mine[6:12] = [True, "hand, face", MODEL, mine[9], 0.0, 0.0]  # cut out after generation, with SAM 2.1
        values[script.args_from:script.args_to] = mine
        p = processing.StableDiffusionProcessingTxt2Img(prompt="a cat", seed=7, batch_size=1, n_iter=1,
                                                        width=64, height=48)
        p.outpath_samples = str(tmp_path)
        p.scripts = runner
        p.script_args = tuple(values)
        processed = processing.process_images(p)
    finally:
        ui.close()
    generated = processed.images[0]
    cutout = Image.open(tmp_path / "00000-7-a cat-cutout.png")
    mask = np.asarray(Image.open(tmp_path / "00000-7-a cat-cutout-mask.png")) > 0
    alpha = np.asarray(cutout)[:, :, 3]
    assert cutout.size == generated.size and np.array_equal(alpha > 0, mask) and mask.any()
    assert (np.asarray(cutout)[:, :, :3][mask] == np.asarray(generated)[mask]).all()
