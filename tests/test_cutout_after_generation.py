"""'Cut out after generation' in the stand-in WebUI (A1111 1.10 and Forge hook signatures):
postprocess_image segments the text prompt in each generated picture, postprocess saves the RGBA
cut-out and the mask beside the saved picture with the host's save_image and adds them to the gallery."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.text_prompt_fixtures import gdino_folder, tiny_text_settings
from tests.webui_stub.harness import FakeWebUI

TITLE = "Segment Anything"


@pytest.fixture(scope="module")
def gdino(tmp_path_factory):
    return gdino_folder(tmp_path_factory.mktemp("gdino"))


@pytest.fixture(params=[None, "forge"], ids=["a1111", "forge"])
def webui(request, tiny_sam, gdino):
    from sd_webui_sam.compat.session import host_session

    ui = FakeWebUI(controlnet=request.param)
    try:
        ui.load_scripts()
        models, vocab = gdino
        host_session().configure(lambda: tiny_text_settings(tiny_sam[0].parent, models, vocab))
        ui.create_ui()
        from modules import scripts

        assert (scripts.PostprocessImageArgs.__init__.__code__.co_argcount == 3) == (request.param == "forge")
        yield ui
    finally:
        ui.close()


def _args(ui, runner, enabled=True, text="hand, face", box_threshold=0.0, sam_model=None):
    script = ui.script(runner, TITLE)
    values = [0] + [getattr(c, "value", None) for c in runner.inputs[1:]]
    mine = values[script.args_from:script.args_to]
    assert len(mine) == 17  # mask hand-off (6), cut-out after generation (6), ControlNet map (3), soft edges (2)
    mine[6:12] = [enabled, text, sam_model or mine[8], mine[9], box_threshold, 0.0]
    values[script.args_from:script.args_to] = mine
    return tuple(values)


def _generate(ui, outdir, args, *, batch_size=2, n_iter=1, save=True):
    from modules import processing

    p = processing.StableDiffusionProcessingTxt2Img(prompt="a cat", seed=7, batch_size=batch_size, n_iter=n_iter,
                                                    width=64, height=48)
    p.outpath_samples = str(outdir)
    p.do_not_save_samples = not save
    p.scripts = ui.txt2img
    p.script_args = args
    return processing.process_images(p)


def test_cutouts_are_saved_beside_each_image_and_added_to_the_gallery(webui, tmp_path):
    processed = _generate(webui, tmp_path, _args(webui, webui.txt2img))
    generated, extra = processed.images[:2], processed.images[2:]
    assert len(extra) == 4 and len(processed.infotexts) == len(processed.images)
    for index, image in enumerate(generated):
        stem = os.path.splitext(image.already_saved_as)[0]
        cutout = Image.open(stem + "-cutout.png")
        mask = Image.open(stem + "-cutout-mask.png")
        assert cutout.mode == "RGBA" and cutout.size == image.size and mask.mode == "L"
        alpha = np.asarray(cutout)[:, :, 3]
        assert np.array_equal(alpha > 0, np.asarray(mask) > 0) and alpha.any()
        rgb = np.asarray(cutout)[:, :, :3][alpha > 0]
        assert (rgb == np.asarray(image)[alpha > 0]).all()  # the generated pixels, not something else
        assert extra[2 * index].mode == "RGBA" and extra[2 * index + 1].mode == "L"
    names = sorted(os.listdir(tmp_path))
    assert names == ["00000-7-a cat-cutout-mask.png", "00000-7-a cat-cutout.png", "00000-7-a cat.png",
                     "00001-8-a cat-cutout-mask.png", "00001-8-a cat-cutout.png", "00001-8-a cat.png"]


def test_existing_files_are_never_overwritten(webui, tmp_path):
    from modules import shared

    shared.opts.data["save_images_add_number"] = False  # the host itself would now reuse names
    try:
        (tmp_path / "7-a cat-cutout.png").write_bytes(b"mine")
        processed = _generate(webui, tmp_path, _args(webui, webui.txt2img), batch_size=1)
    finally:
        shared.opts.data["save_images_add_number"] = True
    assert (tmp_path / "7-a cat-cutout.png").read_bytes() == b"mine"
    assert Image.open(tmp_path / "7-a cat-cutout-1.png").mode == "RGBA"
    assert len(processed.images) == 3


def test_without_saving_the_cutouts_still_reach_the_gallery(webui, tmp_path):
    processed = _generate(webui, tmp_path, _args(webui, webui.txt2img), batch_size=1, save=False)
    assert len(processed.images) == 3 and os.listdir(tmp_path) == []


def test_disabled_or_no_boxes_changes_nothing(webui, tmp_path, capsys):
    processed = _generate(webui, tmp_path, _args(webui, webui.txt2img, enabled=False), batch_size=1)
    assert len(processed.images) == 1 and os.listdir(tmp_path) == ["00000-7-a cat.png"]
    processed = _generate(webui, tmp_path, _args(webui, webui.txt2img, box_threshold=1.0), batch_size=1)
    assert len(processed.images) == 1
    assert "Lower the box threshold" in capsys.readouterr().out


def test_empty_prompt_is_reported_not_run(webui, tmp_path, capsys):
    processed = _generate(webui, tmp_path, _args(webui, webui.txt2img, text=" . "), batch_size=1)
    assert len(processed.images) == 1
    assert "text prompt is empty" in capsys.readouterr().out


def test_api_callers_may_leave_the_cutout_arguments_out(webui):
    from sd_webui_sam.script_args import parse_script_args

    assert parse_script_args([False, None, None, False, "0", False]).cutout_enabled is False
    parsed = parse_script_args([False, None, None, False, "0", False, "true", "dog", "m.pth", None, "2", None])
    assert parsed.cutout_enabled and parsed.cutout_text == "dog" and parsed.cutout_box_threshold == 1.0
    assert parsed.cutout_text_threshold == 0.25


def test_soft_edges_of_the_cutout_come_last_and_default_to_hard(webui):
    from sd_webui_sam.script_args import parse_script_args

    older = [False, None, None, False, "0", False, "true", "dog", "m.pth", None, "0.3", "0.2", False, "0", None]
    assert parse_script_args(older).cutout_soft_edges is False
    soft = parse_script_args(older + [True, "12"])
    assert (soft.cutout_soft_edges, soft.cutout_edge_band, soft.cutout_text) == (True, 12.0, "dog")
    assert parse_script_args(older + ["false", "nan"]).cutout_edge_band == 0.0
    runner = webui.txt2img
    script = webui.script(runner, TITLE)
    values = [getattr(c, "value", None) for c in runner.inputs[script.args_from:script.args_to]]
    assert values[-2:] == [False, 0]   # the panel's checkbox and band slider, off by default
