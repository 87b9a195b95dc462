"""SAM 2.1 inside a real A1111 / Forge: a reduced SAM 2.1 checkpoint in the official layout
({"model": state_dict}, video-only weights included), put in the host's models/sam while it runs.

The panel (Debian's Chromium, txt2img): "Refresh models" lists the file, the user picks it, uploads
a picture, clicks and drags a box, and gets three masks each time, computed by that model. The
host's API: /sam/v2/models names it by its contents and /sam/sam-predict answers by its file name
behind the host's credentials. Screenshots land in test-artifacts/real_hosts (panel-<host>-sam2-*.png).
"""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from tools import browser_driver as driver
from tools.fixtures.sam2_checkpoints import write_tiny_sam2
from tests.real_hosts.conftest import note
from tests.real_hosts.test_panel_in_hosts import _open_panel, _open_tab, _preview_three_masks, _shot
from tests.real_hosts.test_panel_in_hosts import picture_path  # noqa: F401  (a fixture)

pytestmark = pytest.mark.real_host

#: Sorts after tiny_sam.pth, so the panel's default (the first model) stays the SAM 1 file the
#: other real-host tests expect.
MODEL = "tiny_sam2.1_hiera_reduced.pt"
PREFIX = "txt2img_sam"


@pytest.fixture(scope="module")
def sam2_model(host_setup):
    """The reduced SAM 2.1 file in the host's models/sam for this module, removed afterwards."""
    path = host_setup.webui_dir / "models" / "sam" / MODEL
    torch.manual_seed(0)  # write_tiny_sam2 starts from the model's own (global-RNG) initialisation
    write_tiny_sam2(path)
    yield path.name
    path.unlink(missing_ok=True)


def _choose_model(page, name: str) -> None:
    """Refresh the list, then pick ``name`` in the model dropdown as a user does (gradio 3 and 4)."""
    page.click(f"#{PREFIX}_refresh")
    field = page.locator(f"#{PREFIX}_model input").first
    for _ in range(20):  # the refreshed choices arrive with the next event answer
        field.click()
        option = page.locator(f"#{PREFIX}_model ul.options li", has_text=name)
        if option.count():
            option.first.click()
            break
        page.keyboard.press("Escape")
        page.wait_for_timeout(500)
    page.wait_for_function(
        "([selector, name]) => (document.querySelector(selector) || {}).value === name",
        arg=[f"#{PREFIX}_model input", name], timeout=30_000)


def test_panel_with_a_sam2_model(sam2_model, webui, picture_path, request):
    if driver.chromium_path() is None:
        pytest.skip("Debian's chromium is not installed")
    path, _ = picture_path
    with driver.browser_page(webui.base_url, (1400, 1000), ready="#tabs", timeout_ms=300_000) as page:
        try:
            _open_tab(page, "txt2img")
            _open_panel(page, PREFIX)
            _choose_model(page, sam2_model)
            driver.upload(page, path, prefix=PREFIX)
            driver.set_auto_preview(page, False, prefix=PREFIX)

            driver.centre_picture(page, prefix=PREFIX)
            page.mouse.click(*driver.client_point(page, 60, 50, prefix=PREFIX))
            _preview_three_masks(page, PREFIX)
            _shot(page, webui.name, "sam2-click-three-masks")

            page.click(f"#{PREFIX}_clear")
            page.wait_for_function(f"() => window.samPanel.prompts('{PREFIX}').points.length === 0")
            driver.centre_picture(page, prefix=PREFIX)
            driver.drag_box(page, (35, 25), (95, 75), prefix=PREFIX)
            _preview_three_masks(page, PREFIX)
            _shot(page, webui.name, "sam2-box-three-masks")
            mask_src = driver.wait_for_output(page, "mask", None, prefix=PREFIX, timeout_ms=60_000)
            mask = np.asarray(driver.decode(page, mask_src).convert("L")) > 127
            assert mask.shape == (96, 128)
        except Exception:
            _shot(page, webui.name, f"sam2-failure-{request.node.name}")
            raise
    # the panel's masks came from the SAM 2.1 file (the panel and the API share the one engine)
    health = webui.get("/sam/v2/health")
    assert health.status_code == 200, health.text[:2000]
    assert sam2_model in health.json()["models_loaded"]


def test_api_by_model_name(sam2_model, webui, picture_path):
    _, pixels = picture_path
    models = webui.get("/sam/v2/models")
    assert models.status_code == 200, models.text[:2000]
    labels = {entry["name"]: entry["label"] for entry in models.json()["models"]}
    assert labels.get(sam2_model, "").startswith("SAM 2.1 Hiera"), labels
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    body = {"input_image": base64.b64encode(buffer.getvalue()).decode(), "sam_model_name": sam2_model,
            "sam_positive_points": [[60, 50]], "sam_negative_points": [[5, 5]]}
    answer = webui.post("/sam/sam-predict", json=body)
    assert answer.status_code == 200, answer.text[:2000]
    data = answer.json()
    assert len(data["masks"]) == 3 and len(data["blended_images"]) == 3, data.get("msg")
    masks = [np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("L")) for text in data["masks"]]
    assert all(mask.shape == (96, 128) for mask in masks)
    assert webui.post("/sam/sam-predict", json=body, auth=False).status_code == 401
    note(f"{webui.name}: SAM 2.1 by name through /sam/sam-predict: {data['msg']}")
