"""Soft edges in the standalone panel, in a real Chromium at 1400x1000 (issue #17).

Upload, click, tick "Soft edges": the downloaded cut-out has semi-transparent pixels, and the
preview shows it on a checkerboard (style.css), so where the cut-out is transparent the user
sees the checker pattern, not the page. The screenshot goes to test-artifacts/.
"""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from sd_webui_sam.compat import gradio_compat as grc
from tools import browser_driver as driver

pytestmark = pytest.mark.browser
pytest.importorskip("pymatting")

ARTIFACTS = driver.ROOT / "test-artifacts"
P = driver.PREFIX
W, H = 160, 120
#: The two squares of the checkerboard in style.css.
CHECKER_GREYS = (0xEB, 0xBE)


@pytest.fixture
def picture_path(tmp_path):
    """A yellow disc with a blurred rim on a textured blue ground: edges a matte can soften."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:H, :W]
    disc = ((yy - H / 2) ** 2 + (xx - W / 2) ** 2 < 40 ** 2).astype(np.float32)
    disc = cv2.GaussianBlur(disc, (0, 0), 2.0)[..., None]
    ground = np.array((40, 90, 160), np.float32) + rng.integers(0, 30, (H, W, 3))
    pixels = np.clip(disc * np.array((230, 190, 60), np.float32) + (1 - disc) * ground, 0, 255).astype(np.uint8)
    path = tmp_path / "disc.png"
    Image.fromarray(pixels).save(path)
    return path


def displayed_cutout(page):
    """The preview as the screen shows it (RGB) and where its picture lies in that shot:
    (shot, left, top, scale) with image pixel (x, y) at shot pixel (left + x*scale, top + y*scale)."""
    geometry = page.evaluate(
        f"""() => {{
            const img = document.querySelector('#{P}_cutout img');
            img.scrollIntoView({{block: 'center'}});
            const r = img.getBoundingClientRect();
            const fit = getComputedStyle(img).objectFit;
            const s = fit === 'fill' ? null : Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
            return {{x: r.left, y: r.top, width: r.width, height: r.height, scale: s,
                     nw: img.naturalWidth, nh: img.naturalHeight}};
        }}""")
    assert geometry["scale"] is not None, "the preview stretches the cut-out"
    clip = {key: geometry[key] for key in ("x", "y", "width", "height")}
    shot = np.asarray(Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("RGB"))
    scale = geometry["scale"]
    left = (geometry["width"] - geometry["nw"] * scale) / 2
    top = (geometry["height"] - geometry["nh"] * scale) / 2
    return shot, left, top, scale


def test_soft_edges_cutout_has_partial_alpha_shown_on_a_checkerboard(app_url, picture_path, request):
    stack = f"gradio{grc.GRADIO_MAJOR}"
    with driver.browser_page(app_url, viewport=(1400, 1000)) as page:
        try:
            driver.upload(page, picture_path)
            driver.set_auto_preview(page, False)
            page.wait_for_function(
                f"() => /encoded/.test(document.querySelector('#{P}_status').innerText)", timeout=60_000)
            # Soft edges on, with a 1 px band: the random-weight model's masks are speckled, and a
            # wider band would leave no sure inside or outside to pull colours from. Shrinking the
            # mask by 1 px opens its pinholes into transparent areas the checkerboard shows through.
            shrink = page.locator(f"#{P}_expand input[type=number]")
            shrink.fill("-1")
            shrink.press("Enter")
            page.locator(f"#{P}_soft_edges input[type=checkbox]").check()
            band = page.locator(f"#{P}_edge_band input[type=number]")
            band.fill("1")
            band.press("Enter")
            driver.centre_picture(page)
            page.mouse.click(*driver.client_point(page, W // 2, H // 2))
            previous = driver.candidate_sources(page)
            page.click(f"#{P}_preview")
            driver.wait_for_new_candidates(page, previous)
            soft_src = driver.wait_for_output(page, "cutout", None, timeout_ms=60_000)
            page.wait_for_timeout(300)  # the new picture is painted

            # The downloaded cut-out: RGBA with semi-transparent pixels, transparent ones too.
            with page.expect_download() as download_info:
                page.locator(f"#{P}_cutout a[download]").first.click()
            cutout = Image.open(download_info.value.path())
            cutout.load()
            assert cutout.mode == "RGBA" and cutout.size == (W, H)
            alpha = np.asarray(cutout)[..., 3]
            partial = (alpha > 0) & (alpha < 255)
            assert partial.any(), f"soft edges gave no semi-transparent pixel: alpha levels {np.unique(alpha)}"
            assert np.array_equal(np.asarray(driver.decode(page, soft_src).convert("RGBA"))[..., 3], alpha)

            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"soft_edges_{stack}_1400.png"))
            shot, left, top, scale = displayed_cutout(page)
            Image.fromarray(shot).save(ARTIFACTS / f"soft_edges_{stack}_preview.png")

            # Where the cut-out is transparent (and its neighbours too: the screen resamples it), the screen shows
            # the checkerboard's two greys, both of them: a pattern, not a flat fill.
            transparent = cv2.erode((alpha == 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
            ys, xs = np.nonzero(transparent)
            assert len(ys) > 50, "too little transparent area to see the background"
            shown = shot[np.clip(np.round(top + (ys + 0.5) * scale).astype(int), 0, shot.shape[0] - 1),
                         np.clip(np.round(left + (xs + 0.5) * scale).astype(int), 0, shot.shape[1] - 1)].astype(int)
            grey = (np.ptp(shown, axis=1) <= 2)
            near = [grey & (np.abs(shown[:, 0] - level) <= 3) for level in CHECKER_GREYS]
            on_checker = near[0] | near[1]
            assert on_checker.mean() > 0.9, f"transparent pixels show {np.unique(shown, axis=0)[:8]}"
            assert min(near[0].mean(), near[1].mean()) > 0.25, "the background is not a checker pattern"
        except Exception:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
            raise
