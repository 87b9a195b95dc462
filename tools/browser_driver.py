"""Start the standalone app and drive Debian's Chromium through Playwright (shared by tests and benchmark).

Never runs ``playwright install``: the browser is the system's ``chromium``.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Optional, Tuple

from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "sam"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-dev-shm-usage"]


def chromium_path() -> Optional[str]:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def standalone_app(model_dir: Path, *, timeout_s: float = 120.0, log_path: Optional[Path] = None) -> Iterator[str]:
    """Run ``python -m sd_webui_sam app`` in a child process; yields its URL."""
    port = free_port()
    env = dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", PYTHONUNBUFFERED="1")
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(
        [sys.executable, "-m", "sd_webui_sam", "app", "--host", "127.0.0.1", "--port", str(port),
         "--model-dir", str(model_dir), "--device", "cpu"],
        cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the app exited with code {process.returncode}")
            try:
                with opener.open(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the app did not start in time")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log is not subprocess.DEVNULL:
            log.close()


@contextlib.contextmanager
def browser_page(url: str, viewport: Tuple[int, int] = (1280, 1000), *, ready: Optional[str] = f"#{PREFIX}_input_image",
                 timeout_ms: int = 60_000, console: Optional[list] = None):
    """A page at ``url``; ``console`` (a list) collects the browser console's messages and page errors
    as ``(type, text)`` from before the first request."""
    executable = chromium_path()
    if executable is None:
        raise RuntimeError("Debian's chromium is not installed (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}, accept_downloads=True)
            page = context.new_page()
            if console is not None:
                page.on("console", lambda message: console.append((message.type, message.text)))
                page.on("pageerror", lambda error: console.append(("pageerror", str(error))))
            page.goto(url, wait_until="domcontentloaded")
            if ready:
                page.wait_for_selector(ready, timeout=timeout_ms)
            page.wait_for_function("() => window.samPanel !== undefined", timeout=timeout_ms)
            yield page
        finally:
            browser.close()


def upload(page, image_path: Path, *, prefix: str = PREFIX) -> None:
    """Upload ``image_path`` and wait until the panel has taken it as its picture.

    Waiting for any picture is not enough after the first upload: the old one is still shown for
    a moment, and a click then lands on it and is dropped when the new picture arrives. The
    same picture uploaded again (gradio may show it without a change) ends the wait after 30 s.
    """
    shown = f"window.samPanel.prompts('{prefix}')"
    pictures_before = page.evaluate(f"() => {shown}.pictures")
    page.set_input_files(f"#{prefix}_input_image input[type=file]", str(image_path))
    try:
        page.wait_for_function(
            f"""(before) => {{
                const svg = document.querySelector('#{prefix}_overlay_svg');
                const st = {shown};
                return svg && st.pictures > before && st.width > 0 && svg.getBoundingClientRect().width > 0;
            }}""",
            arg=pictures_before,
            timeout=30_000,
        )
    except PlaywrightTimeout:
        if not page.evaluate(f"() => {shown}.width > 0"):
            raise


def set_auto_preview(page, enabled: bool, *, prefix: str = PREFIX) -> None:
    box = page.locator(f"#{prefix}_auto_preview input[type=checkbox]")
    if box.is_checked() != enabled:
        box.click()


def client_point(page, x: int, y: int, *, prefix: str = PREFIX) -> Tuple[float, float]:
    """Where image pixel (x, y)'s centre is on screen now, from the img's own geometry."""
    return page.evaluate(
        f"""([x, y]) => {{
            const img = document.querySelector('#{prefix}_input_image img');
            const r = img.getBoundingClientRect();
            const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
            const left = r.left + (r.width - img.naturalWidth * s) / 2;
            const top = r.top + (r.height - img.naturalHeight * s) / 2;
            return [left + (x + 0.5) * s, top + (y + 0.5) * s];
        }}""",
        [x, y],
    )


def centre_picture(page, *, prefix: str = PREFIX) -> None:
    """Scroll so the whole picture is on screen: a click outside the viewport reaches nothing."""
    page.evaluate(f"() => document.querySelector('#{prefix}_input_image').scrollIntoView({{block: 'center'}})")


def drag_box(page, start: Tuple[int, int], end: Tuple[int, int], *, prefix: str = PREFIX) -> None:
    """Drag from image pixel ``start`` to ``end`` through a midpoint, as a hand does: a box prompt."""
    start_xy, end_xy = client_point(page, *start, prefix=prefix), client_point(page, *end, prefix=prefix)
    page.mouse.move(*start_xy)
    page.mouse.down()
    page.mouse.move((start_xy[0] + end_xy[0]) / 2, (start_xy[1] + end_xy[1]) / 2)
    page.mouse.move(*end_xy)
    page.mouse.up()


def dot_centres(page, *, prefix: str = PREFIX):
    return page.evaluate(
        f"""() => Array.from(document.querySelectorAll('#{prefix}_overlay_svg circle')).map((c) => {{
            const r = c.getBoundingClientRect();
            return {{x: +c.dataset.x, y: +c.dataset.y, cx: r.left + r.width / 2, cy: r.top + r.height / 2,
                     positive: c.classList.contains('sam-dot-positive')}};
        }})"""
    )


def candidate_sources(page, *, prefix: str = PREFIX):
    return page.evaluate(
        f"""() => Array.from(document.querySelectorAll('#{prefix}_candidates img'))
                 .filter((i) => i.complete && i.naturalWidth > 0).map((i) => i.src)"""
    )


def wait_for_new_candidates(page, previous, count: int = 3, timeout_ms: int = 60_000, *, prefix: str = PREFIX) -> None:
    page.wait_for_function(
        f"""([previous, count]) => {{
            const imgs = Array.from(document.querySelectorAll('#{prefix}_candidates img'));
            const ready = imgs.filter((i) => i.complete && i.naturalWidth > 0);
            const srcs = [...new Set(ready.map((i) => i.src))];
            return srcs.length >= count && srcs.some((s) => !previous.includes(s));
        }}""",
        arg=[previous, count],
        timeout=timeout_ms,
    )


def previews_answered(page, *, prefix: str = PREFIX) -> int:
    return page.evaluate(f"() => window.samPanel.prompts('{prefix}').previewsAnswered")


def wait_for_answered_candidates(page, answered_before: int, count: int = 3, timeout_ms: int = 60_000, *, prefix: str = PREFIX) -> None:
    """A preview sent after ``answered_before`` answers came back and its candidates are drawn.

    Identical masks give identical image URLs (gradio names files by content), so "a new src"
    cannot tell a repeated answer from no answer; the panel's own answer counter can.
    """
    page.wait_for_function(
        f"""([before, count]) => {{
            if (window.samPanel.prompts('{prefix}').previewsAnswered <= before) return false;
            const imgs = Array.from(document.querySelectorAll('#{prefix}_candidates img'));
            return imgs.length >= count && imgs.every((i) => i.complete && i.naturalWidth > 0);
        }}""",
        arg=[answered_before, count],
        timeout=timeout_ms,
    )


def wait_for_output(page, name: str, previous_src: Optional[str], timeout_ms: int = 30_000, *, prefix: str = PREFIX) -> str:
    """The src of output ``name`` (mask, cutout, overlay) once it shows a picture other than ``previous_src``."""
    selector = f"#{prefix}_{name} img"
    page.wait_for_function(
        """([selector, previous]) => {
            const img = document.querySelector(selector);
            return img && img.complete && img.naturalWidth > 0 && img.src !== previous;
        }""",
        arg=[selector, previous_src],
        timeout=timeout_ms,
    )
    return page.evaluate("(selector) => document.querySelector(selector).src", selector)


def decode(page, src: str):
    """An image's bytes as the browser gets them (data: URL on gradio 3, a file URL on 4), as PIL."""
    import base64
    import io

    from PIL import Image

    data = page.evaluate(
        """async (src) => {
            const response = await fetch(src);
            const bytes = new Uint8Array(await response.arrayBuffer());
            let text = '';
            for (const b of bytes) text += String.fromCharCode(b);
            return btoa(text);
        }""",
        src,
    )
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image
