"""The standalone panel in a real Chromium: clicks, dots, preview, mask tools, download, boxes, resize.

One test walks the whole flow (starting a browser and the app costs more than the steps).
A failure saves a screenshot under test-artifacts/.
"""
from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from tools import browser_driver as driver

pytestmark = pytest.mark.browser

ARTIFACTS = driver.ROOT / "test-artifacts"


@pytest.fixture
def picture_path(tmp_path):
    pixels = np.zeros((96, 128, 3), dtype=np.uint8)
    pixels[:] = (40, 90, 160)
    pixels[30:70, 40:90] = (220, 180, 60)
    path = tmp_path / "picture.png"
    Image.fromarray(pixels).save(path)
    return path, pixels


def assert_dots_on_pixels(page, expected, tolerance=1.0):
    # The overlay is redrawn on the next animation frame after a click: give it a moment.
    try:
        page.wait_for_function(
            f"(count) => document.querySelectorAll('#{driver.PREFIX}_overlay_svg circle').length === count",
            arg=len(expected), timeout=10_000)
    except Exception:  # the assertion below says what is on screen instead
        pass
    dots = driver.dot_centres(page)
    assert sorted((d["x"], d["y"], d["positive"]) for d in dots) == sorted(expected)
    for dot in dots:
        cx, cy = driver.client_point(page, dot["x"], dot["y"])
        assert abs(dot["cx"] - cx) <= tolerance and abs(dot["cy"] - cy) <= tolerance, dot


def test_click_preview_pick_expand_download_box_remove_resize(app_url, picture_path, request):
    path, pixels = picture_path
    with driver.browser_page(app_url) as page:
        try:
            driver.upload(page, path)
            driver.set_auto_preview(page, False)

            # Left click: positive point, right click: negative point, both on the clicked pixel.
            # (after the upload's own events have settled: the picture is encoded)
            page.wait_for_function(
                f"() => /encoded/.test(document.querySelector('#{driver.PREFIX}_status').innerText)", timeout=60_000)
            driver.centre_picture(page)
            page.mouse.click(*driver.client_point(page, 60, 50))
            page.mouse.click(*driver.client_point(page, 10, 12), button="right")
            assert_dots_on_pixels(page, [(60, 50, True), (10, 12, False)])

            # Preview: three candidate masks with scores.
            previous = driver.candidate_sources(page)
            page.click(f"#{driver.PREFIX}_preview")
            driver.wait_for_new_candidates(page, previous)
            assert "3 masks from 1 positive point, 1 negative point" in page.inner_text(f"#{driver.PREFIX}_status")

            # Pick mask 2, then expand it; the mask output follows.
            page.locator(f"#{driver.PREFIX}_choice label", has_text="Mask 2").click()
            cutout_before = driver.wait_for_output(page, "cutout", None)
            mask_before = driver.wait_for_output(page, "mask", None)
            expand = page.locator(f"#{driver.PREFIX}_expand input[type=number]")
            expand.fill("1")  # the random-weight mask is speckled: 1 px already grows it a lot
            expand.press("Enter")
            mask_after = driver.wait_for_output(page, "mask", mask_before)
            grown = driver.decode(page, mask_after)
            assert np.count_nonzero(np.asarray(grown)) > np.count_nonzero(np.asarray(driver.decode(page, mask_before)))
            cutout_after = driver.wait_for_output(page, "cutout", cutout_before)

            # Download the cut-out: RGBA, the picture inside the mask, transparent outside.
            with page.expect_download() as download_info:
                page.locator(f"#{driver.PREFIX}_cutout a[download]").first.click()
            download_path = download_info.value.path()
            cutout = Image.open(download_path)
            cutout.load()
            assert cutout.mode == "RGBA" and cutout.size == (128, 96)
            rgba = np.asarray(cutout)
            mask = np.asarray(grown.convert("L"))
            assert np.array_equal(rgba[..., 3], mask)
            inside = rgba[..., 3] == 255
            assert inside.any() and (~inside).any()
            assert np.array_equal(rgba[inside][:, :3], pixels[inside])
            assert not rgba[rgba[..., 3] == 0].any()
            assert driver.decode(page, cutout_after).size == (128, 96)

            # Drag: a box prompt.
            page.locator(f"#{driver.PREFIX}_input_image").scroll_into_view_if_needed()
            driver.drag_box(page, (35, 25), (95, 75))
            boxes = page.evaluate(f"() => window.samPanel.prompts('{driver.PREFIX}').boxes")
            assert boxes == [{"x0": 35, "y0": 25, "x1": 96, "y1": 76}]
            assert page.locator(f"#{driver.PREFIX}_overlay_svg rect.sam-box").count() == 1
            assert len(driver.dot_centres(page)) == 2  # the drag added no point

            # Click on a dot: it goes away.
            negative = [d for d in driver.dot_centres(page) if not d["positive"]][0]
            page.mouse.click(negative["cx"], negative["cy"])
            assert_dots_on_pixels(page, [(60, 50, True)])

            # Undo reverts the last action: the removed dot comes back, then the box goes.
            page.click(f"#{driver.PREFIX}_undo")
            assert_dots_on_pixels(page, [(60, 50, True), (10, 12, False)])
            assert page.evaluate(f"() => window.samPanel.prompts('{driver.PREFIX}').boxes.length") == 1
            page.click(f"#{driver.PREFIX}_undo")
            page.wait_for_function(f"() => window.samPanel.prompts('{driver.PREFIX}').boxes.length === 0")

            # Resizing the window re-fits the overlay: the dot stays on its pixel.
            page.locator(f"#{driver.PREFIX}_input_image").scroll_into_view_if_needed()
            page.mouse.click(*driver.client_point(page, 100, 80), button="right")
            for size in ((760, 900), (1500, 800)):
                page.set_viewport_size({"width": size[0], "height": size[1]})
                page.wait_for_timeout(300)
                assert_dots_on_pixels(page, [(60, 50, True), (10, 12, False), (100, 80, False)])
        except Exception:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
            raise


def test_auto_preview_on_click_and_a_burst_of_clicks_is_coalesced(app_url, picture_path, request):
    path, _ = picture_path
    status = f"#{driver.PREFIX}_status"
    with driver.browser_page(app_url) as page:
        try:
            driver.upload(page, path)
            driver.set_auto_preview(page, True)

            # One click: masks appear without pressing Preview.
            previous = driver.candidate_sources(page)
            page.mouse.click(*driver.client_point(page, 60, 50))
            driver.wait_for_new_candidates(page, previous)
            page.wait_for_function(f"() => document.querySelector('{status}').innerText.includes('1 positive point')")
            page.wait_for_function(f"() => window.samPanel.prompts('{driver.PREFIX}').previewsAnswered === 1")
            assert prompt_counters(page) == (1, 1)

            # A burst of clicks: far fewer requests than clicks, and the last preview has every point.
            previous = driver.candidate_sources(page)
            for index in range(6):
                page.mouse.click(*driver.client_point(page, 45 + 7 * index, 40 + 3 * index))
            assert len(driver.dot_centres(page)) == 7
            page.wait_for_function(
                f"""() => document.querySelector('{status}').innerText.includes('7 positive points')
                          && window.samPanel.prompts('{driver.PREFIX}').previewsAnswered
                             === window.samPanel.prompts('{driver.PREFIX}').previewsSent""",
                timeout=30_000,
            )
            driver.wait_for_new_candidates(page, previous)
            sent, answered = prompt_counters(page)
            assert 2 <= sent <= 4, sent  # the first click's preview, then a few (not 6) for the burst
            page.wait_for_timeout(500)  # nothing more is sent once the masks match the dots
            assert prompt_counters(page) == (sent, sent)

            # Switched off: a click sends nothing.
            driver.set_auto_preview(page, False)
            page.mouse.click(*driver.client_point(page, 20, 80), button="right")
            page.wait_for_timeout(500)
            assert prompt_counters(page) == (sent, sent)
        except Exception:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
            raise


def prompt_counters(page):
    counters = page.evaluate(f"() => window.samPanel.prompts('{driver.PREFIX}')")
    return counters["previewsSent"], counters["previewsAnswered"]


def test_preview_without_prompt_says_what_to_do(app_url, picture_path, request):
    path, _ = picture_path
    with driver.browser_page(app_url) as page:
        try:
            driver.upload(page, path)
            driver.set_auto_preview(page, False)
            page.click(f"#{driver.PREFIX}_preview")
            status = page.locator(f"#{driver.PREFIX}_status .sam-status-error")
            status.wait_for(timeout=30_000)
            assert "No prompt" in status.inner_text()
        except Exception:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
            raise


