"""Soft edges where users get them (issue 17): /sam/v2 cut-outs, batch cut-outs and the CLI flag."""
from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from sd_webui_sam import render
from tests.fixtures.api_fixtures import (  # noqa: F401  (fixtures)
    ServerThread,
    api_engine,
    api_model_dir,
    decode_png,
    image_b64,
    png_bytes,
    sample_image,
)

pytest.importorskip("pymatting")

H, W = 96, 128


def edge_distance(mask: np.ndarray) -> np.ndarray:
    import cv2

    inside = mask.astype(np.uint8)
    return np.maximum(cv2.distanceTransform(inside, cv2.DIST_L2, 5), cv2.distanceTransform(1 - inside, cv2.DIST_L2, 5))


def check_soft_cutout(cutout: Image.Image, image: np.ndarray, mask: np.ndarray, band: int) -> None:
    """RGBA of the image's size; 8-bit alpha with partial levels, and only near the mask's edge."""
    assert cutout.mode == "RGBA" and cutout.size == (image.shape[1], image.shape[0])
    alpha = np.asarray(cutout)[:, :, 3]
    hard_alpha = np.asarray(render.cutout(image, mask))[:, :, 3]
    changed = alpha != hard_alpha
    assert changed.any() and len(np.unique(alpha)) > 2
    assert edge_distance(mask)[changed].max() <= band + 1


def blob_prediction(*args, **kwargs):
    """What a trained SAM would answer for the sample image's blob: its disc, 2 px too big.

    (The random-weight test model gives speckled masks with no sure inside or outside.)"""
    from sd_webui_sam.predictor import Prediction

    yy, xx = np.mgrid[:H, :W]
    disc = (yy - H * 0.5) ** 2 + (xx - W * 0.45) ** 2 < (min(H, W) * 0.28 + 2) ** 2
    masks = np.repeat(disc[None, None], 3, axis=1)
    return Prediction(masks=masks, scores=np.array([[0.9, 0.8, 0.7]], np.float32),
                      low_res_logits=np.zeros((1, 3, 256, 256), np.float32), object_boxes=[None])


@pytest.fixture
def trained_looking_model(api_engine, monkeypatch):
    from sd_webui_sam.api.operations import SamApi

    monkeypatch.setattr(SamApi, "segment", blob_prediction)
    monkeypatch.setattr(api_engine, "segment", blob_prediction)


@pytest.fixture(scope="module")
def client(api_engine):
    from fastapi import FastAPI

    from sd_webui_sam.api import mount_api

    app = FastAPI()
    mount_api(app, api_engine)
    with ServerThread(app) as running, httpx.Client(base_url=running.url, timeout=120, trust_env=False) as c:
        yield c


def test_v2_predict_soft_cutout_and_hard_default(client, trained_looking_model):
    image = sample_image(H, W)
    body = {"model": "tiny_sam.pth", "image": image_b64(image), "points": [[60, 48]], "best_only": True,
            "return_cutout": True}
    default = client.post("/sam/v2/predict", json=body).json()["objects"][0]["masks"][0]
    hard = client.post("/sam/v2/predict", json={**body, "alpha": "hard"}).json()["objects"][0]["masks"][0]
    answer = client.post("/sam/v2/predict", json={**body, "alpha": "soft", "alpha_band": 4})
    assert answer.status_code == 200, answer.text
    soft = answer.json()["objects"][0]["masks"][0]
    mask = np.asarray(decode_png(default["mask"])) > 127
    # hard stays what it was: the same bytes as render.cutout of the returned mask
    expected = render.cutout(image, mask)
    assert default["cutout"] == hard["cutout"]
    assert decode_png(hard["cutout"]).tobytes() == expected.tobytes()
    assert soft["mask"] == default["mask"]   # soft edges change the cut-out, never the mask
    check_soft_cutout(decode_png(soft["cutout"]), image, mask, band=4)


@pytest.mark.parametrize("change", [{"alpha": "fuzzy"}, {"alpha_band": -1}, {"alpha_band": 1000}])
def test_v2_predict_bad_soft_edge_options_are_4xx(client, change):
    body = {"model": "tiny_sam.pth", "image": image_b64(sample_image(H, W)), "points": [[60, 48]],
            "return_cutout": True, "alpha": "soft", **change}
    answer = client.post("/sam/v2/predict", json=body)
    assert 400 <= answer.status_code < 500


def batch_options(inputs, output, **kwargs):
    from sd_webui_sam.batch import BatchOptions

    return BatchOptions(inputs=[Path(p) for p in inputs], output_dir=Path(output), model="tiny_sam.pth",
                        points=[(60.0, 48.0)], multimask=False, outputs=("mask", "cutout"), **kwargs)


def test_batch_soft_cutouts_and_unchanged_hard_ones(api_engine, tmp_path, trained_looking_model):
    from sd_webui_sam.batch import run_batch

    folder = tmp_path / "in"
    folder.mkdir()
    image = sample_image(H, W)
    (folder / "a.png").write_bytes(png_bytes(image))
    assert run_batch(api_engine, batch_options([folder], tmp_path / "hard")).done == 1
    assert run_batch(api_engine, batch_options([folder], tmp_path / "soft", alpha="soft", alpha_band=5)).done == 1
    mask = np.asarray(Image.open(tmp_path / "hard" / "a_0_mask.png")) > 127
    hard = Image.open(tmp_path / "hard" / "a_0_output.png")
    assert hard.tobytes() == render.cutout(image, mask).tobytes()
    check_soft_cutout(Image.open(tmp_path / "soft" / "a_0_output.png"), image, mask, band=5)


def test_batch_refuses_an_unknown_alpha_mode(api_engine, tmp_path):
    from sd_webui_sam.batch import validate_options
    from sd_webui_sam.errors import InvalidPromptError

    with pytest.raises(InvalidPromptError, match="alpha"):
        validate_options(batch_options([tmp_path], tmp_path / "out", alpha="fuzzy"))


def test_command_line_soft_edges(api_model_dir, tmp_path, monkeypatch):
    from sd_webui_sam.engine import Engine

    monkeypatch.setattr(Engine, "segment", blob_prediction)
    from sd_webui_sam.batch import main

    folder = tmp_path / "in"
    folder.mkdir()
    image = sample_image(H, W)
    (folder / "a.png").write_bytes(png_bytes(image))
    code = main([str(folder), "-o", str(tmp_path / "out"), "--model-dir", str(api_model_dir), "-m", "tiny_sam.pth",
                 "--point", "60,48", "--single", "--outputs", "mask,cutout", "--soft-edges", "--edge-band", "3",
                 "--device", "cpu"])
    assert code == 0
    mask = np.asarray(Image.open(tmp_path / "out" / "a_0_mask.png")) > 127
    check_soft_cutout(Image.open(tmp_path / "out" / "a_0_output.png"), image, mask, band=3)


def layout_scene():
    """A picture with two opaque objects over a textured background, and masks 2 px too big."""
    import cv2

    from tools.fixtures.autosam_fixtures import textured_image

    image = textured_image(90, 120, seed=3).copy()
    yy, xx = np.mgrid[:90, :120]
    disc = (yy - 45) ** 2 + (xx - 35) ** 2 < 20 ** 2
    square = (abs(yy - 45) < 18) & (abs(xx - 88) < 18)
    image[disc] = (250, 120, 20)
    image[square] = (20, 200, 240)
    grow = np.ones((5, 5), np.uint8)
    masks = [cv2.dilate(m.astype(np.uint8), grow).astype(bool) for m in (disc, square)]
    return image, masks


def test_soft_layers_and_psd(tmp_path):
    from psd_tools import PSDImage

    from sd_webui_sam.autosam.layers import LEFTOVER, build_layers, export_layout, soften

    image, masks = layout_scene()
    hard = build_layers(image, masks)
    soft = soften(hard, 4)
    assert [layer.name for layer in soft.layers] == [layer.name for layer in hard.layers]
    for hard_layer, soft_layer in zip(hard.layers, soft.layers):
        if soft_layer.name == LEFTOVER:
            continue
        rgba = soft.rgba(soft_layer)
        assert len(np.unique(rgba[..., 3])) > 2                     # partial transparency at the edge
        changed = rgba[..., 3] != hard.rgba(hard_layer)[..., 3]
        assert changed.any() and edge_distance(hard_layer.mask)[changed].max() <= 4 + 1
    composite = soft.composite()
    assert (composite[..., 3] == 255).all()                          # the stack still covers every pixel
    assert np.abs(composite[..., :3].astype(int) - image).mean() < 3
    result = export_layout(image, masks, tmp_path, "soft", alpha="soft", alpha_band=4)
    psd = PSDImage.open(result.psd_path)
    top = list(psd)[-1]                                             # the smallest segment
    pixels = np.asarray(top.topil().convert("RGBA"))
    x0, y0, x1, y1 = top.bbox
    np.testing.assert_array_equal(pixels, soft.rgba(soft.layers[0])[y0:y1, x0:x1])
    png = np.asarray(Image.open(result.png_paths[0]))
    np.testing.assert_array_equal(png, soft.rgba(soft.layers[0]))
    hard_result = export_layout(image, masks, tmp_path, "hard")
    assert hard_result.psd_path.read_bytes() == export_layout(image, masks, tmp_path, "hard",
                                                              alpha="hard").psd_path.read_bytes()


def test_layout_pipeline_passes_soft_edges_on(tmp_path, monkeypatch):
    from sd_webui_sam.autosam import pipelines

    image, masks = layout_scene()
    monkeypatch.setattr(pipelines, "segment_everything", lambda *args, **kwargs: masks)
    for alpha, levels in (("hard", {0, 255}), ("soft", None)):
        result = pipelines.layout(None, "any", image, tmp_path, alpha, write_psd=False, alpha=alpha)
        found = set(np.unique(np.asarray(Image.open(result.png_paths[0]))[..., 3]).tolist())
        assert found == levels if levels else len(found) > 2


def test_text_cutout_soft_edges_for_cut_out_after_generation():
    from types import SimpleNamespace

    from sd_webui_sam.cutout import text_cutout

    from sd_webui_sam.text_prompt import Detection

    class BlobEngine:
        settings = SimpleNamespace(max_objects=20)

        def detect(self, *args, **kwargs):
            return [Detection(box=(10.0, 10.0, 100.0, 90.0), phrase="blob", score=0.9)]

        segment = staticmethod(blob_prediction)

    image = sample_image(H, W)
    hard = text_cutout(BlobEngine(), image, "blob", sam_model="m")
    soft = text_cutout(BlobEngine(), image, "blob", sam_model="m", alpha="soft", alpha_band=4)
    assert hard.cutout.tobytes() == render.cutout(image, hard.mask).tobytes()
    assert np.array_equal(soft.mask, hard.mask) and soft.mask_image.tobytes() == hard.mask_image.tobytes()
    check_soft_cutout(soft.cutout, image, hard.mask, band=4)


def test_panel_cutout_soft_edges():
    from sd_webui_sam.ui import handlers

    image = sample_image(H, W)
    prediction = blob_prediction()
    found = handlers.Candidates(image=image, masks=prediction.masks[0], scores=prediction.scores[0])
    hard = handlers.chosen_outputs(found, 0, handlers.MaskTools())
    soft = handlers.chosen_outputs(found, 0, handlers.MaskTools(soft_edges=True, edge_band=4))
    mask = prediction.masks[0, 0]
    assert hard.cutout.tobytes() == render.cutout(image, mask).tobytes()
    assert soft.mask.tobytes() == hard.mask.tobytes()          # the mask (for inpaint) stays as it was
    check_soft_cutout(soft.cutout, image, mask, band=4)


def test_soft_mask_for_inpainting():
    from sd_webui_sam.ui import handlers

    image = sample_image(H, W)
    mask = blob_prediction().masks[0, 0]
    picture, mask_image = handlers.inpaint_pair(Image.fromarray(image), Image.fromarray(mask.astype(np.uint8) * 255))
    soft = np.asarray(handlers.soft_inpaint_mask(picture, mask_image))
    assert soft.shape == mask.shape and len(np.unique(soft)) > 2
    far = edge_distance(mask) > 30
    assert np.array_equal(soft[far], mask[far].astype(np.uint8) * 255)
    assert handlers.PRESET_VALUES[handlers.SOFT_EDGES_BLUR] == {"img2img_mask_blur": 0}
