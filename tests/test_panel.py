"""The panel's handlers with the real engine and a tiny checkpoint, and the panel build under this gradio."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sd_webui_sam.errors import InvalidPromptError
from sd_webui_sam.images import image_content_key
from sd_webui_sam.ui import handlers
from tests.fixtures.panel_masks import unpacked_mask


@pytest.fixture(scope="module")
def engine(tiny_sam, tmp_path_factory):
    from sd_webui_sam.engine import Engine
    from sd_webui_sam.settings import EngineSettings

    directory = tmp_path_factory.mktemp("panel_models")
    shutil.copy(tiny_sam[0], directory / "tiny_sam.pth")
    return Engine(EngineSettings(user_model_dir=directory, device="cpu"))


@pytest.fixture
def picture():
    pixels = np.zeros((96, 128, 3), dtype=np.uint8)
    pixels[:] = (40, 90, 160)
    pixels[30:70, 40:90] = (220, 180, 60)
    return Image.fromarray(pixels)


def prompts(points=(), boxes=(), size=(128, 96)):
    return json.dumps({"width": size[0], "height": size[1], "points": [list(p) for p in points],
                       "boxes": [list(b) for b in boxes]})


def test_points_give_three_candidates_matching_the_engine(engine, picture):
    from sd_webui_sam.predictor import Prompts

    found = handlers.segment(engine, "tiny_sam.pth", picture, prompts([(60.5, 50.5, 1), (10.5, 12.5, 0)]))
    assert found.masks.shape == (3, 96, 128) and found.masks.dtype == bool
    direct = engine.segment("tiny_sam.pth", np.asarray(picture), Prompts(points=[(60.5, 50.5), (10.5, 12.5)], labels=[1, 0]))
    assert np.array_equal(found.masks, direct.masks[0])
    assert np.allclose(found.scores, direct.scores[0])
    # What the browser gets: each candidate as packed bits at the picture's size (it is under 1024 px),
    # the very mask the engine made, with its score and the best one marked.
    payload = json.loads(handlers.candidates_payload(found, token=7))
    assert (payload["token"], payload["width"], payload["height"], payload["best"]) == ("7", 128, 96, found.best)
    assert payload["scores"] == [round(float(s), 4) for s in found.scores]
    for packed, mask in zip(payload["masks"], found.masks):
        assert np.array_equal(unpacked_mask(packed, (128, 96)), mask)


def test_a_large_picture_sends_small_masks_that_keep_its_shape():
    mask = np.zeros((3000, 4000), dtype=bool)
    mask[750:2250, 1000:3000] = True
    candidates = handlers.Candidates(image=np.zeros((3000, 4000, 3), np.uint8), masks=np.stack([mask] * 3),
                                     scores=np.array([0.1, 0.9, 0.5], np.float32))
    payload = json.loads(handlers.candidates_payload(candidates))
    assert (payload["maskWidth"], payload["maskHeight"]) == (1024, 768)
    assert sum(len(m) for m in payload["masks"]) < 30_000  # three masks in one small reply
    small = unpacked_mask(payload["masks"][1], (1024, 768))
    assert small.shape == (768, 1024) and small[192:576, 256:768].all() and small.sum() == 384 * 512


def test_a_large_picture_is_decoded_at_screen_size_and_its_outputs_at_full_size(engine):
    """A click on a photo larger than the canvas answers with screen-sized masks; the outputs are
    the engine's full-size mask of the chosen candidate, made only when asked for."""
    from sd_webui_sam.predictor import Prompts

    pixels = np.zeros((1200, 1600, 3), dtype=np.uint8)
    pixels[:] = (40, 90, 160)
    pixels[300:900, 500:1200] = (220, 180, 60)
    session = handlers.session_image(pixels)
    found = handlers.segment(engine, "tiny_sam.pth", session, prompts([(800.5, 600.5, 1)], size=(1600, 1200)))
    assert found.masks.shape == (3, 768, 1024)
    payload = json.loads(handlers.candidates_payload(found))
    assert (payload["width"], payload["maskWidth"], payload["maskHeight"]) == (1600, 1024, 768)
    assert np.array_equal(unpacked_mask(payload["masks"][found.best], (1024, 768)), found.masks[found.best])
    direct = engine.segment("tiny_sam.pth", pixels, Prompts(points=[(800.5, 600.5)], labels=[1])).masks[0]
    chosen = handlers.chosen_outputs(found, found.best, handlers.MaskTools())
    assert chosen.mask.size == chosen.cutout.size == (1600, 1200)
    assert np.array_equal(np.asarray(chosen.mask) > 127, direct[found.best])
    assert np.array_equal(np.asarray(handlers.chosen_outputs(found, 0, handlers.MaskTools()).mask) > 127, direct[0])


def test_a_click_on_a_large_picture_shows_outputs_without_the_full_size_path(engine, tmp_path):
    """Issue #13: a click costs the decoder plus small outputs; the full-size decode and files are
    made only for a download (full_size=True) or a send (mask_to_send)."""
    pixels = np.zeros((1200, 1600, 3), dtype=np.uint8)
    pixels[:] = (40, 90, 160)
    pixels[300:900, 500:1200] = (220, 180, 60)
    session = handlers.session_image(pixels)
    found = handlers.segment(engine, "tiny_sam.pth", session, prompts([(800.5, 600.5, 1)], size=(1600, 1200)))
    full_decodes = []
    real_full_size = found.full_size

    def spy():
        full_decodes.append(1)
        return real_full_size()

    found.full_size = spy
    files = handlers.ImageFiles()
    tools = handlers.MaskTools(expand=8)
    shown = [Image.open(path) for path in handlers.chosen_output_files(found, found.best, tools, files, full_size=False)]
    assert not full_decodes
    assert [image.size for image in shown] == [(640, 480)] * 3
    # the shown mask is the drawn candidate after the tools, scaled with the picture (8 px -> 3 px)
    from sd_webui_sam import masks as mask_ops
    expected = mask_ops.expand(handlers.resized_mask(found.masks[found.best], (640, 480)), 3)
    assert np.array_equal(np.asarray(shown[1]) > 127, expected)

    # a send to inpaint with the small mask on screen: the full-size one is made then
    sent = handlers.mask_to_send(Image.fromarray(pixels), shown[1], found, found.best, tools)
    assert sent.size == (1600, 1200) and len(full_decodes) == 1
    # a download: the full-size files (the decode is not repeated)
    full = [Image.open(path) for path in handlers.chosen_output_files(found, found.best, tools, files, full_size=True)]
    assert [image.size for image in full[1:]] == [(1600, 1200)] * 2 and len(full_decodes) == 1
    assert np.array_equal(np.asarray(full[1]), np.asarray(sent))
    # a mask already at the picture's size (Auto SAM's "send to panel") is sent as it is
    assert handlers.mask_to_send(Image.fromarray(pixels), full[1], found, 0, tools) is full[1]
    # a send right after a click, before its outputs were built, sends the chosen candidate
    early = handlers.mask_to_send(Image.fromarray(pixels), None, found, found.best, tools)
    assert np.array_equal(np.asarray(early), np.asarray(sent))
    # no candidates (cleared, or a failed click): nothing to send, as before
    assert handlers.mask_to_send(Image.fromarray(pixels), None, None, 0, tools) is None


def test_a_click_on_the_panels_picture_does_not_hash_its_pixels_again(engine, picture, monkeypatch):
    from sd_webui_sam import predictor

    session = handlers.session_image(picture)
    handlers.encode_ahead(engine, "tiny_sam.pth", session)
    hashed = []
    real = predictor.image_content_key
    monkeypatch.setattr(predictor, "image_content_key", lambda pixels: hashed.append(1) or real(pixels))
    hits = engine.embeddings.stats()["hits"]
    handlers.segment(engine, "tiny_sam.pth", session, prompts([(60.5, 50.5, 1)]))
    handlers.hover_payload(engine, "tiny_sam.pth", session, prompts([(30.5, 20.5, 1)]))
    assert not hashed and engine.embeddings.stats()["hits"] == hits + 2  # the cached embedding, found by its digest


def test_a_small_picture_shows_its_full_size_outputs_on_a_click(engine, picture):
    found = handlers.segment(engine, "tiny_sam.pth", handlers.session_image(picture), prompts([(60.5, 50.5, 1)]))
    found.full_size = lambda: pytest.fail("a picture no larger than the canvas needs no second decode")
    assert handlers.is_full_size(found)
    shown = handlers.preview_outputs(found, found.best, handlers.MaskTools())
    full = handlers.chosen_outputs(found, found.best, handlers.MaskTools())
    assert shown.mask.size == (128, 96) and np.array_equal(np.asarray(shown.mask), np.asarray(full.mask))


def test_the_hover_mask_is_the_best_candidate_and_supersedes_no_click(engine, picture):
    session = handlers.session_image(picture)
    clicked = handlers.segment(engine, "tiny_sam.pth", session, prompts([(60.5, 50.5, 1)]))
    hover = json.loads(handlers.hover_payload(engine, "tiny_sam.pth", session, prompts([(60.5, 50.5, 1)]), token=3))
    assert (hover["token"], hover["maskWidth"], hover["maskHeight"]) == ("3", 128, 96)
    assert np.array_equal(unpacked_mask(hover["mask"], (128, 96)), clicked.masks[clicked.best])
    assert not handlers.superseded(clicked, session)  # the click's outputs are still the ones to build
    assert handlers.hover_payload(engine, "tiny_sam.pth", None, prompts([(5.5, 5.5, 1)])) == ""


@pytest.mark.parametrize("name, stem", [("My photo.JPG", "My_photo"), ("a/b/c.d.png", "c.d"), ("", "picture"),
                                        (None, "picture"), ("../..", "picture"), ("..png", "picture")])
def test_download_names_come_from_the_picture(name, stem):
    assert handlers.picture_stem(name) == stem


def test_status_names_the_candidate_in_use_and_the_best():
    candidates = handlers.Candidates(image=np.zeros((4, 4, 3), np.uint8), masks=np.zeros((3, 4, 4), bool),
                                     scores=np.array([0.2, 0.9, 0.5], np.float32), prompt_summary="1 positive point")
    assert handlers.candidates_status(candidates, None).endswith("Using Mask 2, the best.")
    assert handlers.candidates_status(candidates, 0).endswith("Using Mask 1; Mask 2 scored best.")
    assert "3 masks from 1 positive point" in handlers.candidates_status(candidates, 5)


def test_several_boxes_merge_per_candidate(engine, picture):
    from sd_webui_sam.predictor import Prompts

    boxes = [(5, 5, 40, 40), (60, 30, 120, 90)]
    found = handlers.segment(engine, "tiny_sam.pth", picture, prompts(boxes=boxes))
    direct = engine.segment("tiny_sam.pth", np.asarray(picture), Prompts(boxes=[tuple(map(float, b)) for b in boxes]))
    assert np.array_equal(found.masks, direct.masks.any(axis=0))


def test_outputs_follow_the_tools(engine, picture):
    found = handlers.segment(engine, "tiny_sam.pth", picture, prompts([(60.5, 50.5, 1)]))
    plain = handlers.chosen_outputs(found, 1, handlers.MaskTools())
    mask = np.asarray(plain.mask)
    assert np.array_equal(mask > 0, found.masks[1])
    cutout = np.asarray(plain.cutout)
    assert np.array_equal(cutout[..., 3], mask)
    assert np.array_equal(cutout[mask == 255][:, :3], np.asarray(picture)[mask == 255])
    inverted = np.asarray(handlers.chosen_outputs(found, 1, handlers.MaskTools(invert=True)).mask)
    assert np.array_equal(inverted > 0, ~found.masks[1])
    grown = np.asarray(handlers.chosen_outputs(found, 1, handlers.MaskTools(expand=1)).mask)
    assert (grown > 0).sum() > (mask > 0).sum() and np.all(grown[mask > 0] > 0)
    soft = np.asarray(handlers.chosen_outputs(found, 1, handlers.MaskTools(feather=3)).mask)
    assert len(np.unique(soft)) > 2


@pytest.mark.parametrize("model, image, text, expected", [
    (None, "picture", prompts([(5, 5, 1)]), "No SAM model"),
    ("tiny_sam.pth", None, prompts([(5, 5, 1)]), "No image"),
    ("tiny_sam.pth", "picture", prompts(), "No prompt"),
    ("tiny_sam.pth", "picture", prompts([(5, 5, 0)]), "Only negative points"),
    ("tiny_sam.pth", "picture", prompts([(5, 5, 1)], size=(64, 64)), "clear them and click again"),
    ("missing.pth", "picture", prompts([(5, 5, 1)]), "missing.pth"),
])
def test_failures_become_status_messages(engine, picture, model, image, text, expected):
    wrapped = handlers.guarded(lambda: handlers.segment(engine, model, picture if image else None, text), lambda m: m)
    message = wrapped()
    assert isinstance(message, str) and expected in message


def test_out_of_memory_is_explained(picture):
    import torch

    from sd_webui_sam.settings import EngineSettings

    class Exhausted:
        settings = EngineSettings()

        def segment(self, *args, **kwargs):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    message = handlers.guarded(lambda: handlers.segment(Exhausted(), "m.pth", picture, prompts([(5, 5, 1)])), str)()
    assert message.startswith("Out of memory")


def test_prompt_parsing_rejects_points_outside_the_image():
    with pytest.raises(InvalidPromptError):
        handlers.parse_prompts(prompts([(500, 5, 1)]), (96, 128))


def test_panel_builds_and_preview_handler_reports_instead_of_raising(engine, picture):
    import gradio as gr

    from sd_webui_sam.ui.panel import PanelOptions, build_panel

    with gr.Blocks() as demo:
        panel = build_panel(PanelOptions(prefix="t_sam", engine=lambda: engine, accordion=False))
    labels = [c.label for c in panel.script_args]
    assert len(labels) == 6 and all(labels)
    config = demo.get_config_file()
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    for part in ("input_image", "preview", "candidates", "choice", "overlay", "mask", "cutout", "undo", "clear",
                 "auto_preview", "expand", "feather", "fill_holes", "min_island", "invert", "model", "refresh"):
        assert f"t_sam_{part}" in ids
    functions = demo.fns.values() if isinstance(demo.fns, dict) else demo.fns  # gradio 4: a dict by id
    preview = next(f.fn for f in functions if getattr(f.fn, "__name__", "") == "preview_masks")
    remember = next(f.fn for f in functions if getattr(f.fn, "__name__", "") == "remember_image")
    # A new picture empties every output of the old one.
    session, masks_data, state, status, overlay, mask, cutout = remember("tiny_sam.pth", picture, None)
    assert isinstance(session, handlers.SessionImage) and np.array_equal(session.pixels, np.asarray(picture))
    assert (masks_data, state, overlay, mask, cutout) == ("", None, None, None, None) and "Encoding" in status
    masks_data, choice, state, status = preview("tiny_sam.pth", session, prompts([(60.5, 50.5, 1)]))
    assert len(json.loads(masks_data)["masks"]) == 3 and state.masks.shape == (3, 96, 128) and "3 masks" in status
    # Another picture: the outputs of a render still running for the old one's masks are dropped.
    assert not handlers.superseded(state, session)
    remember("tiny_sam.pth", picture, session)
    assert handlers.superseded(state, session)
    masks_data, choice, state, status = preview("tiny_sam.pth", None, prompts([(60.5, 50.5, 1)]))
    assert masks_data == "" and state is None and "sam-status-error" in status and "Traceback" not in status


def test_session_image_is_decoded_once_and_encoded_ahead_of_the_first_click(engine, picture):
    from sd_webui_sam.engine import Engine

    fresh = Engine(engine.settings)
    session = handlers.session_image(picture)
    assert handlers.session_image(None) is None
    assert handlers.encode_ahead(fresh, None, session) is None and fresh.embeddings.stats()["misses"] == 0
    assert handlers.encode_ahead(fresh, "tiny_sam.pth", session) > 0
    hits = fresh.embeddings.stats()["hits"]
    found = handlers.segment(fresh, "tiny_sam.pth", session, prompts([(60.5, 50.5, 1)]))
    stats = fresh.embeddings.stats()
    assert (stats["misses"], stats["hits"]) == (1, hits + 1)  # the click reused the embedding from the upload
    assert handlers.encode_ahead(fresh, "tiny_sam.pth", session) is None  # already cached: nothing to report
    assert found.image_digest == session.digest == image_content_key(np.asarray(picture))


def test_output_files_are_exact_pngs_named_after_the_picture(engine, picture, tmp_path):
    files = handlers.ImageFiles(keep=8)
    named = json.dumps({**json.loads(prompts([(60.5, 50.5, 1)])), "name": "beach day.jpg"})
    found = handlers.segment(engine, "tiny_sam.pth", handlers.session_image(picture), named)
    tools = handlers.MaskTools(expand=2)
    overlay_path, mask_path, cutout_path = handlers.chosen_output_files(found, 1, tools, files)
    expected = handlers.chosen_outputs(found, 1, tools)
    with Image.open(mask_path) as mask, Image.open(cutout_path) as cutout, Image.open(overlay_path) as overlay:
        assert mask.format == "PNG" and np.array_equal(np.asarray(mask), np.asarray(expected.mask))
        assert cutout.format == "PNG" and cutout.mode == "RGBA"
        assert np.array_equal(np.asarray(cutout), np.asarray(expected.cutout))
        assert overlay.format == "PNG" and overlay.size == (128, 96)
    from pathlib import Path

    assert [Path(p).name for p in (overlay_path, mask_path, cutout_path)] == [
        "beach_day_overlay.png", "beach_day_mask.png", "beach_day_cutout.png"]
    # Only the newest files stay on disk.
    for _ in range(4):
        handlers.chosen_output_files(found, 0, tools, files)
    from pathlib import Path

    assert not Path(mask_path).exists() and Path(handlers.chosen_output_files(found, 0, tools, files)[1]).exists()


def test_device_choice_moves_sam_and_says_where_it_runs(tiny_sam, tmp_path):
    """The reference's "Use CPU for SAM", for every device: the choice reaches the engine at once."""
    import gradio as gr

    from sd_webui_sam.engine import Engine
    from sd_webui_sam.settings import EngineSettings
    from sd_webui_sam.ui.panel import PanelOptions, build_panel

    shutil.copy(tiny_sam[0], tmp_path / "tiny_sam.pth")
    own_engine = Engine(EngineSettings(user_model_dir=tmp_path, device="auto"))
    with gr.Blocks() as demo:
        panel = build_panel(PanelOptions(prefix="d_sam", engine=lambda: own_engine, accordion=False))
    assert panel.extra["device"].value == "auto"
    functions = demo.fns.values() if isinstance(demo.fns, dict) else demo.fns
    change_device = next(f.fn for f in functions if getattr(f.fn, "__name__", "") == "change_device")
    status = change_device("cpu")
    assert own_engine.stats()["device"] == "cpu" and "SAM runs on cpu now" in status and "sam-status-error" not in status
    message, done = handlers.change_device(own_engine, "warp-drive")
    assert not done and "warp-drive" in message
    if not torch.cuda.is_available():
        message, done = handlers.change_device(own_engine, "cuda")
        assert not done and "not available" in message and own_engine.stats()["device"] == "cpu"


def test_upload_encode_message_never_replaces_a_preview_answered_meanwhile(engine, picture):
    """The upload-time encode and a quick first click race; the click's result must stay on screen."""
    session = handlers.session_image(picture)

    class PreviewDuringEncode:
        """The engine, except that a preview is answered while the encoder runs."""

        def __init__(self, real):
            self.real, self.embeddings, self.settings = real, real.embeddings, real.settings

        def predictor(self, name):
            real_predictor = self.real.predictor(name)
            outer = self

            class Racing:
                def encode(self, pixels, **kwargs):
                    real_predictor.encode(pixels, **kwargs)
                    handlers.segment(outer.real, name, session, prompts([(60.5, 50.5, 1)]))

                def predict(self, *args, **kwargs):
                    return real_predictor.predict(*args, **kwargs)

            return Racing()

    engine.embeddings.clear()
    assert handlers.encode_ahead(PreviewDuringEncode(engine), "tiny_sam.pth", session) is None
    engine.embeddings.clear()
    quiet = handlers.session_image(picture)
    assert handlers.encode_ahead(engine, "tiny_sam.pth", quiet) > 0  # no click meanwhile: the time is reported


def test_outputs_of_superseded_or_reset_candidates_stay_out(engine, picture):
    """A render for candidates older than the newest answer, or than a reset, must not show."""
    session = handlers.session_image(picture)
    first = handlers.segment(engine, "tiny_sam.pth", session, prompts([(60.5, 50.5, 1)]))
    assert not handlers.superseded(first, session)
    second = handlers.segment(engine, "tiny_sam.pth", session, prompts([(30.5, 20.5, 1)]))
    assert handlers.superseded(first, session) and not handlers.superseded(second, session)
    handlers.invalidate(session)  # Clear: the prompts are gone
    assert handlers.superseded(second, session)
    assert not handlers.superseded(second, handlers.session_image(picture))  # another picture's counters
