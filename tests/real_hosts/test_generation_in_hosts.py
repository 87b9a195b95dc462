"""Generations in a real A1111 / Forge with the extension's script arguments, through the host's
own HTTP API (``/sdapi/v1/img2img`` and ``/sdapi/v1/txt2img`` with ``alwayson_scripts``).

The SD checkpoint has random weights, so only what the extension promises is checked: pixels
outside the mask are the source's, and "Cut out after generation" writes its files (with soft
edges: partial alpha, only in the band along the mask's edge).
"""
from __future__ import annotations

import base64
import io
import time

import cv2
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


def _cutout_request(*, soft_edges: bool, edge_band: float, host_models) -> dict:
    """txt2img with "Cut out after generation" on, positionally in script_args.SCRIPT_ARGS's order."""
    handoff = [False, None, None, False, "0", False]
    cutout = [True, "face", host_models["sam"], host_models["gdino"], 0.0, 0.0]
    control_map = [False, 0, None]
    alpha = [soft_edges, edge_band]
    return dict(_generation_settings(), save_images=True,
                alwayson_scripts={SCRIPT: {"args": handoff + cutout + control_map + alpha}})


def _written_cutout(webui, request):
    before = set(webui.webui_dir.glob("outputs/**/*.png"))
    response = webui.post("/sdapi/v1/txt2img", json=request, timeout=1200)
    assert response.status_code == 200, response.text[:3000]
    written = sorted(set(webui.webui_dir.glob("outputs/**/*.png")) - before)
    cutouts = [path for path in written if path.stem.endswith("-cutout")]
    masks = [path for path in written if path.stem.endswith("-cutout-mask")]
    assert cutouts and masks, f"written: {[p.name for p in written]}\n{webui.log_text()[-3000:]}"
    cutout = Image.open(cutouts[0])
    cutout.load()
    return cutout, np.asarray(Image.open(masks[0]).convert("L"))


def test_cut_out_after_generation_writes_cutout_and_mask(host_models, webui):
    # The six arguments of "Cut out after generation" alone (a caller from before soft edges).
    request = dict(_generation_settings(), save_images=True,
                   alwayson_scripts={SCRIPT: {"args": [False, None, None, False, "0", False,
                                                       True, "face", host_models["sam"], host_models["gdino"],
                                                       0.0, 0.0]}})
    cutout, saved_mask = _written_cutout(webui, request)
    assert cutout.mode == "RGBA" and cutout.size == (W, H)
    assert np.array_equal(np.asarray(cutout)[..., 3] > 0, saved_mask > 0)


def test_cut_out_after_generation_with_soft_edges_has_partial_alpha_only_in_the_band(host_models, webui):
    """The soft cut-out's partial alpha lies only in the band along the saved mask's edge, and
    beyond it the alpha is the mask's. Where the mask has a sure inside (farther than the band from
    its edge) the matte has colours to pull from and gives semi-transparent pixels; where it has
    none (the random-weight SAM's 1-px lattice at this size) the matte keeps the mask as it is."""
    band = 1
    cutout, saved_mask = _written_cutout(webui, _cutout_request(soft_edges=True, edge_band=band,
                                                                host_models=host_models))
    assert cutout.mode == "RGBA" and cutout.size == (W, H)
    assert set(np.unique(saved_mask)) <= {0, 255}, "the mask beside the cut-out stays binary"
    inside = (saved_mask > 0).astype(np.uint8)
    assert inside.any() and not inside.all(), "the tiny SAM found no edge to soften"
    # How far each pixel is from the pixels on the other side of the mask's edge.
    inside_distance = cv2.distanceTransform(inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    edge_distance = np.maximum(inside_distance, cv2.distanceTransform(1 - inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE))
    alpha = np.asarray(cutout)[..., 3]
    partial = (alpha > 0) & (alpha < 255)
    sure_inside = int(np.count_nonzero(inside_distance > band))
    print(f"{webui.name}: soft cut-out: {int(partial.sum())} partial-alpha pixels, {len(np.unique(alpha))} "
          f"alpha levels, {sure_inside} mask pixels farther than the band from its edge")
    if partial.any():
        assert edge_distance[partial].max() <= band + 1, "partial alpha outside the band"
    far = edge_distance > band + 1
    assert np.array_equal(alpha[far], np.where(inside[far] > 0, 255, 0)), "the matte changed sure pixels"
    if sure_inside:
        assert partial.any(), "soft edges gave no semi-transparent pixel"
    else:
        assert np.array_equal(alpha, saved_mask), "with no sure inside the matte must keep the mask"


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
