"""The panel as a user works in it (issue #13), in a real Chromium at two window sizes.

The picture is the largest thing in the panel; a click draws the chosen mask on it; nothing moves
after the first click; the strip, the radio and the outputs agree on one candidate; Clear, undo
and a new picture leave nothing stale; downloads are named after the picture; and the page asks
nothing of any machine but this one. Screenshots of each state go to test-artifacts/.
"""
from __future__ import annotations

from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from sd_webui_sam.compat import gradio_compat as grc
from tests.fixtures.panel_masks import unpacked_mask
from tools import browser_driver as driver

pytestmark = pytest.mark.browser

ARTIFACTS = driver.ROOT / "test-artifacts"
P = driver.PREFIX
VIEWPORTS = ((1400, 1000), (900, 800))
STACK = f"gradio{grc.GRADIO_MAJOR}"
#: Elements whose place on the page must not change once the user starts clicking.
STEADY = ("input_image", "candidates", "choice", "status", "undo", "clear", "preview", "expand", "overlay", "mask",
          "cutout")


def _picture(path, size, seed=0):
    width, height = size
    rng = np.random.default_rng(seed)
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:] = (40, 90, 160)
    pixels[height // 4: 3 * height // 4, width // 3: 2 * width // 3] = (220, 180, 60)
    pixels = pixels + rng.integers(0, 25, pixels.shape, dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def pictures(tmp_path):
    return {
        "wide": _picture(tmp_path / "holiday photo.png", (320, 240)),
        "tall": _picture(tmp_path / "tall.png", (90, 300), seed=1),
    }


def shot(page, name):
    ARTIFACTS.mkdir(exist_ok=True)
    width = page.viewport_size["width"]
    page.screenshot(path=str(ARTIFACTS / f"canvas_{STACK}_{width}_{name}.png"))


def rects(page):
    return page.evaluate(
        """(names) => Object.fromEntries(names.map((n) => {
            const e = document.querySelector('#' + n);
            const r = e.getBoundingClientRect();
            return [n, [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height]];
        }))""",
        [f"{P}_{name}" for name in STEADY],
    )


def largest_other_element(page):
    """Area of the canvas, and of the largest other component or picture in the panel (with its name)."""
    return page.evaluate(
        f"""() => {{
            const panel = document.querySelector('#{P}_panel');
            const canvas = document.querySelector('#{P}_input_image img');
            const component = document.querySelector('#{P}_input_image');
            const area = (e) => {{ const r = e.getBoundingClientRect(); return r.width * r.height; }};
            let largest = 0, name = '';
            // What a user sees as one thing: a component (a gradio block holding no other) or a picture.
            for (const e of panel.querySelectorAll('.block, img, canvas')) {{
                if (e.contains(canvas) || component.contains(e) || e.querySelector('.block')) continue;
                if (e.closest('.tabs, [id$="_more_tabs"], [id$="_text_section"]')) continue;
                const style = getComputedStyle(e);
                if (style.display === 'none' || style.visibility === 'hidden') continue;
                if (area(e) > largest) {{ largest = area(e); name = e.tagName + '#' + e.id + '.' + e.className; }}
            }}
            return [area(canvas), largest, name];
        }}"""
    )


def mask_canvas_pixels(page):
    """(painted pixels as an (h, w) bool array, CSS box of the mask canvas, CSS box of the picture as painted)."""
    painted, width, height, mask_box, picture_box = page.evaluate(
        f"""() => {{
            const c = document.querySelector('#{P}_mask_canvas');
            const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let painted = '';
            for (let i = 3; i < data.length; i += 4) painted += data[i] > 0 ? '1' : '0';
            const r = c.getBoundingClientRect();
            const img = document.querySelector('#{P}_input_image img');
            const b = img.getBoundingClientRect();
            const s = Math.min(b.width / img.naturalWidth, b.height / img.naturalHeight);
            const w = img.naturalWidth * s, h = img.naturalHeight * s;
            return [painted, c.width, c.height, [r.left, r.top, r.width, r.height],
                    [b.left + (b.width - w) / 2, b.top + (b.height - h) / 2, w, h]];
        }}"""
    )
    pixels = np.frombuffer(painted.encode("ascii"), dtype=np.uint8) == ord("1")
    return pixels.reshape(height, width), mask_box, picture_box


def wait_drawn(page, before):
    page.wait_for_function(f"() => window.samPanel.prompts('{P}').masksDrawn > {before}", timeout=60_000)


def click_and_see_mask(page, x, y):
    """Click pixel (x, y): the chosen mask is drawn on the picture, exactly over it."""
    drawn = drawn_count(page)
    page.mouse.click(*driver.client_point(page, x, y))
    wait_drawn(page, drawn)
    painted, mask_box, picture_box = mask_canvas_pixels(page)
    assert painted.any()
    assert all(abs(a - b) <= 1.5 for a, b in zip(mask_box, picture_box)), (mask_box, picture_box)
    # the very mask the server chose, pixel for pixel (it travels packed and compressed)
    shown = page.evaluate(f"() => window.samPanel.candidates('{P}')")
    assert np.array_equal(painted, shown_mask(shown, shown["selected"]))


def drawn_count(page):
    return page.evaluate(f"() => window.samPanel.prompts('{P}').masksDrawn")


def output_srcs(page):
    return page.evaluate(
        f"""() => ['mask', 'cutout', 'overlay'].map((n) => {{
            const img = document.querySelector('#{P}_' + n + ' img');
            return img && img.getAttribute('src') ? img.src : null;
        }})"""
    )


def wait_outputs_cleared(page):
    page.wait_for_function(
        f"""() => ['mask', 'cutout', 'overlay'].every((n) => {{
                const img = document.querySelector('#{P}_' + n + ' img');
                return !img || !img.getAttribute('src');
            }})
            && document.querySelectorAll('#{P}_candidates img').length === 0
            && document.querySelector('#{P}_status').innerText.trim() === ''
            && !document.querySelector('#{P}_mask_canvas').dataset.drawn""",
        timeout=30_000,
    )


def upload_and_encode(page, path, timeout_ms=60_000):
    """Upload ``path`` with auto-preview on, wait until it is encoded, and bring it on screen whole."""
    driver.upload(page, path)
    driver.set_auto_preview(page, True)
    page.wait_for_function(f"() => document.querySelector('#{P}_status').innerText.includes('encoded')",
                           timeout=timeout_ms)
    driver.centre_picture(page)


def shown_mask(shown, index):
    """Candidate ``index`` of ``window.samPanel.candidates``, as the script reads it."""
    return unpacked_mask(shown["masks"][index], (shown["maskWidth"], shown["maskHeight"]))


@pytest.mark.parametrize("viewport", VIEWPORTS, ids=lambda v: f"{v[0]}x{v[1]}")
def test_canvas_mask_steady_layout_selection_and_downloads(app_url, pictures, viewport, request):
    requests = []
    with driver.browser_page(app_url, viewport) as page:
        page.on("request", lambda r: requests.append(r.url))
        try:
            shot(page, "0_start")
            driver.upload(page, pictures["wide"])
            driver.set_auto_preview(page, True)
            page.wait_for_function(f"() => document.querySelector('#{P}_status').innerText.includes('encoded')",
                                   timeout=60_000)
            page.locator(f"#{P}_input_image").scroll_into_view_if_needed()
            before_click = rects(page)

            # The canvas is the largest thing in the panel, as wide as its column allows and never
            # taller than the window.
            canvas_area, other_area, other = largest_other_element(page)
            assert canvas_area > other_area, other
            box = page.locator(f"#{P}_input_image img").bounding_box()
            assert box["height"] <= viewport[1] and box["width"] >= 0.5 * viewport[0] - 120

            # A click: the chosen mask is drawn on the picture, exactly over it.
            click_and_see_mask(page, 160, 120)
            first = driver.wait_for_output(page, "mask", None)
            shot(page, "1_first_click")

            # More clicks and a box: nothing on the page moves.
            drawn = drawn_count(page)
            page.mouse.click(*driver.client_point(page, 20, 20), button="right")
            wait_drawn(page, drawn)
            driver.wait_for_output(page, "mask", first)
            after = rects(page)
            for name, rect in before_click.items():
                shift = max(abs(a - b) for a, b in zip(rect, after[name]))
                assert shift <= 10, (name, rect, after[name])

            # The strip: three whole-picture thumbnails with scores; one selected, the radio's.
            shown = page.evaluate(f"() => window.samPanel.candidates('{P}')")
            assert len(shown["scores"]) == 3
            thumbs = page.locator(f"#{P}_candidates img")
            assert thumbs.count() == 3
            natural = page.evaluate(f"() => Array.from(document.querySelectorAll('#{P}_candidates img'))"
                                    ".map((i) => i.naturalWidth / i.naturalHeight)")
            assert all(abs(ratio - 320 / 240) < 0.05 for ratio in natural)  # the whole picture, not a crop
            for index, score in enumerate(shown["scores"]):
                assert f"{score:.3f}" in page.inner_text(f"#{P}_candidates .sam-candidate[data-index='{index}']")

            # Pick another candidate in the strip: radio, canvas, status and outputs follow it.
            other_index = next(i for i in range(3) if i != shown["selected"])
            mask_before = driver.wait_for_output(page, "mask", None)
            page.click(f"#{P}_candidates .sam-candidate[data-index='{other_index}']")
            page.wait_for_function(
                f"""(i) => document.querySelectorAll('#{P}_choice input[type=radio]')[i].checked
                          && document.querySelector('#{P}_status').innerText.includes('Using Mask ' + (i + 1))""",
                arg=other_index, timeout=30_000,
            )
            assert page.locator(f"#{P}_candidates .sam-candidate-selected").count() == 1
            assert page.get_attribute(f"#{P}_candidates .sam-candidate-selected", "data-index") == str(other_index)
            shown = page.evaluate(f"() => window.samPanel.candidates('{P}')")
            assert shown["selected"] == other_index and shown["drawn"].endswith(f":{other_index}")
            mask_src = driver.wait_for_output(page, "mask", mask_before)
            chosen = np.asarray(driver.decode(page, mask_src).convert("L")) > 127
            candidate = shown_mask(shown, other_index)
            assert np.array_equal(chosen, candidate)
            shot(page, "2_other_candidate")

            # The radio works the other way round: the strip and the canvas follow it.
            third = next(i for i in range(3) if i not in (other_index,))
            page.locator(f"#{P}_choice label", has_text=f"Mask {third + 1}").click()
            page.wait_for_function(f"(i) => window.samPanel.candidates('{P}').selected === i", arg=third)
            assert page.get_attribute(f"#{P}_candidates .sam-candidate-selected", "data-index") == str(third)

            # Downloads are PNGs named after the picture.
            for name in ("mask", "cutout", "overlay"):
                driver.wait_for_output(page, name, None)
                link = page.locator(f"#{P}_{name} a[download]").first
                with page.expect_download() as download_info:
                    link.click()
                download = download_info.value
                assert download.suggested_filename == f"holiday_photo_{name}.png"
                with open(download.path(), "rb") as handle:
                    assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
        except Exception:
            shot(page, f"failed_{request.node.name}")
            raise
    outside = [url for url in requests if urlparse(url).scheme in ("http", "https", "ws", "wss")
               and urlparse(url).hostname not in ("127.0.0.1", "localhost")]
    assert not outside, outside


def test_clear_undo_new_picture_and_box_removal_leave_nothing_stale(app_url, pictures, request):
    with driver.browser_page(app_url, VIEWPORTS[0]) as page:
        try:
            driver.upload(page, pictures["wide"])
            driver.set_auto_preview(page, True)

            def click_and_wait(x, y, button="left"):
                page.locator(f"#{P}_input_image").evaluate("(e) => e.scrollIntoView({block: 'start'})")
                drawn = drawn_count(page)
                page.mouse.click(*driver.client_point(page, x, y), button=button)
                wait_drawn(page, drawn)
                driver.wait_for_output(page, "cutout", None)

            click_and_wait(160, 120)
            page.click(f"#{P}_clear")
            wait_outputs_cleared(page)
            shot(page, "3_cleared")

            # Undo brings the cleared point back (and its masks); undoing that empties it all again.
            page.click(f"#{P}_undo")
            wait_drawn(page, 0)
            driver.wait_for_output(page, "mask", None)
            assert len(driver.dot_centres(page)) == 1
            page.click(f"#{P}_undo")
            page.wait_for_function(f"() => window.samPanel.prompts('{P}').points.length === 0")
            wait_outputs_cleared(page)

            # Undo follows actions: a removed dot comes back.
            click_and_wait(160, 120)
            click_and_wait(30, 30, "right")
            negative = [d for d in driver.dot_centres(page) if not d["positive"]][0]
            page.mouse.click(negative["cx"], negative["cy"])
            assert len(driver.dot_centres(page)) == 1
            page.click(f"#{P}_undo")
            page.wait_for_function(f"() => window.samPanel.prompts('{P}').points.length === 2")

            # A box goes away with a click on its handle.
            page.locator(f"#{P}_input_image").evaluate("(e) => e.scrollIntoView({block: 'start'})")
            driver.drag_box(page, (100, 60), (220, 180))
            assert page.locator(f"#{P}_overlay_svg rect.sam-box").count() == 1
            shot(page, "4_box")
            page.click(f"#{P}_overlay_svg .sam-box-remove")
            assert page.locator(f"#{P}_overlay_svg rect.sam-box").count() == 0
            assert page.evaluate(f"() => window.samPanel.prompts('{P}').boxes.length") == 0

            # A new picture: no prompt, candidate, status or output of the old one survives.
            driver.wait_for_output(page, "overlay", None)
            page.set_input_files(f"#{P}_input_image input[type=file]", str(pictures["tall"]))
            page.wait_for_function(f"() => window.samPanel.prompts('{P}').height === 300")
            assert page.evaluate(f"() => window.samPanel.prompts('{P}').points.length") == 0
            page.wait_for_function(
                f"""() => ['mask', 'cutout', 'overlay'].every((n) => {{
                        const img = document.querySelector('#{P}_' + n + ' img');
                        return !img || !img.getAttribute('src');
                    }}) && document.querySelectorAll('#{P}_candidates img').length === 0
                    && !document.querySelector('#{P}_status').innerText.includes('masks from')""",
                timeout=30_000,
            )
            # The tall picture still fits the window, whole.
            box = page.locator(f"#{P}_input_image img").bounding_box()
            assert box["height"] <= VIEWPORTS[0][1]
            click_and_wait(45, 150)
            shot(page, "5_tall_picture")
        except Exception:
            shot(page, f"failed_{request.node.name}")
            raise



def camera_photo(path, blue=160):
    """A 4000x3000 JPEG, as a camera gives: a yellow disc centred at (1800, 1500) on blue (another
    ``blue``, another picture: nothing of it is cached)."""
    yy, xx = np.mgrid[:3000, :4000]
    pixels = np.zeros((3000, 4000, 3), dtype=np.uint8)
    pixels[:] = (40, 90, blue)
    pixels[(yy - 1500) ** 2 + (xx - 1800) ** 2 < 800 ** 2] = (220, 180, 60)
    Image.fromarray(pixels).save(path, quality=90)
    return path

def test_a_4000x3000_photo_clicks_at_screen_size_and_downloads_at_full_size(app_url, tmp_path, request):
    """A camera-sized JPEG: the click's masks arrive at screen size and are drawn over the whole
    picture; the mask and the cut-out download at the photo's own size."""
    width, height = 4000, 3000
    path = camera_photo(tmp_path / "camera photo.jpg")
    with driver.browser_page(app_url, VIEWPORTS[0]) as page:
        try:
            upload_and_encode(page, path, timeout_ms=120_000)
            click_and_see_mask(page, 1800, 1500)
            shown = page.evaluate(f"() => window.samPanel.candidates('{P}')")
            assert shown_mask(shown, shown["selected"]).shape == (768, 1024)  # screen size, not 12 MP
            shot(page, "6_large_photo")

            # The click's outputs are shown small: no full-size decode or 12 MP file per click.
            shown_sizes = page.evaluate(f"""async () => {{
                const sizes = [];
                for (const n of ['mask', 'cutout', 'overlay']) {{
                    for (let i = 0; i < 600; i++) {{
                        const img = document.querySelector('#{P}_' + n + ' img');
                        if (img && img.complete && img.naturalWidth) {{ sizes.push([img.naturalWidth, img.naturalHeight]); break; }}
                        await new Promise((r) => setTimeout(r, 100));
                    }}
                }}
                return sizes;
            }}""")
            assert shown_sizes == [[640, 480]] * 3
            # A download asks for the full-size files then, and gets them.
            for name, size in (("mask", (width, height)), ("cutout", (width, height))):
                driver.wait_for_output(page, name, None, timeout_ms=120_000)
                with page.expect_download(timeout=120_000) as download_info:
                    page.locator(f"#{P}_{name} a[download]").first.click()
                download = download_info.value
                assert download.suggested_filename == f"camera_photo_{name}.png"
                with Image.open(download.path()) as downloaded:
                    assert downloaded.format == "PNG" and downloaded.size == size
                    if name == "mask":
                        # The same mask as the one drawn, at full size (it was decoded at each size
                        # from the same logits: only edge pixels may differ).
                        full = downloaded.convert("L").resize((1024, 768), Image.BOX)
                        agree = (np.asarray(full) > 127) == shown_mask(shown, shown["selected"])
                        assert agree.mean() > 0.97
        except Exception:
            shot(page, f"failed_{request.node.name}")
            raise


def test_the_mask_under_the_pointer_shows_before_a_click_and_gives_way_to_it(app_url, pictures, request):
    with driver.browser_page(app_url, VIEWPORTS[0]) as page:
        try:
            upload_and_encode(page, pictures["wide"])
            for x, y in ((150, 110), (155, 115), (160, 120)):
                page.mouse.move(*driver.client_point(page, x, y))
            page.wait_for_function(f"() => window.samPanel.prompts('{P}').hoversDrawn > 0", timeout=30_000)
            painted = page.evaluate(
                f"""() => {{ const c = document.querySelector('#{P}_hover_canvas');
                    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                    let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }}""")
            assert painted > 0
            # No click was made: no dot, no candidates, no outputs.
            state = page.evaluate(f"() => window.samPanel.prompts('{P}')")
            assert state["points"] == [] and state["masksDrawn"] == 0 and output_srcs(page) == [None, None, None]
            shot(page, "7_hover")

            # A click: the hover mask goes at once, and the click's mask is drawn.
            page.mouse.click(*driver.client_point(page, 160, 120))
            assert page.evaluate(f"() => document.querySelector('#{P}_hover_canvas').dataset.drawn") == ""
            wait_drawn(page, 0)
            assert len(driver.dot_centres(page)) == 1
        except Exception:
            shot(page, f"failed_{request.node.name}")
            raise


#: Records, on every frame, whether "Encoding the picture..." is on screen, where, and where the picture is.
ENCODING_RECORDER = f"""() => {{
    window.__encodingSeen = [];
    if (window.__encodingLoop) return;
    window.__encodingLoop = true;
    const loop = () => {{
        const note = document.querySelector('#{P}_encoding');
        if (note && !note.hidden && note.offsetParent !== null) {{
            const r = note.getBoundingClientRect();
            const p = document.querySelector('#{P}_input_image img').getBoundingClientRect();
            window.__encodingSeen.push({{text: note.innerText, note: [r.left, r.top, r.right, r.bottom],
                                        picture: [p.left, p.top, p.right, p.bottom],
                                        drawn: window.samPanel.prompts('{P}').masksDrawn}});
        }}
        requestAnimationFrame(loop);
    }};
    loop();
}}"""


def test_the_first_click_on_a_new_picture_says_it_is_encoding(app_url, tmp_path, request):
    """The first click pays for the encoder: a note over the canvas says so until its masks are
    drawn, without moving anything; the next click runs the decoder only and shows no note."""
    with driver.browser_page(app_url, VIEWPORTS[0]) as page:
        try:
            driver.set_auto_preview(page, True)
            # The server takes a moment to decode a 4000x3000 photo, so a click right after the
            # upload mostly comes before the encode has finished; on a loaded machine the encode can
            # win, and that click (rightly) shows no note: then another picture is tried.
            for attempt in range(3):
                driver.upload(page, camera_photo(tmp_path / f"first click {attempt}.jpg", blue=160 + attempt))
                driver.centre_picture(page)
                page.evaluate(ENCODING_RECORDER)
                picture_before = page.locator(f"#{P}_input_image img").bounding_box()
                drawn = drawn_count(page)
                page.mouse.click(*driver.client_point(page, 1800, 1500))
                if page.is_visible(f"#{P}_encoding"):
                    shot(page, "8_encoding")
                wait_drawn(page, drawn)
                if not page.evaluate(f"() => window.samPanel.prompts('{P}').sentEncoded"):
                    break
                assert page.evaluate("() => window.__encodingSeen") == []  # encoded already: no note
                page.click(f"#{P}_clear")
            else:
                pytest.skip("the encode finished before the click three times: nothing to show")
            seen = page.evaluate("() => window.__encodingSeen")
            assert seen, "the note never showed during the first click"
            for frame in seen:
                assert "Encoding the picture" in frame["text"] and frame["drawn"] == drawn  # before its masks
                left, top, right, bottom = frame["note"]
                p_left, p_top, p_right, p_bottom = frame["picture"]
                assert p_left <= left and right <= p_right and p_top <= top and bottom <= p_bottom  # over the canvas
                moved = max(abs(a - b) for a, b in zip(frame["picture"], (
                    picture_before["x"], picture_before["y"], picture_before["x"] + picture_before["width"],
                    picture_before["y"] + picture_before["height"])))
                assert moved <= 1, frame
            assert not page.is_visible(f"#{P}_encoding")
            shown = page.evaluate(f"() => window.samPanel.prompts('{P}').encodingShown")

            # A second click on the same picture runs the decoder only: no note.
            page.evaluate(ENCODING_RECORDER)
            drawn = drawn_count(page)
            page.mouse.click(*driver.client_point(page, 1700, 1400), button="right")
            wait_drawn(page, drawn)
            assert page.evaluate("() => window.__encodingSeen") == []
            assert page.evaluate(f"() => window.samPanel.prompts('{P}').encodingShown") == shown
            # The page can say where that click's time went (./benchmark.sh click prints it).
            split = page.evaluate(f"() => window.samPanel.prompts('{P}').lastSplit")
            assert split and all(split[step] >= 0 for step in ("beforeRequest", "request", "drawing"))
            assert 0 < split["serverMs"] <= split["request"]
        except Exception:
            shot(page, f"failed_{request.node.name}")
            raise


def test_the_page_reads_every_packed_mask_exactly_and_refuses_a_damaged_one(app_url):
    """The candidates travel as zlib-compressed bits that the page inflates itself
    (javascript/zlib_inflate.js): smooth and noisy masks, sizes that are not a multiple of 8 bits,
    and each kind of block a compressor writes (stored, fixed and dynamic codes)."""
    import base64
    import zlib

    from sd_webui_sam.ui import handlers

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:768, :1024]
    masks = {
        "disc": (yy - 300) ** 2 + (xx - 500) ** 2 < 200 ** 2,
        "noise": rng.random((768, 1024)) < 0.5,  # incompressible: stored blocks
        "speckled disc": ((yy - 400) ** 2 + (xx - 300) ** 2 < 250 ** 2) ^ (rng.random((768, 1024)) < 0.05),
        "empty, odd size": np.zeros((17, 333), dtype=bool),
        "full, odd size": np.ones((17, 333), dtype=bool),
        "one pixel": np.ones((1, 1), dtype=bool),
    }
    cases = []
    for name, mask in masks.items():
        height, width = mask.shape
        bits = np.packbits(mask).tobytes()
        streams = [zlib.compress(bits, level) for level in (0, 1, 9)]
        streams.append(base64.b64decode(handlers.packed_mask(mask, (width, height))))
        for stream in streams:
            cases.append([name, len(bits), base64.b64encode(stream).decode("ascii"), base64.b64encode(bits).decode("ascii")])
    with driver.browser_page(app_url) as page:
        results = page.evaluate(
            """(cases) => cases.map(([name, size, packed, expected]) => {
                const bytes = Uint8Array.from(atob(packed), (c) => c.charCodeAt(0));
                const out = window.samZlibInflate(bytes, size);
                let text = ''; for (let i = 0; i < out.length; i += 8192) text += String.fromCharCode(...out.subarray(i, i + 8192));
                return [name, btoa(text) === expected];
            })""",
            cases,
        )
        assert all(ok for _, ok in results), [name for name, ok in results if not ok]
        # A damaged or cut-off stream is refused with an error, never read as some other mask.
        good = zlib.compress(np.packbits(masks["speckled disc"]).tobytes(), 1)
        damaged = bytearray(good)
        damaged[len(good) // 2] ^= 0x10
        refused = page.evaluate(
            """([streams, size]) => streams.map((packed) => {
                try { window.samZlibInflate(Uint8Array.from(atob(packed), (c) => c.charCodeAt(0)), size); return false; }
                catch (error) { return error.message.startsWith('not a valid compressed mask'); }
            })""",
            [[base64.b64encode(bytes(damaged)).decode(), base64.b64encode(good[:-7]).decode()], 768 * 1024 // 8],
        )
        assert refused == [True, True]
