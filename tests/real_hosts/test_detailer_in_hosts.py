"""'Detail each object' inside a real A1111 / Forge, through ``/sdapi/v1/txt2img`` with the section's
named arguments: each object is inpainted by the host's own img2img, one pass per object, and only
the objects' pixels change. The same from the UI: txt2img's own controls and the section filled in
Debian's Chromium, Generate pressed. And the section itself in txt2img at 1400x1000: visible, every
control labelled, the caption box taking text (screenshots in
test-artifacts/real_hosts/detail-section-<host>.png and detail-generated-<host>.png).
"""
from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from sd_webui_sam.detail_settings import DETAIL_SETTINGS
from tools import browser_driver as driver
from tests.real_hosts.conftest import ARTIFACTS

pytestmark = pytest.mark.real_host

SCRIPT = "detail each object (segment anything)"
#: ``Script.elem_id`` of the section's parts in txt2img (the host derives it from the title).
SECTION_ID = "script_txt2img_detail_each_object_segment_anything"
W, H = 128, 96
#: Pixels within this distance of an object's expanded mask may differ from the local computation
#: (the host's torch may round the SAM logits differently at the mask's edge).
EDGE_TOLERANCE_PX = 2


def _decode(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text.split(",", 1)[-1])))
    image.load()
    return image.convert("RGB")


def _local_objects(webui, host_models, image, settings):
    from sd_webui_sam.detailing import find_objects, inpaint_mask
    from sd_webui_sam.engine import Engine
    from sd_webui_sam.settings import EngineSettings

    models = webui.webui_dir / "models"
    engine = Engine(EngineSettings(user_model_dir=models / "sam", device="cpu",
                                   gdino_user_model_dir=models / "grounding-dino"))
    found = find_objects(engine, np.asarray(image), settings)
    return [np.asarray(inpaint_mask(obj.mask, settings)) > 0 for obj in found.objects]


def test_two_objects_are_inpainted_one_pass_each_and_nothing_else_changes(host_models, webui):
    from sd_webui_sam import masks
    from sd_webui_sam.detail_settings import parse_args

    named = {"caption": "face, hand", "sam_model": host_models["sam"], "dino_model": host_models["gdino"],
             "box_threshold": 0.0, "text_threshold": 0.0, "max_objects": 2, "mask_expand": 2, "mask_feather": 0,
             "padding": 8, "resolution": 64, "denoising_strength": 1.0, "keep_original": True}
    request = {"prompt": "a photo", "negative_prompt": "", "width": W, "height": H, "steps": 1,
               "sampler_name": "Euler", "cfg_scale": 1.0, "seed": 1, "batch_size": 1, "n_iter": 1,
               "alwayson_scripts": {SCRIPT: {"args": [named]}}}
    log_before = len(webui.log_text())
    response = webui.post("/sdapi/v1/txt2img", json=request, timeout=1200)
    assert response.status_code == 200, response.text[:3000]
    log = webui.log_text()[log_before:]
    body = response.json()
    assert len(body["images"]) == 2, log[-3000:]  # the detailed image, then the one before detailing
    detailed, before = (np.asarray(_decode(text)) for text in body["images"])
    assert "Detail each object: 2 object(s) detailed" in log, log[-3000:]
    infotext = json.loads(body["info"])["infotexts"][0]
    assert "SAM detail objects: 2" in infotext and 'SAM detail caption: "face, hand"' in infotext, infotext

    object_masks = _local_objects(webui, host_models, before, parse_args([named]))
    assert len(object_masks) == 2
    union = np.zeros((H, W), dtype=bool)
    for mask in object_masks:
        union |= mask
        assert (detailed[mask] != before[mask]).any(), "an object's pixels did not change"
    outside = ~masks.expand(union, EDGE_TOLERANCE_PX)
    assert np.array_equal(detailed[outside], before[outside]), "pixels outside every object's mask changed"


def test_the_section_in_txt2img_is_visible_labelled_and_takes_a_caption(webui):
    if driver.chromium_path() is None:
        pytest.skip("Debian's chromium is not installed")
    shown = [setting for setting in DETAIL_SETTINGS if setting.kind != "picture"]  # the panel's masks are hidden
    with driver.browser_page(webui.base_url, (1400, 1000), ready="#tabs", timeout_ms=300_000) as page:
        page.locator("#tabs button", has_text="txt2img").first.click()
        accordion = page.locator(f"#{SECTION_ID}_accordion")
        accordion.scroll_into_view_if_needed()
        assert accordion.is_visible(), "the section is not in txt2img"
        assert "Detail each object (Segment Anything)" in accordion.inner_text()
        accordion.locator(".label-wrap").first.click()
        caption = page.locator(f"#{SECTION_ID}_caption").locator("textarea, input").first
        caption.wait_for(state="visible", timeout=30_000)
        for setting in shown:
            control = page.locator(f"#{SECTION_ID}_{setting.name}")
            assert control.is_visible(), f"'{setting.label}' is not shown"
            assert setting.label in control.inner_text(), f"the control of '{setting.name}' lacks its label"
        assert not page.locator(f"#{SECTION_ID}_panel_masks").is_visible()
        caption.fill("face, left hand")
        caption.press("Tab")
        assert caption.input_value() == "face, left hand"
        accordion.scroll_into_view_if_needed()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"detail-section-{webui.name}.png"))
        accordion.screenshot(path=str(ARTIFACTS / f"detail-section-{webui.name}-open.png"))


def _set_number(page, elem_id: str, value) -> None:
    """A slider's or number box's value, typed into its number input as a person would."""
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Tab")


def test_generate_from_the_ui_details_two_objects(host_models, webui, request):
    """The section used as a person would: txt2img's own controls, the section opened, ticked and
    filled, Generate pressed; the host's log and the shown infotext say two objects were detailed."""
    if driver.chromium_path() is None:
        pytest.skip("Debian's chromium is not installed")
    with driver.browser_page(webui.base_url, (1400, 1000), ready="#tabs", timeout_ms=300_000) as page:
        try:
            page.locator("#tabs button", has_text="txt2img").first.click()
            page.locator("#txt2img_prompt textarea").first.fill("a photo")
            for elem_id, value in (("txt2img_width", W), ("txt2img_height", H), ("txt2img_steps", 1),
                                   ("txt2img_cfg_scale", 1)):
                _set_number(page, elem_id, value)
            accordion = page.locator(f"#{SECTION_ID}_accordion")
            accordion.scroll_into_view_if_needed()
            accordion.locator(".label-wrap").first.click()
            caption = page.locator(f"#{SECTION_ID}_caption").locator("textarea, input").first
            caption.wait_for(state="visible", timeout=30_000)
            page.locator(f"#{SECTION_ID}_enabled input[type=checkbox]").first.check()
            caption.fill("face, hand")
            caption.press("Tab")
            # SAM and GroundingDINO stay on "" (the first model found); random weights find boxes at 0.
            for name, value in (("box_threshold", 0), ("text_threshold", 0), ("max_objects", 2),
                                ("padding", 8), ("resolution", 64), ("denoising_strength", 1)):
                _set_number(page, f"{SECTION_ID}_{name}", value)
            page.locator(f"#{SECTION_ID}_keep_original input[type=checkbox]").first.check()
            log_before = len(webui.log_text())
            page.locator("#txt2img_generate").click()
            page.wait_for_function(
                "() => (document.querySelector('#html_info_txt2img') || {innerText: ''}).innerText"
                ".includes('SAM detail objects')", timeout=900_000)
            info = page.locator("#html_info_txt2img").first.inner_text()  # gradio 3 gives its wrapper the id too
            # The page can show the result before the host's console line reaches its log file.
            deadline = time.monotonic() + 30
            while "object(s) detailed" not in webui.log_text()[log_before:] and time.monotonic() < deadline:
                time.sleep(0.5)
            log = webui.log_text()[log_before:]
            assert "Detail each object: 2 object(s) detailed" in log, log[-3000:]
            assert "SAM detail objects: 2" in info and "face, hand" in info, info
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"detail-generated-{webui.name}.png"))
        except Exception:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-{webui.name}.png"), full_page=True)
            raise
