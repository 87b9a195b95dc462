"""The standalone server: panel at /, the API under /sam, Prometheus metrics at /metrics."""
import re
import shutil

import httpx
import numpy as np

from tests.fixtures.api_fixtures import ServerThread, image_b64


def test_standalone_server_answers_the_api_and_counts_requests_in_metrics(tiny_sam, tmp_path):
    from sd_webui_sam.app import create_app, make_engine

    shutil.copy(tiny_sam[0], tmp_path / "sam_tiny.pth")
    engine = make_engine(str(tmp_path), device="cpu")
    picture = np.full((64, 96, 3), 128, dtype=np.uint8)
    with ServerThread(create_app(engine)) as server, httpx.Client(base_url=server.url, trust_env=False, timeout=120) as client:
        page = client.get("/")
        assert page.status_code == 200  # the panel
        # ...which loads nothing from elsewhere (gradio's template has a CDN script and font preconnects).
        assert "https://" not in "".join(re.findall(r"<(?:script|link)[^>]*>", page.text))
        assert int(page.headers["content-length"]) == len(page.content)
        assert "fonts.googleapis" not in client.get("/theme.css").text
        assert client.get("/sam/sam-model").json() == ["sam_tiny.pth"]
        answer = client.post("/sam/sam-predict", json={"sam_model_name": "sam_tiny.pth", "input_image": image_b64(picture),
                                                       "sam_positive_points": [[40, 30]]})
        assert answer.status_code == 200 and len(answer.json()["masks"]) == 3
        bad = client.post("/sam/sam-predict", json={"sam_model_name": "sam_tiny.pth", "input_image": "not base64 !!",
                                                    "sam_positive_points": [[1, 1]]})
        assert bad.status_code == 400
        scraped = client.get("/metrics")
    assert scraped.status_code == 200
    text = scraped.text
    assert 'sam_api_requests_total{route="/sam/sam-predict",status="200"} 1.0' in text
    assert 'sam_api_errors_total{kind="client",route="/sam/sam-predict"} 1.0' in text
    assert "sam_encoder_seconds_count" in text


def test_flags_set_both_model_folders(tmp_path):
    from sd_webui_sam.app import build_parser, make_engine

    args = build_parser().parse_args(["--model-dir", str(tmp_path / "sam"), "--gdino-model-dir", str(tmp_path / "dino")])
    engine = make_engine(args.model_dir, "cpu", args.max_objects, args.gdino_model_dir)
    assert engine.settings.model_dirs()[0] == (tmp_path / "sam").resolve()
    assert engine.settings.gdino_model_dirs()[0] == (tmp_path / "dino").resolve()


def test_without_a_model_the_panel_says_what_to_do_and_where(tmp_path):
    from sd_webui_sam.app import make_engine
    from sd_webui_sam.ui.panel import first_run_html

    engine = make_engine(str(tmp_path), device="cpu")
    hint = first_run_html(lambda: engine, [])
    assert str(tmp_path.resolve()) in hint and "MobileSAM" in hint and "Download official checkpoints" in hint
    assert first_run_html(lambda: engine, ["sam_vit_b_01ec64.pth"]) == ""


# A standalone server with one extra route: a job that notes when it starts, notes when it sees
# the shutdown (the Interrupt the panel's jobs get), and then does not stop for two minutes.
LONG_JOB_SERVER = r"""
import sys, threading, time
from pathlib import Path

from fastapi.routing import APIRoute

from sd_webui_sam import app as standalone

notes, port = Path(sys.argv[1]), sys.argv[2]
made = standalone.create_app


def create_app(engine, shutdown=None):
    web = made(engine, shutdown)

    def long_job():
        (notes / "started").write_text("1")
        while not shutdown.is_set():
            time.sleep(0.05)
        (notes / "interrupted").write_text("1")
        time.sleep(120)
        return {}

    web.router.routes.insert(0, APIRoute("/test-long-job", long_job, methods=["GET"]))
    return web


standalone.create_app = create_app
standalone.main(["--port", port, "--model-dir", str(notes), "--device", "cpu"])
"""


def test_sigterm_ends_the_standalone_server_within_seconds_during_a_job(tmp_path):
    import os
    import signal
    import socket
    import subprocess
    import sys
    import threading
    import time
    from pathlib import Path

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    server = subprocess.Popen([sys.executable, "-c", LONG_JOB_SERVER, str(tmp_path), str(port)], cwd=root,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env={**os.environ, "NO_PROXY": "127.0.0.1,localhost"})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(url + "/", trust_env=False, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        assert server.poll() is None, server.stderr.read().decode(errors="replace")[-2000:]
        def ask_for_the_job() -> None:
            try:
                httpx.get(url + "/test-long-job", trust_env=False, timeout=180)
            except httpx.HTTPError:
                pass  # the server went away under it: what this test wants

        job = threading.Thread(target=ask_for_the_job, daemon=True)
        job.start()
        while not (tmp_path / "started").exists():
            assert time.monotonic() < deadline, "the long job never started"
            time.sleep(0.1)

        server.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        server.wait(timeout=10)
        assert time.monotonic() - sent < 10
        assert (tmp_path / "interrupted").exists()  # the job was told to stop, not only abandoned
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
