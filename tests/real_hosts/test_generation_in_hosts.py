"""Generations in a real A1111 / Forge with the extension's script arguments, through the host's
own HTTP API (``/sdapi/v1/img2img`` and ``/sdapi/v1/txt2img`` with ``alwayson_scripts``).

The SD checkpoint has random weights, so only what the extension promises is checked: pixels
outside the mask are the source's, and "Cut out after generation" writes its files.
"""
from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.real_host

SCRIPT = "segment anything"
W, H = 128, 96


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _decode(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text.split(",", 1)[-1])))
    image.load()
    return image


@pytest.fixture(scope="module")
def source():
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[24:72, 32:96] = 255
    return pixels, mask


def _generation_settings():
    return {"width": W, "height": H, "steps": 1, "sampler_name": "Euler", "cfg_scale": 1.0, "seed": 1,
            "batch_size": 1, "n_iter": 1, "prompt": "a photo"}


def test_img2img_api_with_our_script_arguments_inpaints_only_the_mask(host_models, webui, source):
    pixels, mask = source
    picture = Image.fromarray(pixels)
    request = dict(_generation_settings(), init_images=[_b64(picture)], denoising_strength=1.0, mask_blur=0,
                   inpainting_fill=1, inpaint_full_res=False, resize_mode=0,
                   alwayson_scripts={SCRIPT: {"args": [True, _b64(picture), _b64(Image.fromarray(mask)),
                                                       False, "0", False]}})
    started = time.monotonic()
    response = webui.post("/sdapi/v1/img2img", json=request, timeout=1200)
    assert response.status_code == 200, response.text[:3000]
    print(f"{webui.name}: img2img with our mask took {time.monotonic() - started:.1f}s")
    result = np.asarray(_decode(response.json()["images"][0]).convert("RGB"))
    assert result.shape == pixels.shape
    outside = mask == 0
    assert np.array_equal(result[outside], pixels[outside]), "pixels outside the mask changed"
    # The mask really was used: the masked area was generated anew (random weights change it).
    assert not np.array_equal(result[~outside], pixels[~outside])
    assert "image and mask set as img2img inpaint input" in webui.log_text()


def test_cut_out_after_generation_writes_cutout_and_mask(host_models, webui):
    before = set(webui.webui_dir.glob("outputs/**/*.png"))
    request = dict(_generation_settings(), save_images=True,
                   alwayson_scripts={SCRIPT: {"args": [False, None, None, False, "0", False,
                                                       True, "face", host_models["sam"], host_models["gdino"],
                                                       0.0, 0.0]}})
    response = webui.post("/sdapi/v1/txt2img", json=request, timeout=1200)
    assert response.status_code == 200, response.text[:3000]
    written = sorted(set(webui.webui_dir.glob("outputs/**/*.png")) - before)
    cutouts = [path for path in written if path.stem.endswith("-cutout")]
    masks = [path for path in written if path.stem.endswith("-cutout-mask")]
    assert cutouts and masks, f"written: {[p.name for p in written]}\n{webui.log_text()[-3000:]}"
    cutout = Image.open(cutouts[0])
    assert cutout.mode == "RGBA" and cutout.size == (W, H)
    saved_mask = np.asarray(Image.open(masks[0]).convert("L"))
    assert np.array_equal(np.asarray(cutout)[..., 3] > 0, saved_mask > 0)


def test_controlnet_unit_gets_the_mask_and_a_missing_model_is_explained(host_models, webui, source):
    """Mikubill's ControlNet on A1111, the built-in one on Forge: the generation runs, our script puts
    the picture and mask into unit 0 and enables it, and with no ControlNet model installed the
    console says in our words why ControlNet skips the unit."""
    pixels, mask = source
    picture = Image.fromarray(pixels)
    request = dict(_generation_settings(),
                   alwayson_scripts={SCRIPT: {"args": [False, _b64(picture), _b64(Image.fromarray(mask)),
                                                       True, "0", False]}})
    response = webui.post("/sdapi/v1/txt2img", json=request, timeout=1200)
    assert response.status_code == 200, response.text[:3000]
    log = webui.log_text()
    assert "[Segment Anything] mask sent to ControlNet unit 0" in log, log[-3000:]
    assert "unit 0 has no ControlNet model selected, so ControlNet will skip it" in log
