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
