"""The Auto SAM tab's handlers with the real Engine and the tiny checkpoint, and the tab's build."""
from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

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
    from tools.fixtures.autosam_fixtures import textured_image

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
    message, archive = tab.run_layout(engine, "tiny_sam.pth", tab.LAYOUT_MODES[0], picture, "",
                                      str(tmp_path / "single"), True, CONFIG)
    written = [line.strip() for line in message.splitlines()[1:]]
    assert written and all(tmp_path.joinpath(p).exists() for p in written)
    assert any(p.endswith(".psd") for p in written) and any(p.endswith(".png") for p in written)
    assert archive is None  # no download folder given: nothing to offer
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b"):
        picture.save(folder / f"{name}.png")
    downloads = tab.LayoutDownloads()
    report, archive = tab.run_layout(engine, "tiny_sam.pth", tab.LAYOUT_MODES[1], None, str(folder),
                                     str(tmp_path / "batch"), False, CONFIG, downloads=downloads)
    assert report.startswith("2 layout(s)") and archive is None  # a folder stays in its output folder
    assert sorted(p.name for p in (tmp_path / "batch").iterdir()) == ["a", "b"]
    with pytest.raises(SamUserError, match="output folder"):
        tab.run_layout(engine, "tiny_sam.pth", tab.LAYOUT_MODES[0], picture, "", " ", True, CONFIG)
    with pytest.raises(SamUserError, match="output folder"):
        tab.run_layout(engine, "tiny_sam.pth", tab.LAYOUT_MODES[1], None, str(folder), "", True, CONFIG,
                       downloads=downloads)


def test_layout_of_one_picture_is_offered_as_a_zip_of_its_layers_and_psd(engine, picture, tmp_path):
    import zipfile

    picture_file = tmp_path / "holiday.png"
    picture.save(picture_file)
    downloads = tab.LayoutDownloads(keep=1)
    with Image.open(picture_file) as uploaded:  # an upload keeps its file name
        message, archive = tab.run_layout(engine, "tiny_sam.pth", tab.LAYOUT_MODES[0], uploaded, "",
                                          str(tmp_path / "out"), True, CONFIG, downloads=downloads)
    on_server = sorted(p.name for p in (tmp_path / "out" / "holiday").iterdir())
    assert archive.endswith("holiday_layers.zip") and "holiday_layers.zip" not in on_server
    with zipfile.ZipFile(archive) as members:
        names = members.namelist()
        assert sorted(names) == on_server and "holiday.psd" in names and len(names) >= 3
        layer = next(name for name in names if name.endswith(".png"))
        with members.open(layer) as opened:
            assert Image.open(opened).size == (W, H)
    assert f"layers in {tmp_path / 'out' / 'holiday'}" in message

    # no output folder: the zip alone, without the PSD when it is not asked for; older zips are removed
    message, second = tab.run_layout(engine, "tiny_sam.pth", tab.LAYOUT_MODES[0], picture, "", "", False, CONFIG,
                                     downloads=downloads)
    with zipfile.ZipFile(second) as members:
        names = members.namelist()
    assert names and all(name.endswith(".png") for name in names)
    assert second.endswith("layout_layers.zip") and "download layout_layers.zip" in message
    assert not Path(archive).exists()


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


# 8x8 points: 8 point batches of 8 on the CPU
EIGHT_BY_EIGHT = [8] + CONFIG[1:]


def test_segment_everything_reports_progress_with_an_eta_and_stops_between_point_batches(engine, picture):
    from sd_webui_sam.autosam.progress import GenerationInterrupted, JobControl

    steps = []
    finished = JobControl(progress=steps.append)
    tab.run_random(engine, "tiny_sam.pth", picture, 0, EIGHT_BY_EIGHT, control=finished)
    assert (steps[0].crops_done, steps[0].batches_done) == (1, 0)  # the encode, then each point batch
    assert [s.batches_done for s in steps[1:]] == list(range(1, 9)) and steps[-1].batches == 8
    assert steps[0].eta_s is None and all(s.eta_s is not None for s in steps[1:])
    fractions = [s.fraction for s in steps]
    assert fractions[-1] == pytest.approx(1.0) and 0 < fractions[1] < 1
    assert "point batch 8/8" in steps[-1].describe()

    seen = []
    stopping = JobControl(progress=seen.append, interrupt=lambda: len(seen) >= 3)
    with pytest.raises(GenerationInterrupted, match="Stopped"):
        tab.run_random(engine, "tiny_sam.pth", picture, 0, EIGHT_BY_EIGHT, control=stopping)
    assert len(seen) == 3 and seen[-1].batches_done == 2  # no batch ran after the Stop


def test_layout_folder_stops_after_the_images_already_done(engine, picture, tmp_path):
    from sd_webui_sam.autosam.progress import JobControl

    source = tmp_path / "in"
    source.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        picture.save(source / name)
    encodes = []
    control = JobControl(progress=lambda step: encodes.append(step) if step.batches_done == 0 else None,
                         interrupt=lambda: len(encodes) >= 2)
    status, _ = tab.run_layout(engine, "tiny_sam.pth", tab.LAYOUT_MODES[1], None, str(source), str(tmp_path / "out"),
                               False, CONFIG, control=control)
    assert status.startswith("1 layout(s) written before Stop")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a"]


def test_the_expected_time_is_shown_before_a_run_and_said_to_be_an_estimate(engine, picture):
    from sd_webui_sam.autosam.progress import SpeedRecord

    speeds = SpeedRecord()
    assert "Upload a picture" in tab.expected_time(engine, "tiny_sam.pth", None, CONFIG, speeds)
    before = tab.expected_time(engine, "tiny_sam.pth", picture, EIGHT_BY_EIGHT, speeds)
    assert before.startswith("64 points in 8 decoder calls, 1 crop") and "not measured yet" in before
    measured = tab.estimate_time(engine, "tiny_sam.pth", picture, EIGHT_BY_EIGHT, speeds)
    assert "Expected time: about" in measured and "an estimate" in measured
    speed = speeds.speeds["tiny_sam.pth"]
    assert speed.encode_s > 0 and speed.decode_s_per_point > 0
    # more points are expected to take longer, by the same measured speed
    plan_small = tab.planned_work(engine, (H, W), tab.config_from_values(EIGHT_BY_EIGHT))
    plan_big = tab.planned_work(engine, (H, W), tab.config_from_values([16] + CONFIG[1:]))
    assert (plan_big.points, plan_big.batches) == (256, 32)
    assert speeds.estimate("tiny_sam.pth", plan_big) > speeds.estimate("tiny_sam.pth", plan_small)


def test_fewer_points_per_side_on_the_cpu_and_every_progress_parameter_is_tracked(engine):
    import gradio as gr

    from sd_webui_sam.autosam.progress import CPU_POINTS_PER_SIDE, default_points_per_side
    from sd_webui_sam.ui.panel import PanelOptions, build_panel

    assert default_points_per_side(engine.placement.device) == CPU_POINTS_PER_SIDE < 32
    with gr.Blocks() as blocks:
        panel = build_panel(PanelOptions(prefix="p", engine=lambda: engine, sd_controls=False))
    parts = panel.extra["autosam"]
    assert parts["config"][0].value == CPU_POINTS_PER_SIDE
    assert all(parts[job]["stop"] is not None for job in ("random", "semantic", "layout", "category"))
    functions = blocks.fns.values() if isinstance(blocks.fns, dict) else blocks.fns
    with_progress = {f.fn.__wrapped__.__name__: f.tracks_progress for f in functions
                     if "progress" in getattr(getattr(f.fn, "__wrapped__", None), "__code__", types.SimpleNamespace(co_varnames=())).co_varnames}
    # gradio looks for a Progress among the positional parameters only: a keyword-only one shows no bar
    assert {"random_handler", "semantic_handler", "layout_handler", "category_handler", "start_batch",
            "segment"} <= set(with_progress)
    assert all(with_progress.values()), with_progress


def _handler_inputs(blocks, name: str):
    """The ids of the inputs gradio sends to the handler called ``name``, on gradio 3 and 4."""
    if isinstance(blocks.fns, dict):  # gradio 4: each function knows its inputs
        pairs = [(f, [c._id for c in f.inputs]) for f in blocks.fns.values()]
    else:
        pairs = [(f, dep["inputs"]) for f, dep in zip(blocks.fns, blocks.dependencies)]
    return next(ids for f, ids in pairs if getattr(getattr(f.fn, "__wrapped__", f.fn), "__name__", "") == name)


def test_settings_have_human_labels_and_help_and_keep_their_element_ids(engine):
    import gradio as gr

    from sd_webui_sam.ui.panel import PanelOptions, build_panel

    for spec in tab.CONFIG_FIELDS:
        assert spec.label != spec.name and "_" not in spec.label and spec.label[0].isupper()
        assert len(spec.help) > 20 and "\n" not in spec.help
    assert len({spec.label for spec in tab.CONFIG_FIELDS}) == len(tab.CONFIG_FIELDS)
    with gr.Blocks():
        panel = build_panel(PanelOptions(prefix="h", engine=lambda: engine, sd_controls=False))
    for spec, control in zip(tab.CONFIG_FIELDS, panel.extra["autosam"]["config"]):
        assert (control.label, control.info, control.elem_id) == (spec.label, spec.help, f"h_autosam_{spec.name}")
        assert control.min_width >= tab.CONFIG_MIN_WIDTH  # the row wraps instead of clipping the box
    with pytest.raises(SamUserError, match="'Points per side' must be a number"):
        tab.config_from_values(["many"] + CONFIG[1:])


def test_an_empty_sub_tab_picture_uses_the_panels_picture_and_an_uploaded_one_wins(engine, picture, tmp_path):
    import gradio as gr

    from sd_webui_sam.autosam.progress import SpeedRecord
    from sd_webui_sam.ui import handlers
    from sd_webui_sam.ui.panel import PanelOptions, build_panel

    panel_picture = handlers.session_image(picture)
    used, message = tab.run_random(engine, "tiny_sam.pth", None, 3, CONFIG, panel_image=panel_picture)
    assert message.startswith(tab.PANEL_PICTURE_NOTE) and "using the panel's picture" in message.lower()
    assert used[0].size == (W, H)
    other = Image.fromarray(np.asarray(picture)[: H // 2])  # a picture uploaded in the sub-tab wins
    wins, message = tab.run_random(engine, "tiny_sam.pth", other, 3, CONFIG, panel_image=panel_picture)
    assert wins[0].size == (W, H // 2) and tab.PANEL_PICTURE_NOTE not in message
    with pytest.raises(SamUserError, match="or into the panel above"):
        tab.run_random(engine, "tiny_sam.pth", None, 3, CONFIG)

    _, mask, message = tab.run_category(engine, "tiny_sam.pth", None, tab.UPLOADED, "ade20k", ade_map(), 512, ["7"],
                                        [1, 64, 1.0] + CONFIG[3:], panel_image=panel_picture)
    assert mask.size == (W, H) and message.startswith(tab.PANEL_PICTURE_NOTE)
    kept, placed, message = tab.to_panel(None, mask, panel_picture)
    assert kept is None and placed.size == (W, H) and "panel's picture" in message  # the panel keeps its picture
    with pytest.raises(SamUserError, match="changed since"):
        tab.to_panel(None, mask, handlers.session_image(other))
    downloads = tab.LayoutDownloads()  # the tab keeps it: its folder lives as long as it does
    message, archive = tab.run_layout(engine, "tiny_sam.pth", tab.LAYOUT_MODES[0], None, "", "", False, CONFIG,
                                      panel_image=panel_picture, downloads=downloads)
    assert message.startswith(tab.PANEL_PICTURE_NOTE) and Path(archive).exists()
    assert "Upload a picture" not in tab.expected_time(engine, "tiny_sam.pth", None, CONFIG, SpeedRecord(),
                                                       panel_picture)

    with gr.Blocks() as blocks:
        panel = build_panel(PanelOptions(prefix="q", engine=lambda: engine, sd_controls=False))
    state = panel.extra["image_state"]._id
    for handler in ("random_handler", "semantic_handler", "layout_handler", "category_handler", "send_handler"):
        assert state in _handler_inputs(blocks, handler), handler
    assert isinstance(panel.extra["autosam"]["layout"]["download"], gr.File)
