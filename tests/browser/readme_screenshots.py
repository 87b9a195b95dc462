"""The README's pictures of the panel, taken in Debian's Chromium from the running app.

    python -m tests.browser.readme_screenshots [--real-hosts]

docs/panel.png: the standalone app at 1400x1000 after one click (tiny random-weight SAM, so the
mask is whatever those weights give; the layout is what the picture is for).
``--real-hosts`` also copies the real-host test's shots of the panel in A1111's txt2img column
(test-artifacts/real_hosts/panel-a1111-txt2img-three-masks.png, made by
tests/real_hosts/test_panel_in_hosts.py) to docs/panel_a1111.png.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

import numpy as np
from PIL import Image

from tools import browser_driver as driver

DOCS = driver.ROOT / "docs"
REAL_HOST_SHOT = driver.ROOT / "test-artifacts" / "real_hosts" / "panel-a1111-txt2img-three-masks.png"


def _scene(path: Path, size=(1024, 768)) -> None:
    """A simple scene: sky, ground, a sun and a house, so the dots and the mask read at a glance."""
    width, height = size
    yy, xx = np.mgrid[:height, :width]
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:] = (135, 190, 235)
    pixels[yy > height * 0.62] = (90, 150, 70)
    pixels[(yy - height * 0.2) ** 2 + (xx - width * 0.8) ** 2 < (height * 0.09) ** 2] = (250, 215, 80)
    house = (xx > width * 0.25) & (xx < width * 0.55) & (yy > height * 0.4) & (yy < height * 0.75)
    pixels[house] = (200, 90, 60)
    roof = (yy < height * 0.4) & (yy > height * 0.22) & (np.abs(xx - width * 0.4) < (yy - height * 0.22) * 0.85)
    pixels[roof] = (110, 60, 50)
    Image.fromarray(pixels).save(path)


def _compact(path: Path) -> None:
    """256 colours: a screenshot for the README at a third of its size, still sharp."""
    with Image.open(path) as shot:
        small = shot.convert("RGB").quantize(256)
    small.save(path, optimize=True)


def standalone(out: Path) -> None:
    from tools.fixtures import sam_checkpoints as fixtures

    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        (root / "models").mkdir()
        fixtures.save_state_dict(fixtures.build_reference_sam(fixtures.TINY, seed=0).state_dict(),
                                 root / "models" / "sam_vit_b_example.pth")
        picture = root / "house.png"
        _scene(picture)
        with driver.standalone_app(root / "models", timeout_s=300) as url, \
                driver.browser_page(url, viewport=(1400, 1000)) as page:
            driver.upload(page, picture)
            driver.set_auto_preview(page, True)
            page.wait_for_function(f"() => document.querySelector('#{driver.PREFIX}_status').innerText.includes('encoded')",
                                   timeout=120_000)
            page.evaluate(f"() => document.querySelector('#{driver.PREFIX}_panel').scrollIntoView({{block: 'start'}})")
            drawn = page.evaluate(f"() => window.samPanel.prompts('{driver.PREFIX}').masksDrawn")
            page.mouse.click(*driver.client_point(page, 400, 480))
            page.wait_for_function(f"(n) => window.samPanel.prompts('{driver.PREFIX}').masksDrawn > n", arg=drawn,
                                   timeout=60_000)
            driver.wait_for_output(page, "mask", None, timeout_ms=60_000)
            page.wait_for_timeout(300)  # the strip's thumbnails follow the canvas by a frame
            page.screenshot(path=str(out))
    _compact(out)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real-hosts", action="store_true")
    args = parser.parse_args(argv)
    DOCS.mkdir(exist_ok=True)
    standalone(DOCS / "panel.png")
    print(f"wrote {DOCS / 'panel.png'}")
    if args.real_hosts:
        if not REAL_HOST_SHOT.exists():
            print(f"{REAL_HOST_SHOT} is missing: run tests/real_hosts/test_panel_in_hosts.py first", file=sys.stderr)
            return 1
        shutil.copy(REAL_HOST_SHOT, DOCS / "panel_a1111.png")
        _compact(DOCS / "panel_a1111.png")
        print(f"wrote {DOCS / 'panel_a1111.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
