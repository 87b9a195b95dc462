"""Segment everything in a real Chromium: its progress shows, and Stop ends the server-side job.

A failure saves a screenshot under test-artifacts/.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from tools import browser_driver as driver

pytestmark = pytest.mark.browser

ARTIFACTS = driver.ROOT / "test-artifacts"
PREFIX = f"{driver.PREFIX}_autosam"


def test_stop_ends_a_running_segment_everything(app_url, tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "picture.png"
    Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(path)
    with driver.browser_page(app_url, (1400, 1000)) as page:
        try:
            page.locator("button", has_text="Auto SAM").first.click()
            page.get_by_text("AutoSAM settings").first.click()
            # 256 x 256 points: thousands of point batches, minutes even for the tiny model
            points = page.locator(f"#{PREFIX}_points_per_side input")
            assert points.input_value() == "16"  # the CPU default
            points.fill("256")
            points.press("Tab")
            page.set_input_files(f"#{PREFIX}_random_image input[type=file]", str(path))
            page.wait_for_function(
                f"() => document.querySelector('#{PREFIX}_random_estimate').innerText.includes('65536 points')",
                timeout=30_000)
            page.click(f"#{PREFIX}_random_run")
            page.wait_for_function("() => document.body.innerText.includes('point batch')", timeout=60_000)
            page.click(f"#{PREFIX}_random_stop")
            stopped_at = time.monotonic()
            page.wait_for_function(
                f"() => document.querySelector('#{PREFIX}_random_status').innerText.includes('Stopped')",
                timeout=30_000)
            assert time.monotonic() - stopped_at < 15
            # the queue is free again: the next job runs at once, and a smaller one finishes
            points.fill("4")
            points.press("Tab")
            page.click(f"#{PREFIX}_random_run")
            page.wait_for_function(
                f"() => document.querySelector('#{PREFIX}_random_status').innerText.includes('segments')",
                timeout=60_000)
        except Exception:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "autosam_stop_failure.png"), full_page=True)
            raise
