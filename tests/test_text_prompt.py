"""The panel's text prompt, at handler level with the real Engine, a tiny SAM and a tiny GroundingDINO."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sd_webui_sam.errors import InvalidPromptError, ModelNotFoundError
from sd_webui_sam.ui import text_prompt as tp
from tests.fixtures.text_prompt_fixtures import gdino_folder, tiny_text_engine

H, W = 96, 128
ALL = dict(box_threshold=0.0, text_threshold=0.0)


@pytest.fixture(scope="module")
def engine(tiny_sam, tmp_path_factory):
    models, vocab = gdino_folder(tmp_path_factory.mktemp("gdino"))
    return tiny_text_engine(tiny_sam[0].parent, models, vocab)


@pytest.fixture(scope="module")
def sam_name(tiny_sam):
    return tiny_sam[0].name


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(5)
    picture = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    picture[20:70, 30:90] = (200, 40, 40)
    return picture


@pytest.fixture(scope="module")
def preview(engine, image):
    return tp.preview_boxes(engine, None, image, "hand, face", **ALL)


def test_preview_draws_numbered_labelled_boxes(preview, image):
    boxes = preview.selection.boxes
    assert len(boxes) >= 3
    assert preview.selection.labels()[0].startswith("1: ") and all(b.phrase in ("hand", "face") for b in boxes)
    drawn = np.asarray(preview.image)
    assert drawn.shape == image.shape and (drawn != image).any()  # boxes and labels are drawn on a copy
    assert "Untick" in preview.message


def test_segmentation_uses_exactly_the_ticked_boxes_without_detecting_again(engine, sam_name, image, preview, monkeypatch):
    labels = preview.selection.labels()
    ticked = [labels[2], labels[0]]
    seen = []
    original = engine.segment
    monkeypatch.setattr(engine, "segment", lambda *a, **k: seen.append(a[2]) or original(*a, **k))
    monkeypatch.setattr(engine, "detect", lambda *a, **k: pytest.fail("segmentation must not detect again"))
    result = tp.segment_kept(engine, sam_name, image, preview.selection, ticked, "", tp.MERGED)
    assert list(seen[0].boxes) == [preview.selection.boxes[0].box, preview.selection.boxes[2].box]
    assert result.object_masks.shape == (2, H, W)
    assert result.candidates.masks.shape[1:] == (H, W) and result.objects == []
    # merged: each candidate is the union of the objects' masks of that candidate
    assert "merged" in result.message


def test_per_object_gives_one_cutout_per_kept_box(engine, sam_name, image, preview):
    labels = preview.selection.labels()
    result = tp.segment_kept(engine, sam_name, image, preview.selection, labels[:3], None, tp.PER_OBJECT)
    assert len(result.objects) == 3
    assert [name for _, name in result.objects] == [f"{i + 1}: {preview.selection.boxes[i].phrase}" for i in range(3)]
    for (cut, _), mask in zip(result.objects, result.object_masks):
        alpha = np.asarray(cut)[:, :, 3]
        assert cut.mode == "RGBA" and np.array_equal(alpha > 0, mask)


def test_points_refine_the_box_that_contains_them(engine, sam_name, image, preview, monkeypatch):
    box = preview.selection.boxes[0].box
    inside = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    prompts = json.dumps({"points": [[inside[0], inside[1], 1]], "boxes": [], "width": W, "height": H})
    seen = []
    original = engine.segment
    monkeypatch.setattr(engine, "segment", lambda *a, **k: seen.append(a[2]) or original(*a, **k))
    labels = preview.selection.labels()
    result = tp.segment_kept(engine, sam_name, image, preview.selection, labels[:2], prompts, tp.PER_OBJECT)
    assert list(seen[0].points) == [inside] and len(seen[0].boxes) == 2
    assert len(result.objects) == 2  # the point refines box 1; it makes no object of its own


@pytest.mark.parametrize("caption", ["", "   ", ".", " . , "])
def test_empty_prompt_is_a_clear_message(engine, image, caption):
    with pytest.raises(InvalidPromptError, match="empty"):
        tp.preview_boxes(engine, None, image, caption, **ALL)


def test_no_boxes_says_so_and_suggests_lowering_the_threshold(engine, sam_name, image):
    result = tp.preview_boxes(engine, None, image, "hand", box_threshold=1.0, text_threshold=0.0)
    assert result.selection.boxes == () and "Lower the box threshold" in result.message
    with pytest.raises(InvalidPromptError, match="lower the box threshold"):
        tp.segment_kept(engine, sam_name, image, result.selection, [], None)


def test_segment_needs_a_preview_a_tick_and_the_same_picture(engine, sam_name, image, preview):
    with pytest.raises(InvalidPromptError, match="Preview boxes"):
        tp.segment_kept(engine, sam_name, image, None, [], None)
    with pytest.raises(InvalidPromptError, match="tick"):
        tp.segment_kept(engine, sam_name, image, preview.selection, [], None)
    other = image.copy()
    other[0, 0] ^= 255
    with pytest.raises(InvalidPromptError, match="changed"):
        tp.segment_kept(engine, sam_name, other, preview.selection, preview.selection.labels()[:1], None)


def test_no_groundingdino_model_says_where_to_put_it(tiny_sam, tmp_path, image):
    from sd_webui_sam.engine import Engine
    from sd_webui_sam.settings import EngineSettings

    folder = tmp_path / "grounding-dino"
    engine = Engine(EngineSettings(user_model_dir=tiny_sam[0].parent, device="cpu", gdino_user_model_dir=folder))
    with pytest.raises(ModelNotFoundError) as caught:
        tp.preview_boxes(engine, None, image, "hand", **ALL)
    assert "groundingdino_swint_ogc.pth" in str(caught.value) and str(folder) in str(caught.value)


@pytest.mark.parametrize("sd_controls", [False, True])
def test_section_builds_inside_the_panel(engine, sd_controls):
    import gradio as gr

    from sd_webui_sam.ui.panel import PanelOptions, build_panel

    with gr.Blocks():
        panel = build_panel(PanelOptions(prefix="t", engine=lambda: engine, sd_controls=sd_controls))
    parts = panel.extra["text_prompt"]
    assert parts["detector"].choices and "keep" in parts
    assert ("cutout_enabled" in parts) == sd_controls
    assert len(panel.script_args) == (17 if sd_controls else 6)  # with the AutoSAM map (3) and soft edges (2)


def test_many_boxes_are_bounded_by_max_objects_most_confident_first(engine, sam_name, image, monkeypatch):
    """A threshold that lets every query through must not segment hundreds of objects."""
    everything = tp.preview_boxes(engine, None, image, "hand, face", **ALL)
    found = len(everything.selection.boxes)
    assert found >= 3
    monkeypatch.setattr(engine.settings, "max_objects", 2)
    bounded = tp.preview_boxes(engine, None, image, "hand, face", **ALL)
    kept = bounded.selection.boxes
    assert len(kept) == 2
    assert [box.score for box in kept] == sorted((box.score for box in everything.selection.boxes), reverse=True)[:2]
    assert f"{found - 2} more were left out" in bounded.message and "max objects" in bounded.message
    result = tp.segment_kept(engine, sam_name, image, bounded.selection, bounded.selection.labels(), "", tp.MERGED)
    assert result.object_masks.shape[0] == 2


def test_section_works_without_an_enable_tick_and_selects_all_or_none(engine, sam_name, image):
    """Opening the section is enough: Preview boxes and Segment kept boxes need no tick; the kept
    boxes can be ticked all or none at once; a segmentation sends the panel its compact masks."""
    import gradio as gr

    from sd_webui_sam.ui.panel import PanelOptions, build_panel

    with gr.Blocks() as demo:
        panel = build_panel(PanelOptions(prefix="t", engine=lambda: engine, accordion=False))
    parts = panel.extra["text_prompt"]
    assert "enabled" not in parts and "keep_all" in parts and "keep_none" in parts
    functions = demo.fns.values() if isinstance(demo.fns, dict) else demo.fns
    named = {getattr(f.fn, "__name__", ""): f.fn for f in functions if f.fn is not None}
    box_image, keep, selection, status = named["preview"](None, image, "hand, face", 0.0, 0.0)
    labels = selection.labels()
    assert labels and "sam-status-error" not in status
    assert named["keep_all"](selection)["value"] == labels and named["keep_none"]()["value"] == []
    shown = []  # gradio passes the handler its progress bar first
    masks_data, _, found, overlay, mask, cutout, _, status = named["segment"](
        lambda fraction, desc="": shown.append(desc), sam_name, image, "", selection, labels[:1], tp.MERGED, 0, 0, False,
        0, False)
    assert shown == ["1/1 boxes segmented"]
    assert "sam-status-error" not in status and mask.size == (W, H)
    assert len(json.loads(masks_data)["masks"]) == len(found.scores)


def test_many_kept_boxes_are_segmented_in_parts_with_progress_and_a_stop(engine, sam_name, image, preview, monkeypatch):
    from sd_webui_sam.errors import JobStopped

    ticked = preview.selection.labels()[:3]
    whole = tp.segment_kept(engine, sam_name, image, preview.selection, ticked, "", tp.MERGED)
    monkeypatch.setattr(tp, "BOXES_PER_CALL", 1)
    steps = []
    parted = tp.segment_kept(engine, sam_name, image, preview.selection, ticked, "", tp.MERGED,
                             progress=lambda done, total: steps.append((done, total)))
    assert steps == [(1, 3), (2, 3), (3, 3)]
    # the same masks as one call: the parts only change when the work is reported
    assert np.array_equal(parted.object_masks, whole.object_masks)
    assert np.array_equal(parted.candidates.masks, whole.candidates.masks)
    assert np.allclose(parted.candidates.scores, whole.candidates.scores, atol=1e-5)

    stopped = []
    with pytest.raises(JobStopped, match="after 1 of 3 boxes"):
        tp.segment_kept(engine, sam_name, image, preview.selection, ticked, "", tp.MERGED,
                        progress=lambda done, total: stopped.append(done), interrupt=lambda: bool(stopped))
    assert stopped == [1]
