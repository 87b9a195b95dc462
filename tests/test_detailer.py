"""'Detail each object' in the stand-in WebUI (A1111 1.10 and Forge hook signatures): after each
generated image, every object the caption names is inpainted alone by the host's img2img, "only
masked", with its own SAM mask; prompts, seeds, infotext, API arguments, X/Y/Z and Interrupt."""
from __future__ import annotations

import json
import types

import numpy as np
import pytest
from PIL import Image

from sd_webui_sam import detail_settings, detailing
from sd_webui_sam.detail_settings import DETAIL_SETTINGS, NAMES, DetailSettings, parse_args
from tests.fixtures.text_prompt_fixtures import gdino_folder, tiny_text_settings
from tests.webui_stub.harness import FakeWebUI

TITLE = "Detail each object (Segment Anything)"
W, H = 64, 48


@pytest.fixture(scope="module")
def gdino(tmp_path_factory):
    return gdino_folder(tmp_path_factory.mktemp("gdino"))


def _configure(tiny_sam, gdino, *, sam=True, dino=True):
    from sd_webui_sam.compat.session import host_session

    models, vocab = gdino
    sam_dir = tiny_sam[0].parent if sam else tiny_sam[0].parent / "no-such-folder"
    host_session().configure(
        lambda: tiny_text_settings(sam_dir, models if dino else models / "no-such-folder", vocab))


@pytest.fixture(params=[None, "forge"], ids=["a1111", "forge"])
def webui(request, tiny_sam, gdino):
    ui = FakeWebUI(controlnet=request.param)
    try:
        ui.load_scripts()
        _configure(tiny_sam, gdino)
        ui.create_ui()
        yield ui
    finally:
        from modules import shared

        shared.state.interrupted = shared.state.skipped = False
        ui.close()


@pytest.fixture
def passes(webui, monkeypatch):
    """Every img2img pass the detailer runs (the processing object, after it ran)."""
    from modules import processing

    from sd_webui_sam.compat import detailer

    seen = []
    original = processing.process_images

    def recording(p):
        result = original(p)
        if getattr(p, detailer.INNER_ATTRIBUTE, False):
            seen.append(p)
        return result

    monkeypatch.setattr(processing, "process_images", recording)
    return seen


def _values(**named):
    settings = dict(enabled=True, caption="face, hand", box_threshold=0.0, text_threshold=0.0, max_objects=3,
                    resolution=64, padding=4, mask_expand=1, keep_original=True)
    settings.update(named)
    return [settings.get(name, setting.default) for name, setting in zip(NAMES, DETAIL_SETTINGS)]


def _script_args(ui, runner, values):
    script = ui.script(runner, TITLE)
    args = [0] + [getattr(c, "value", None) for c in runner.inputs[1:]]
    assert script.args_to - script.args_from == len(DETAIL_SETTINGS)
    args[script.args_from:script.args_to] = values
    return tuple(args)


def _txt2img(ui, values, *, batch_size=1, n_iter=1, prompt="a cat", negative="ugly"):
    from modules import processing

    p = processing.StableDiffusionProcessingTxt2Img(prompt=prompt, negative_prompt=negative, seed=7,
                                                    batch_size=batch_size, n_iter=n_iter, width=W, height=H,
                                                    steps=20, cfg_scale=7.0, sampler_name="Euler a")
    p.scripts = ui.txt2img
    p.script_args = _script_args(ui, ui.txt2img, values)
    return p, processing.process_images(p)


def _expected_objects(image, **named):
    from sd_webui_sam.compat.session import host_session

    settings = parse_args(_values(**named))
    found = detailing.find_objects(host_session().engine(), np.asarray(image.convert("RGB")), settings)
    return settings, found.objects


def test_each_object_gets_one_pass_with_its_own_mask_and_a_crop_that_holds_it(webui, passes):
    p, processed = _txt2img(webui, _values())
    detailed, before = processed.images
    settings, objects = _expected_objects(before)
    assert len(objects) == 3 and len(passes) == 3
    assert f"SAM detail objects: 3" in processed.infotexts[0]
    union = np.zeros((H, W), dtype=bool)
    for found, inner in zip(objects, passes):
        expected = np.asarray(detailing.inpaint_mask(found.mask, settings)) > 0
        seen = np.asarray(inner.seen_by_init["image_mask"]) > 0
        assert np.array_equal(seen, expected), "a pass's mask is not exactly its own object's"
        x, y, w, h = inner.paste_to
        rows, cols = np.nonzero(seen)
        assert x <= cols.min() and cols.max() < x + w and y <= rows.min() and rows.max() < y + h
        assert inner.inpaint_full_res and inner.inpainting_fill == 1 and inner.mask_blur == 0
        assert (inner.width, inner.height) == detailing.processing_size(
            detailing.crop_box(detailing.inpaint_mask(found.mask, settings), settings.padding), 64)
        union |= seen
    # each pass starts from the previous one's result, and only the masks' pixels changed
    assert passes[0].init_images[0] is before
    detailed_pixels, before_pixels = np.asarray(detailed), np.asarray(before)
    assert np.array_equal(detailed_pixels[~union], before_pixels[~union])
    assert (detailed_pixels[union] != before_pixels[union]).any(axis=-1).all()


def test_prompts_follow_sep_and_prompt_and_seeds_count_up(webui, passes):
    _txt2img(webui, _values(prompt="a smiling face [SEP] [PROMPT], detailed", negative_prompt="",
                            seed_rule="seed + index", steps=5, cfg_scale=4.5, sampler="DDIM",
                            denoising_strength=0.55))
    assert [inner.prompt for inner in passes] == ["a smiling face", "a cat, detailed", "a cat, detailed"]
    assert [inner.negative_prompt for inner in passes] == ["ugly"] * 3
    assert [inner.seed for inner in passes] == [7, 8, 9]
    assert {(inner.steps, inner.cfg_scale, inner.sampler_name, inner.denoising_strength) for inner in passes} == \
        {(5, 4.5, "DDIM", 0.55)}


def test_the_generations_settings_are_the_default(webui, passes):
    _txt2img(webui, _values(max_objects=2), batch_size=2)
    assert len(passes) == 4  # 2 images x 2 objects
    assert [inner.seed for inner in passes] == [7, 7, 8, 8]  # each image's own seed
    assert {(inner.prompt, inner.negative_prompt, inner.steps, inner.cfg_scale, inner.sampler_name)
            for inner in passes} == {("a cat", "ugly", 20, 7.0, "Euler a")}
    assert all(getattr(inner, "scripts", None) is None for inner in passes)  # nothing else runs inside


def test_infotext_round_trips_through_the_paste_fields(webui):
    from modules import infotext_utils

    values = _values(caption="face, left hand", prompt="sharp: eyes, [PROMPT]", mask_feather=2.5, order="largest first",
                     denoising_strength=0.3, keep_original=False)
    p, processed = _txt2img(webui, values)
    params = infotext_utils.parse_generation_parameters(processed.infotexts[0])
    assert params["Prompt"] == "a cat" and params["Seed"] == "7"
    script = webui.script(webui.txt2img, TITLE)
    restored = {}
    for component, read in script.infotext_fields:
        restored[script.controls.index(component)] = read(params)
    expected = parse_args(values)
    for index, setting in enumerate(DETAIL_SETTINGS):
        if index in restored:
            assert restored[index] == getattr(expected, setting.name), setting.name
    assert restored[0] is True
    # an infotext without detailing turns the section off
    other = infotext_utils.parse_generation_parameters("a dog\nSteps: 20, Seed: 1, Size: 64x48")
    assert [read(other) for _, read in script.infotext_fields][0] is False


@pytest.mark.parametrize("style", ["positional", "named"])
def test_api_arguments_positional_or_named(webui, passes, style):
    name = TITLE.lower()
    if style == "positional":
        args = [True, "face", "", "", "0", 0.0, 2]  # strings and a short list, as JSON callers send
    else:
        args = [{"caption": "face", "box_threshold": 0, "text_threshold": 0, "max_objects": 2,
                 "prompt": "[PROMPT] portrait", "resolution": 64}]
    p = webui.api_txt2img({"prompt": "a cat", "alwayson_scripts": {name: {"args": args}}})
    assert p.is_api and len(passes) == 2
    assert p.extra_generation_params["SAM detail caption"] == "face"
    if style == "named":
        assert {inner.prompt for inner in passes} == {"a cat portrait"}


def test_api_named_argument_errors_are_reported_not_raised(webui, passes, capsys):
    webui.api_txt2img({"prompt": "a cat", "alwayson_scripts": {TITLE.lower(): {"args": [{"captoin": "face"}]}}})
    assert not passes
    assert "unknown setting(s) 'captoin'" in capsys.readouterr().out


def test_img2img_is_detailed_too(webui, passes):
    from PIL import Image

    source = Image.fromarray(np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8))
    webui.generate_img2img({TITLE: _values(max_objects=2)}, init_images=[source])
    assert len(passes) == 2


def test_interrupt_during_a_pass_keeps_the_image_as_it_was(webui, passes, monkeypatch, capsys):
    from modules import processing, shared

    recording = processing.process_images

    def interrupted(p):
        result = recording(p)
        if passes:
            shared.state.interrupt()
        return result

    monkeypatch.setattr(processing, "process_images", interrupted)
    p, processed = _txt2img(webui, _values())
    assert len(passes) == 1
    assert len(processed.images) == 1  # nothing detailed: no "before" copy either
    assert "stopped during object 1 of 3" in capsys.readouterr().out


def test_job_count_grows_by_the_passes(webui, passes):
    from modules import shared

    shared.state.job_count = 1
    _txt2img(webui, _values())
    assert shared.state.job_count == 1 + len(passes) == 4


def test_messages_for_nothing_found_and_too_small(webui, passes, capsys):
    _, processed = _txt2img(webui, _values(box_threshold=1.0, skip_if_nothing=False))
    out = capsys.readouterr().out
    assert "found no boxes for 'face, hand'" in out and not passes and len(processed.images) == 1
    assert "SAM detail note: \"GroundingDINO found no boxes" in processed.infotexts[0]
    _txt2img(webui, _values(min_area=1.0))
    assert "too small to inpaint" in capsys.readouterr().out and not passes


@pytest.mark.parametrize("missing", ["sam", "dino"])
def test_missing_models_are_explained_and_the_image_is_kept(webui, passes, tiny_sam, gdino, capsys, missing):
    from sd_webui_sam.compat.session import host_session

    host_session.cache_clear()
    _configure(tiny_sam, gdino, sam=missing != "sam", dino=missing != "dino")
    _, processed = _txt2img(webui, _values())
    out = capsys.readouterr().out
    assert len(processed.images) == 1 and not passes
    assert ("no SAM model" if missing == "sam" else "No GroundingDINO model") in out


def test_xyz_axes_set_the_detail_settings_of_each_cell(webui, passes):
    from sd_webui_sam.compat import detailer

    class AxisOption:
        def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None, prepare=None):
            self.label, self.type, self.apply, self.choices = label, type, apply, choices

    xyz = types.SimpleNamespace(AxisOption=AxisOption, axis_options=[AxisOption("Nothing", str, None)])
    assert detailer.add_xyz_axes(xyz) == len(detail_settings.axis_settings())
    assert detailer.add_xyz_axes(xyz) == 0  # once
    axis = {option.label: option for option in xyz.axis_options}
    from modules import processing

    p = processing.StableDiffusionProcessingTxt2Img(prompt="a cat", seed=7, width=W, height=H)
    axis["[SAM detail] Denoising strength"].apply(p, axis["[SAM detail] Denoising strength"].type("0.8"), [])
    axis["[SAM detail] Max objects"].apply(p, 1, [])
    p.scripts = webui.txt2img
    p.script_args = _script_args(webui, webui.txt2img, _values())
    processing.process_images(p)
    assert len(passes) == 1 and passes[0].denoising_strength == 0.8
    assert p.extra_generation_params["SAM detail denoising strength"] == 0.8


def test_the_script_and_its_section_come_from_the_schema(webui):
    script = webui.script(webui.img2img, TITLE)
    assert [c.label for c in script.controls] == [s.label for s in DETAIL_SETTINGS]
    assert [c.value for c in script.controls] == [s.default for s in DETAIL_SETTINGS]
    assert webui.api_default_args(webui.img2img)[script.args_from:script.args_to] == [s.default for s in DETAIL_SETTINGS]


def test_prompt_rules():
    assert detailing.object_prompts("", "main", 2) == ["main", "main"]
    assert detailing.object_prompts("a [SEP] [SEP] [PROMPT] b", "main", 4) == ["a", "main", "main b", "main b"]
    assert detailing.object_seed(10, 2, "seed + index") == 12 and detailing.object_seed(10, 2, "same seed") == 10


def test_parsing_clamps_and_defaults():
    parsed = parse_args(["true", "dog", None, None, "2", "x", "500", "-1"])
    assert parsed.enabled and parsed.caption == "dog" and parsed.box_threshold == 1.0
    assert parsed.text_threshold == 0.25 and parsed.max_objects == 100 and parsed.min_area == 0.0
    assert parse_args([False, "dog", {"enabled": False}]).enabled is False
    assert DetailSettings().replaced({"order": "LARGEST FIRST", "steps": "12"}).order == "largest first"


# ----- objects from the panel ---------------------------------------------------------------------

PANEL = "the panel's masks"


def _panel_masks(width=W, height=H):
    """Two objects as the panel hands them over: a block on the left, a disc on the right."""
    rows, cols = np.mgrid[0:height, 0:width]
    left = (cols >= width // 8) & (cols < width // 3) & (rows >= height // 4) & (rows < height // 2)
    right = (cols - 3 * width // 4) ** 2 + (rows - height // 2) ** 2 < (height // 5) ** 2
    return [left, right]


def _png_list(object_masks):
    from sd_webui_sam import images

    return [images.bool_mask_png_base64(mask) for mask in object_masks]


def test_two_panel_objects_make_two_passes_each_with_only_its_mask(webui, passes):
    object_masks = _panel_masks(512, 512)  # the stand-in's API generates 512x512
    p = webui.api_txt2img({"prompt": "a cat", "alwayson_scripts": {TITLE.lower(): {"args": [
        {"source": PANEL, "panel_masks": _png_list(object_masks), "mask_expand": 0, "resolution": 64}]}}})
    assert len(passes) == 2
    settings = parse_args([{"mask_expand": 0}])
    for mask, inner in zip(object_masks, passes):  # left to right: the block, then the disc
        seen = np.asarray(inner.seen_by_init["image_mask"]) > 0
        assert np.array_equal(seen, np.asarray(detailing.inpaint_mask(mask, settings)) > 0)
    assert p.extra_generation_params["SAM detail source"] == PANEL
    assert "SAM detail panel masks scaled from" not in p.extra_generation_params


def test_panel_masks_of_another_size_are_scaled_and_the_infotext_says_so(webui, passes, capsys):
    half = _panel_masks(W // 2, H // 2)
    values = _values(source=PANEL, panel_masks=json.dumps(_png_list(half)), mask_expand=0)
    _, processed = _txt2img(webui, values)
    assert len(passes) == 2
    assert "SAM detail panel masks scaled from: 32x24" in processed.infotexts[0]
    assert "were scaled to the generated image (64x48)" in capsys.readouterr().out
    for mask, inner in zip(half, passes):
        seen = np.asarray(inner.seen_by_init["image_mask"]) > 0
        scaled = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((W, H), Image.BILINEAR)) >= 128
        assert np.array_equal(seen, scaled)


def test_panel_masks_of_another_shape_or_none_are_refused_with_a_message(webui, passes, capsys):
    _, processed = _txt2img(webui, _values(source=PANEL, panel_masks=_png_list(_panel_masks(48, 48))))
    out = capsys.readouterr().out
    assert not passes and len(processed.images) == 1
    assert "the panel's masks are 48x48 but the generated image is 64x48, another shape" in out
    _, processed = _txt2img(webui, _values(source=PANEL, panel_masks=""))
    assert not passes and len(processed.images) == 1
    assert "the Segment Anything panel has no mask in this tab" in capsys.readouterr().out


def test_the_panels_prediction_reaches_the_section_one_mask_per_object(webui):
    from sd_webui_sam import masks
    from sd_webui_sam.compat.session import host_session
    from sd_webui_sam.predictor import Prompts
    from sd_webui_sam.ui import handlers
    from sd_webui_sam.ui.detail_section import panel_object_masks

    engine = host_session().engine()
    model = engine.list_models()[0]
    picture = np.random.default_rng(3).integers(0, 256, (H, W, 3), dtype=np.uint8)
    boxes = [(2, 4, 30, 40), (34, 6, 62, 44)]
    prompts_json = json.dumps({"width": W, "height": H, "points": [], "boxes": [list(b) for b in boxes]})
    found = handlers.segment(engine, model, Image.fromarray(picture), prompts_json)  # what the panel's Preview does
    direct = engine.segment(model, picture, Prompts(boxes=[tuple(map(float, b)) for b in boxes]))
    read = detailing.read_panel_masks(panel_object_masks(found, 1, handlers.MaskTools(expand=2)))
    assert len(read) == 2  # one mask per box, not their union
    for index, mask in enumerate(read):
        assert np.array_equal(mask, masks.expand(direct.masks[index, 1], 2))
    assert panel_object_masks(None, 0, handlers.MaskTools()) == ""
    # in the page, the panel's box feeds the section's hidden argument in the same tab
    for runner, tab in ((webui.txt2img, "txt2img"), (webui.img2img, "img2img")):
        section_box = webui.script(runner, TITLE).panel_masks_box
        panel_box = _element(webui, f"{tab}_sam_object_masks")
        config = webui.demo.get_config_file()
        assert any(dep["inputs"] == [panel_box._id] and dep["outputs"] == [section_box._id]
                   for dep in config["dependencies"]), tab


def _element(webui, elem_id):
    return next(block for block in webui.demo.blocks.values() if getattr(block, "elem_id", None) == elem_id)


def _event_handlers(webui, inputs, outputs):
    """(the functions of the page's events with these inputs and outputs, the ids of their triggers)."""
    found, triggers = [], []
    for index, dep in enumerate(webui.demo.get_config_file()["dependencies"]):
        if dep["inputs"] == [block._id for block in inputs] and dep["outputs"] == [block._id for block in outputs]:
            found.append(webui.demo.fns[dep.get("id", index)].fn)
            # gradio 4: [[id, event], ...]; gradio 3: [id, ...] with the event under "trigger"
            triggers.extend(target[0] if isinstance(target, (list, tuple)) else target for target in dep["targets"])
    return found, triggers


def test_the_panel_makes_object_pngs_only_while_the_section_takes_the_panels_masks(webui, monkeypatch):
    from sd_webui_sam.compat.session import host_session
    from sd_webui_sam.ui import detail_section, handlers

    engine = host_session().engine()
    picture = np.random.default_rng(4).integers(0, 256, (H, W, 3), dtype=np.uint8)
    prompts_json = json.dumps({"width": W, "height": H, "points": [], "boxes": [[2, 4, 30, 40], [34, 6, 62, 44]]})
    found = handlers.segment(engine, engine.list_models()[0], Image.fromarray(picture), prompts_json)
    encoded = []
    real = detail_section.panel_object_masks
    monkeypatch.setattr(detail_section, "panel_object_masks", lambda *args: encoded.append(1) or real(*args))
    tools = (0, 0.0, False, 0, False, False, 0)  # expand, feather, fill holes, min island, invert, soft edges, band
    for runner, tab in ((webui.txt2img, "txt2img"), (webui.img2img, "img2img")):
        source = webui.script(runner, TITLE).section_parts["source"]
        wanted = _element(webui, f"{tab}_sam_object_masks_wanted")
        panel_box = _element(webui, f"{tab}_sam_object_masks")
        assert source.value == detail_settings.SOURCES[0] and wanted.value is False  # the page starts in agreement

        # "Objects" decides whether the panel makes the PNGs
        (follow,), _ = _event_handlers(webui, [source], [wanted])
        assert follow(PANEL) is True and follow(detail_settings.SOURCES[0]) is False

        # the panel's handler, run on a mask change and when "wanted" changes (so a switch fills the box at once)
        fns, triggers = _event_handlers(
            webui, [wanted, *_panel_tool_inputs(webui, tab, panel_box)], [panel_box])
        assert fns and wanted._id in triggers, tab
        encoded.clear()
        assert fns[0](False, found, 1, *tools) == ""
        assert not encoded  # found by caption: no PNG is made
        read = detailing.read_panel_masks(fns[0](True, found, 1, *tools))
        assert len(read) == 2 and encoded


def _panel_tool_inputs(webui, tab, panel_box):
    """The inputs of the panel's object-masks handler after "wanted": state, choice and the tools."""
    for dep in webui.demo.get_config_file()["dependencies"]:
        if dep["outputs"] == [panel_box._id] and len(dep["inputs"]) > 3:
            return [webui.demo.blocks[block_id] for block_id in dep["inputs"][1:]]
    raise AssertionError(f"no object-masks handler in {tab}")
