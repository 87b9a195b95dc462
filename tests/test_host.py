"""The WebUI adapter in the stand-in host: UI build, settings, p.* fields and ControlNet units."""
from __future__ import annotations

import argparse
import base64
import io
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.webui_stub.harness import EXTENSION_ROOT

TITLE = "Segment Anything"


def picture(width=64, height=48):
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def mask_image(width=64, height=48):
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[10:30, 20:50] = 255
    return Image.fromarray(mask, mode="L")


def b64(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def sam_values(use=False, image=None, mask=None, cn=False, unit=0, invert=False):
    return [use, image, mask, cn, str(unit), invert]


# ----- UI build -----------------------------------------------------------------------------------


def test_accordion_in_both_tabs_and_api_can_rebuild_ui_without_side_effects(make_webui):
    webui = make_webui()
    from modules import script_callbacks

    for runner in (webui.txt2img, webui.img2img):
        script = webui.script(runner, TITLE)
        assert script.alwayson
        # 6 for the mask hand-off, 6 for cut-out after generation, 3 for the AutoSAM map to ControlNet,
        # 2 for the cut-out's soft edges
        assert script.args_to - script.args_from == 17
        assert all(getattr(c, "label", None) for c in script.controls)
    callbacks_before = {key: len(value) for key, value in script_callbacks.callback_map.items()}
    first = webui.api_default_args(webui.img2img)
    second = webui.api_default_args(webui.img2img)
    callbacks_after = {key: len(value) for key, value in script_callbacks.callback_map.items()}
    assert callbacks_before == callbacks_after
    script = webui.script(webui.img2img, TITLE)
    assert first[script.args_from:script.args_to] == second[script.args_from:script.args_to]
    defaults = first[script.args_from:script.args_to]
    assert defaults[:6] == [False, None, None, False, "0", False]
    # Cut-out after generation: off, no caption, then the model choices and the default thresholds.
    # (an empty Textbox's default value is "" in gradio 3 and None in gradio 4; both mean no caption)
    assert defaults[6] is False and defaults[7] in ("", None) and defaults[10:12] == [0.3, 0.25]
    # AutoSAM map to ControlNet: off, unit 0, no map yet.
    assert defaults[12:15] == [False, "0", None]
    # The cut-out's soft edges: off, automatic band.
    assert defaults[15:] == [False, 0]


def test_lazy_imports_work_after_the_script_loader_restores_sys_path(tmp_path):
    """A1111 puts the extension root on sys.path only while it imports scripts/*.py. With --api it
    then builds the UI again; every lazy import of our packages must still resolve afterwards."""
    program = f"""
import importlib.util, sys
root = {str(EXTENSION_ROOT)!r}
sys.path[:] = [entry for entry in sys.path if entry not in ("", ".", root)]
spec = importlib.util.spec_from_file_location("stub_harness", root + "/tests/webui_stub/harness.py")
harness = importlib.util.module_from_spec(spec)
spec.loader.exec_module(harness)
webui = harness.FakeWebUI()
webui.load_scripts()
assert root not in sys.path, "the stand-in left the extension root on sys.path"
webui.create_ui()
runner = webui.img2img
webui.api_default_args(runner)
session = webui.modules["segment_anything.py"].SESSION
session.engine().list_models()
import local_groundingdino.store, sam2_image.families, sam_hq.families  # what the engine and the text prompt load lazily
print("lazy imports ok")
"""
    result = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lazy imports ok" in result.stdout


def test_checkpoint_refused_by_a1111_checker_says_so_and_good_ones_load_through_it(make_webui, tiny_sam, tmp_path):
    """A1111 swaps torch.load for modules/safe.py, which answers None for files it refuses (those
    written by torch >= 2.4 among them) and explains only in its console."""
    import shutil
    import zipfile

    import torch

    from sd_webui_sam import checkpoints
    from sd_webui_sam.errors import UnsafeCheckpointError

    good = shutil.copy(tiny_sam[0], tmp_path / "good.pth")
    newer = shutil.copy(tiny_sam[0], tmp_path / "newer_torch.pth")
    with zipfile.ZipFile(newer, "a") as archive:
        directory = archive.namelist()[0].split("/")[0]
        archive.writestr(f"{directory}/.format_version", "1")
    make_webui()
    assert torch.load is not torch.serialization.load  # the stand-in patched it, as A1111 does
    assert checkpoints.load_state_dict(Path(good)).keys() == torch.serialization.load(good, weights_only=True).keys()
    with pytest.raises(UnsafeCheckpointError) as refused:
        checkpoints.read_shapes(Path(newer))
    message = str(refused.value)
    assert "newer_torch.pth" in message and "WebUI" in message and "--disable-safe-unpickle" in message
    assert "NoneType" not in message


def test_api_busy_timeout_setting_reaches_the_mounted_api(make_webui):
    """How long an HTTP request waits behind a generation is the WebUI setting, not a constant."""
    from fastapi import FastAPI

    make_webui(options={"sam_api_busy_timeout": 7})
    from modules import script_callbacks  # the stand-in's modules exist once it is made

    app = FastAPI()
    script_callbacks.app_started_callback(None, app)
    assert app.state.sd_webui_sam_api.settings.busy_timeout_s == 7.0


def test_api_waits_for_the_hosts_fifo_queue_lock_at_most_the_setting_then_503(make_webui):
    """The WebUI's queue_lock is a FIFOLock with no timed acquire: a request made while a
    generation holds it is answered 503 after the busy timeout, and runs once the lock is free."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    make_webui(options={"sam_api_busy_timeout": 1})
    from modules import call_queue, script_callbacks  # the stand-in's modules exist once it is made

    app = FastAPI()
    script_callbacks.app_started_callback(None, app)
    with TestClient(app) as client:
        with call_queue.queue_lock:  # a generation is running
            busy = client.post("/sam/v2/unload")
        assert busy.status_code == 503 and busy.headers.get("Retry-After")
        assert client.post("/sam/v2/unload").status_code == 200


def test_settings_registered_with_v16_compatible_sections(make_webui):
    make_webui()
    from modules import shared

    keys = [k for k in shared.opts.data_labels if k.startswith("sam_")]
    assert {"sam_model_dir", "sam_device", "sam_model_cache_size", "sam_embedding_cache_entries",
            "sam_default_expand", "sam_default_feather", "sam_default_fill_holes", "sam_default_min_island"} <= set(keys)
    for key in keys:
        assert shared.opts.data_labels[key].section == ("segment_anything", "Segment Anything")


def test_preload_adds_model_dir_and_device_flags():
    spec = importlib.util.spec_from_file_location("sam_preload", EXTENSION_ROOT / "preload.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parser = argparse.ArgumentParser()
    module.preload(parser)
    args = parser.parse_args(["--sam-model-dir", "/models/sam", "--sam-device", "cpu"])
    assert args.sam_model_dir == "/models/sam" and args.sam_device == "cpu"


def test_controlnet_controls_hidden_without_controlnet(make_webui):
    webui = make_webui(controlnet=None)
    for runner in (webui.txt2img, webui.img2img):
        script = webui.script(runner, TITLE)
        assert [c.visible for c in script.controls[3:6]] == [False, False, False]
        assert [c.visible for c in script.controls[12:15]] == [False, False, False]


@pytest.mark.parametrize("legacy", [False, True])
def test_unit_choices_follow_controlnet_unit_count(make_webui, legacy):
    webui = make_webui(controlnet="mikubill", unit_count=2, legacy_unit_key=legacy)
    script = webui.script(webui.txt2img, TITLE)
    unit = script.controls[4]
    assert [c.visible for c in script.controls[3:6]] == [True, True, True]
    choices = [c[0] if isinstance(c, (tuple, list)) else c for c in unit.choices]
    assert choices == ["0", "1"]


def test_use_for_generation_only_in_img2img(make_webui):
    webui = make_webui()
    assert webui.script(webui.txt2img, TITLE).controls[0].visible is False
    assert webui.script(webui.img2img, TITLE).controls[0].visible is True


# ----- img2img inpaint -------------------------------------------------------------------------------


def test_img2img_ui_use_for_generation_sets_init_images_and_mask(make_webui):
    webui = make_webui()
    image, mask = picture(), mask_image()
    p = webui.generate_img2img({TITLE: sam_values(True, image, mask)}, init_images=[Image.new("RGB", (8, 8))])
    assert p.seen_by_init["init_images"][0].size == image.size
    assert np.array_equal(np.asarray(p.seen_by_init["init_images"][0]), np.asarray(image))
    assert np.array_equal(np.asarray(p.seen_by_init["image_mask"]), np.asarray(mask))


def test_img2img_api_base64_arguments(make_webui):
    webui = make_webui()
    image, mask = picture(), mask_image()
    p = webui.api_img2img({
        "init_images": [b64(Image.new("RGB", (8, 8)))],
        "alwayson_scripts": {"segment anything": {"args": [True, b64(image), b64(mask)]}},
    })
    assert np.array_equal(np.asarray(p.seen_by_init["init_images"][0].convert("RGB")), np.asarray(image))
    assert np.array_equal(np.asarray(p.seen_by_init["image_mask"]), np.asarray(mask))


def test_disabled_script_leaves_p_untouched(make_webui):
    webui = make_webui()
    original = Image.new("RGB", (8, 8), (1, 2, 3))
    p = webui.generate_img2img({TITLE: sam_values(False, picture(), mask_image())}, init_images=[original])
    assert p.seen_by_init["init_images"] == [original]
    assert p.seen_by_init["image_mask"] is None


def test_mismatched_mask_is_refused_without_breaking_generation(make_webui, capsys):
    webui = make_webui()
    original = Image.new("RGB", (8, 8))
    p = webui.generate_img2img({TITLE: sam_values(True, picture(64, 48), mask_image(32, 32))}, init_images=[original])
    assert p.seen_by_init["init_images"] == [original]
    assert "press Preview again" in capsys.readouterr().out


def test_txt2img_use_for_generation_does_not_create_img2img_fields(make_webui):
    webui = make_webui()
    p = webui.generate_txt2img({TITLE: sam_values(True, picture(), mask_image())})
    assert not hasattr(p, "init_images") and not hasattr(p, "image_mask")


# ----- ControlNet ------------------------------------------------------------------------------------


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
@pytest.mark.parametrize("invert", [False, True])
def test_mikubill_unit_receives_image_and_mask(make_webui, tab, invert):
    webui = make_webui(controlnet="mikubill", unit_count=3)
    runner = webui.txt2img if tab == "txt2img" else webui.img2img
    cn = webui.script(runner, "ControlNet")
    state_units = [c.value for c in cn.controls]
    image, mask = picture(), mask_image()
    values = webui.ui_values(runner, {TITLE: sam_values(False, image, mask, cn=True, unit=1, invert=invert)})
    generate = webui.generate_txt2img if tab == "txt2img" else webui.generate_img2img
    p = generate({}, script_args=values)
    received = p.controlnet_received
    assert len(received) == 3
    assert received[1].enabled is True
    sent = received[1].image
    assert sent["image"].dtype == np.uint8 and sent["mask"].dtype == np.uint8
    assert np.array_equal(sent["image"], np.asarray(image))
    expected = np.asarray(mask)
    assert np.array_equal(sent["mask"], 255 - expected if invert else expected)
    assert received[0].image is None and received[2].image is None
    # The UI's gr.State units are the user's: they must not have been edited.
    assert all(unit.image is None and unit.enabled is False for unit in state_units)
    assert received[1] is not state_units[1]


@pytest.mark.parametrize("controlnet", ["mikubill", "forge"])
def test_unit_without_a_controlnet_model_is_reported(make_webui, controlnet, capsys):
    """Both ControlNets raise 'no model selected' for such a unit and generate without it: the
    console says so in our words, next to what we sent."""
    webui = make_webui(controlnet=controlnet, unit_count=2)
    values = webui.ui_values(webui.txt2img, {TITLE: sam_values(False, picture(), mask_image(), cn=True, unit=1)})
    webui.generate_txt2img({}, script_args=values)
    printed = capsys.readouterr().out
    assert "mask sent to ControlNet unit 1" in printed
    assert "unit 1 has no ControlNet model selected, so ControlNet will skip it" in printed


def test_mikubill_api_units_as_dicts(make_webui):
    webui = make_webui(controlnet="mikubill", unit_count=2)
    image, mask = picture(), mask_image()
    p = webui.api_txt2img({"alwayson_scripts": {
        "controlnet": {"args": [{"enabled": True, "module": "inpaint_only", "model": "m"}, {"enabled": False}]},
        "segment anything": {"args": [False, b64(image), b64(mask), True, 0, False]},
    }})
    received = p.controlnet_received
    assert len(received) == 2
    assert received[0].module == "inpaint_only" and received[0].enabled
    assert np.array_equal(received[0].image["mask"], np.asarray(mask))
    assert received[1].image is None


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
def test_forge_unit_receives_arrays(make_webui, tab):
    webui = make_webui(controlnet="forge", unit_count=3)
    runner = webui.txt2img if tab == "txt2img" else webui.img2img
    cn = webui.script(runner, "ControlNet")
    state_units = [c.value for c in cn.controls]
    image, mask = picture(), mask_image()
    values = webui.ui_values(runner, {TITLE: sam_values(False, image, mask, cn=True, unit=2, invert=True)})
    generate = webui.generate_txt2img if tab == "txt2img" else webui.generate_img2img
    p = generate({}, script_args=values)
    received = p.controlnet_received
    assert len(received) == 3
    unit = received[2]
    assert unit.enabled is True
    assert isinstance(unit.image, np.ndarray) and unit.image.dtype == np.uint8
    assert np.array_equal(unit.image, np.asarray(image))
    assert unit.mask_image.dtype == np.uint8
    assert np.array_equal(unit.mask_image[..., 0], 255 - np.asarray(mask))
    assert unit.image_fg is None and unit.mask_image_fg is None
    assert all(u.image is None and u.enabled is False for u in state_units)


def test_send_to_controlnet_without_controlnet_is_reported_not_raised(make_webui, capsys):
    webui = make_webui(controlnet=None)
    p = webui.generate_txt2img({TITLE: sam_values(False, picture(), mask_image(), cn=True, unit=0)})
    assert "no ControlNet is installed" in capsys.readouterr().out
    assert p is not None


def test_scripts_are_not_reordered(make_webui):
    webui = make_webui(controlnet="mikubill")
    titles = [s.title() for s in webui.img2img.alwayson_scripts]
    assert titles == ["ControlNet", "Detail each object (Segment Anything)", TITLE]


# ----- send to img2img inpaint -------------------------------------------------------------------------


def _dependencies(demo):
    config = demo.get_config_file()
    return config["dependencies"]


def _trigger_ids(dependency):
    if "targets" in dependency:
        return [t[0] if isinstance(t, (list, tuple)) else t for t in dependency["targets"]]
    return [dependency.get("trigger_id") or dependency.get("trigger")]


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
def test_send_to_inpaint_fills_inpaint_upload_and_applies_preset(make_webui, tab):
    from sd_webui_sam.ui import handlers

    webui = make_webui()
    runner = webui.txt2img if tab == "txt2img" else webui.img2img
    webui.script(runner, TITLE)  # the script is loaded on this tab
    send_ids = [c._id for c in webui.demo.blocks.values() if getattr(c, "elem_id", None) == f"{tab}_sam_send_to_inpaint"]
    assert len(send_ids) == 1
    dependencies = _dependencies(webui.demo)
    index = next(i for i, d in enumerate(dependencies) if send_ids[0] in _trigger_ids(d) and d.get("outputs"))
    outputs = dependencies[index]["outputs"]
    targets = webui.components
    assert outputs[0] == targets["img_inpaint_base"]._id
    assert outputs[1] == targets["img_inpaint_mask"]._id
    controlled = {name: targets[name]._id for name in handlers.PRESET_TARGETS}
    assert set(controlled.values()) <= set(outputs)

    image, mask = picture(), mask_image()
    fn = webui.demo.fns[index].fn
    result = fn(image, mask, handlers.FIX_DETAIL)
    assert np.array_equal(np.asarray(result[0]), np.asarray(image))
    assert np.array_equal(np.asarray(result[1]), np.asarray(mask))
    by_id = dict(zip(outputs, result))
    assert by_id[controlled["img2img_mask_blur"]]["value"] == 4
    assert by_id[controlled["img2img_inpaint_full_res"]]["value"] == "Only masked"
    assert by_id[controlled["img2img_inpaint_full_res_padding"]]["value"] == 32
    assert by_id[controlled["img2img_inpainting_fill"]]["value"] == "original"
    assert by_id[controlled["img2img_denoising_strength"]]["value"] == 0.45

    left = dict(zip(outputs, fn(image, mask, handlers.LEAVE_SETTINGS)))
    assert all("value" not in left[i] for i in controlled.values())
    replace = dict(zip(outputs, fn(image, mask, handlers.REPLACE_OBJECT)))
    assert replace[controlled["img2img_inpaint_full_res"]]["value"] == "Whole picture"
    assert replace[controlled["img2img_denoising_strength"]]["value"] == 0.75
    assert "value" not in replace[controlled["img2img_mask_blur"]]
    soft = fn(image, mask, handlers.SOFT_EDGES_BLUR)
    assert dict(zip(outputs, soft))[controlled["img2img_mask_blur"]]["value"] == 0

    # A large picture's mask output is shown at screen size: the send makes the full-size one.
    big = np.zeros((1536, 2048, 3), dtype=np.uint8)
    full = np.zeros((3, 1536, 2048), dtype=bool)
    full[:, 400:1200, 500:1500] = True
    found = handlers.Candidates(image=big, masks=full[:, ::2, ::2], scores=np.array([0.2, 0.9, 0.5], np.float32),
                                full_size=lambda: full)
    shown = handlers.preview_outputs(found, 1, handlers.MaskTools()).mask
    assert shown.size == (640, 480)
    sent = fn(Image.fromarray(big), shown, handlers.LEAVE_SETTINGS, found, 1, 0, 0.0, False, 0, False, False, 0)
    assert sent[1].size == (2048, 1536) and np.array_equal(np.asarray(sent[1]) > 127, full[1])
    assert soft[1].mode == "L" and soft[1].size == mask.size

    failed = fn(image, None, handlers.FIX_DETAIL)
    assert "Preview" in failed[-1]
