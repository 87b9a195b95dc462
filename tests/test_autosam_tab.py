"""The Auto SAM tab's handlers with the real Engine and the tiny checkpoint, and the tab's build."""
from __future__ import annotations

import shutil
import sys
import types

import numpy as np
import pytest
from PIL import Image

from sd_webui_sam.compat.controlnet_preprocessors import find_preprocessor
from sd_webui_sam.errors import SamUserError
from sd_webui_sam.ui import autosam_tab as tab

H, W = 48, 64
# points_per_side 3, all quality filters off: random weights then give masks
CONFIG = [3, 64, 0.0, 0.0, 1.0, 0.9, 0, 0.7, 512 / 1500, 1, 0]


@pytest.fixture(scope="module")
def engine(tiny_sam, tmp_path_factory):
    from sd_webui_sam.engine import Engine
    from sd_webui_sam.settings import EngineSettings

    directory = tmp_path_factory.mktemp("autosam_tab_models")
    shutil.copy(tiny_sam[0], directory / "tiny_sam.pth")
    return Engine(EngineSettings(user_model_dir=directory, device="cpu"))


@pytest.fixture(scope="module")
def picture():
    from tests.fixtures.autosam_fixtures import textured_image

    return Image.fromarray(textured_image(H, W, seed=2))


def ade_map(right_class: int = 7) -> Image.Image:
    from sd_webui_sam.autosam.semantic import dataset

    palette = dataset("ade20k").palette
    colours = np.empty((H, W, 3), dtype=np.uint8)
    colours[:] = palette[0]
    colours[:, W // 2:] = palette[right_class]
    return Image.fromarray(colours)


def test_config_defaults_are_the_reference_ones():
    defaults = tab.config_from_values([spec.default for spec in tab.CONFIG_FIELDS])
    assert (defaults.points_per_side, defaults.points_per_batch, defaults.pred_iou_thresh,
            defaults.stability_score_thresh, defaults.box_nms_thresh, defaults.min_mask_region_area) == (32, 64, 0.88, 0.95, 0.7, 0)
    with pytest.raises(SamUserError, match="points_per_side"):
        tab.config_from_values([0] + CONFIG[1:])


def test_segment_everything_gives_blend_colour_map_and_editanything_map(engine, picture):
    gallery, message = tab.run_random(engine, "tiny_sam.pth", picture, 3, CONFIG)
    blend, colours, control = (np.asarray(g) for g in gallery)
    assert blend.shape == colours.shape == control.shape == (H, W, 3)
    assert colours.any() and "segments" in message
    ids = control[..., 0].astype(int) + 256 * control[..., 1]
    assert ids.max() >= 1 and (control[..., 2] == 0).all()
    # where a segment is painted, its id is painted too
    assert np.array_equal(colours.any(axis=2), ids > 0)
    again, _ = tab.run_random(engine, "tiny_sam.pth", picture, 3, CONFIG)
    assert np.array_equal(np.asarray(again[1]), colours), "the same seed gives the same colours"


def test_semantic_needs_a_segmenter_or_an_uploaded_map(engine, picture):
    assert tab.segmenter_choices(lambda aliases: None) == [tab.UPLOADED]
    with pytest.raises(SamUserError, match="Upload the colour-coded"):
        tab.run_semantic(engine, "tiny_sam.pth", picture, tab.UPLOADED, "ade20k", None, 512, CONFIG)


def test_semantic_with_an_uploaded_map(engine, picture):
    gallery, after, message = tab.run_semantic(engine, "tiny_sam.pth", picture, tab.UPLOADED, "ade20k", ade_map(),
                                               512, CONFIG)
    assert len(gallery) == 4 and all(g.size == (W, H) for g in gallery)
    assert np.array_equal(np.asarray(gallery[0]), np.asarray(ade_map()))
    assert after.size == (W, H) and "after SAM" in message


def test_semantic_with_a_host_preprocessor(engine, picture, monkeypatch):
    shared = types.ModuleType("modules_forge.shared")
    shared.supported_preprocessors = {"seg_ofade20k": lambda image, resolution=512: np.asarray(ade_map())}
    monkeypatch.setitem(sys.modules, "modules_forge.shared", shared)
    assert tab.segmenter_choices(find_preprocessor) == ["seg_ofade20k", tab.UPLOADED]
    gallery, _, message = tab.run_semantic(engine, "tiny_sam.pth", picture, "seg_ofade20k", "coco", None, 256, CONFIG,
                                           find_preprocessor=find_preprocessor)
    assert "OneFormer" in message and np.array_equal(np.asarray(gallery[0]), np.asarray(ade_map()))


def test_category_mask_by_names_from_the_picker_and_by_id(engine, picture):
    choices = tab.category_choices("ade20k")
    bed = next(c for c in choices if c.endswith(": bed"))
    no_refinement = [1, 64, 1.0] + CONFIG[3:]   # no mask passes: the class map alone decides
    gallery, mask, message = tab.run_category(engine, "tiny_sam.pth", picture, tab.UPLOADED, "ade20k", ade_map(),
                                              512, [bed], no_refinement)
    expected = np.zeros((H, W), dtype=bool)
    expected[:, W // 2:] = True
    assert mask.size == (W, H) and np.array_equal(np.asarray(mask) > 0, expected)
    assert len(gallery) == 3 and "bed" in message
    _, by_id, _ = tab.run_category(engine, "tiny_sam.pth", picture, tab.UPLOADED, "ade20k", ade_map(), 512,
                                   tab.selection_from([], "7"), no_refinement)
    assert np.array_equal(np.asarray(by_id), np.asarray(mask))
    assert tab.selection_from([bed], "12+person") == [bed, "12", "person"]
    with pytest.raises(SamUserError, match="No class selected"):
        tab.run_category(engine, "tiny_sam.pth", picture, tab.UPLOADED, "ade20k", ade_map(), 512, [], CONFIG)
    picture_out, mask_out, _ = tab.to_panel(picture, mask)
    assert picture_out.size == mask_out.size == (W, H) and mask_out.mode == "L"


def test_layout_single_and_folder_write_layers_and_psd(engine, picture, tmp_path):
    message = tab.run_layout(engine, "tiny_sam.pth", tab.LAYOUT_MODES[0], picture, "", str(tmp_path / "single"),
                             True, CONFIG)
    written = [line.strip() for line in message.splitlines()[1:]]
    assert written and all(tmp_path.joinpath(p).exists() for p in written)
    assert any(p.endswith(".psd") for p in written) and any(p.endswith(".png") for p in written)
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b"):
        picture.save(folder / f"{name}.png")
    report = tab.run_layout(engine, "tiny_sam.pth", tab.LAYOUT_MODES[1], None, str(folder), str(tmp_path / "batch"),
                            False, CONFIG)
    assert report.startswith("2 layout(s)")
    assert sorted(p.name for p in (tmp_path / "batch").iterdir()) == ["a", "b"]
    with pytest.raises(SamUserError, match="output folder"):
        tab.run_layout(engine, "tiny_sam.pth", tab.LAYOUT_MODES[0], picture, "", " ", True, CONFIG)


@pytest.mark.parametrize("sd_controls", [False, True])
def test_tabs_build_inside_the_panel(engine, sd_controls):
    import gradio as gr

    from sd_webui_sam.ui.panel import PanelOptions, build_panel

    with gr.Blocks():
        panel = build_panel(PanelOptions(prefix="t", engine=lambda: engine, sd_controls=sd_controls))
    parts = panel.extra["autosam"]
    assert len(parts["config"]) == len(tab.CONFIG_FIELDS)
    assert parts["category"]["classes"].multiselect
    assert "batch" in panel.extra and panel.extra["batch"]["overwrite"].value is False
    assert len(panel.script_args) >= 6  # the generation arguments are unchanged by the new tabs
