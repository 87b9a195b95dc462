"""AutoSAM maps (colour map, EditAnything map, SAM-refined semantic map) as a ControlNet unit's control
image, through the WebUI adapter in the stand-in host with the recording fake ControlNets."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image


TITLE = "Segment Anything"
MAP_ARGS = slice(12, 15)   # after the 6 mask hand-off and the 6 cut-out arguments


def colour_map(width=64, height=48) -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def editanything_map(width=64, height=48) -> Image.Image:
    """Segment ids 1..3 in R, 0 in G and B: nearly black, as a map of few segments is."""
    ids = np.zeros((height, width, 3), dtype=np.uint8)
    ids[:, : width // 3, 0] = 1
    ids[:, width // 3: 2 * width // 3, 0] = 2
    ids[:, 2 * width // 3:, 0] = 3
    return Image.fromarray(ids)


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def map_values(enabled=True, unit=1, image=None):
    return [enabled, str(unit), image]


def run(webui, tab, map_args, mask_args=None):
    runner = webui.txt2img if tab == "txt2img" else webui.img2img
    values = webui.ui_values(runner, {})
    script = webui.script(runner, TITLE)
    if mask_args is not None:
        values[script.args_from:script.args_from + len(mask_args)] = mask_args
    values[script.args_from + MAP_ARGS.start:script.args_from + MAP_ARGS.stop] = map_args
    if tab == "txt2img":
        return webui.generate_txt2img({}, script_args=values)
    return webui.generate_img2img({}, script_args=values, init_images=[Image.new("RGB", (8, 8))])


def state_units(webui, tab):
    runner = webui.txt2img if tab == "txt2img" else webui.img2img
    return [c.value for c in webui.script(runner, "ControlNet").controls]


def forge_reads_without_error(unit) -> bool:
    """Forge's get_input_data test for a scribble on a black canvas; it must not raise, and be False."""
    unit_image_fg = unit.image_fg[:, :, 3] if unit.image_fg is not None else None
    return not ((unit.image < 5).all() and (unit_image_fg > 5).any())


# ----- Mikubill and Forge, txt2img and img2img --------------------------------------------------------


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
@pytest.mark.parametrize("make_map", [colour_map, editanything_map])
def test_mikubill_unit_gets_exactly_the_map(make_webui, tab, make_map):
    webui = make_webui(controlnet="mikubill", unit_count=3)
    before = state_units(webui, tab)
    the_map = make_map()
    p = run(webui, tab, map_values(True, 1, the_map))
    received = p.controlnet_received
    assert len(received) == 3
    unit = received[1]
    assert unit.enabled is True and unit.module == "none"
    assert isinstance(unit.image, np.ndarray) and unit.image.dtype == np.uint8 and unit.image.shape == (48, 64, 3)
    assert np.array_equal(unit.image, np.asarray(the_map))
    assert unit.mask is None
    for other in (received[0], received[2]):
        assert other.image is None and other.enabled is False and other.module == "none"
    # the session's gr.State units are the user's: not edited
    assert all(u.image is None and u.enabled is False for u in before)
    assert unit is not before[1]


@pytest.mark.parametrize("tab", ["txt2img", "img2img"])
@pytest.mark.parametrize("make_map", [colour_map, editanything_map])
def test_forge_unit_gets_exactly_the_map(make_webui, tab, make_map):
    webui = make_webui(controlnet="forge", unit_count=3)
    before = state_units(webui, tab)
    the_map = make_map()
    p = run(webui, tab, map_values(True, 2, the_map))
    received = p.controlnet_received
    assert len(received) == 3
    unit = received[2]
    assert unit.enabled is True and unit.module == "None"
    assert isinstance(unit.image, np.ndarray) and unit.image.dtype == np.uint8
    assert np.array_equal(unit.image, np.asarray(the_map))
    assert unit.mask_image is None and unit.mask_image_fg is None
    assert forge_reads_without_error(unit), "a nearly black map must not trip Forge's canvas check"
    for other in received[:2]:
        assert other.image is None and other.enabled is False
    assert all(u.image is None and u.enabled is False and u.image_fg is None for u in before)


def test_map_with_alpha_is_sent_as_rgb(make_webui):
    webui = make_webui(controlnet="mikubill", unit_count=2)
    the_map = colour_map()
    rgba = the_map.convert("RGBA")
    rgba.putalpha(128)
    p = run(webui, "txt2img", map_values(True, 0, rgba))
    assert p.controlnet_received[0].image.shape == (48, 64, 3)
    assert np.array_equal(p.controlnet_received[0].image, np.asarray(the_map))


def test_a_user_unit_keeps_its_settings_but_not_its_preprocessor(make_webui):
    from importlib import import_module

    webui = make_webui(controlnet="mikubill", unit_count=2)
    external_code = import_module("extensions.sd-webui-controlnet.scripts.external_code")
    users = external_code.ControlNetUnit(enabled=True, module="seg_ofade20k", model="control_v11p_sd15_seg", weight=0.7,
                                         mask=np.full((8, 8), 255, np.uint8))
    values = webui.ui_values(webui.txt2img, {})
    cn = webui.script(webui.txt2img, "ControlNet")
    values[cn.args_from] = users
    sam = webui.script(webui.txt2img, TITLE)
    values[sam.args_from + MAP_ARGS.start:sam.args_from + MAP_ARGS.stop] = map_values(True, 0, colour_map())
    p = webui.generate_txt2img({}, script_args=values)
    unit = p.controlnet_received[0]
    assert (unit.model, unit.weight, unit.module) == ("control_v11p_sd15_seg", 0.7, "none")
    assert unit.mask is None
    assert users.module == "seg_ofade20k" and users.image is None and users.mask is not None


# ----- API -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("controlnet", ["mikubill", "forge"])
def test_api_base64_map(make_webui, controlnet):
    webui = make_webui(controlnet=controlnet, unit_count=2)
    the_map = editanything_map()
    old_twelve = [False, None, None, False, 0, False, False, "", None, None, 0.3, 0.25]
    p = webui.api_txt2img({"alwayson_scripts": {"segment anything": {"args": old_twelve + [True, 1, b64(the_map)]}}})
    received = p.controlnet_received
    assert len(received) == 2
    assert np.array_equal(received[1].image, np.asarray(the_map)) and received[1].image.dtype == np.uint8
    assert received[0].image is None


@pytest.mark.parametrize("old_args", [
    [False, None, None, False, 0, False],
    [False, None, None, False, 0, False, False, "", None, None, 0.3, 0.25],
])
def test_api_callers_of_the_older_layouts_still_work(make_webui, old_args):
    webui = make_webui(controlnet="mikubill", unit_count=2)
    mask = np.zeros((48, 64), np.uint8)
    mask[5:20, 5:30] = 255
    args = list(old_args)
    args[1:5] = [b64(colour_map()), b64(Image.fromarray(mask)), True, 0]
    p = webui.api_txt2img({"alwayson_scripts": {"segment anything": {"args": args}}})
    received = p.controlnet_received
    assert np.array_equal(received[0].image["mask"], mask)
    assert received[1].image is None


def test_script_reads_short_argument_tuples_as_off():
    from sd_webui_sam.script_args import parse_script_args

    def control_map(values):
        parsed = parse_script_args(values)
        return parsed.control_map_enabled, parsed.control_map_unit, parsed.control_map_image

    assert control_map([False] * 12) == (False, 0, None)
    assert control_map([False] * 6) == (False, 0, None)
    assert control_map([False] * 12 + ["true", "2", "x"]) == (True, 2, "x")


# ----- off, missing, conflicting ---------------------------------------------------------------------


@pytest.mark.parametrize("controlnet", ["mikubill", "forge"])
def test_disabled_sets_nothing(make_webui, controlnet):
    webui = make_webui(controlnet=controlnet, unit_count=3)
    p = run(webui, "txt2img", map_values(False, 1, colour_map()))
    assert all(u.image is None and u.enabled is False for u in p.controlnet_received)


def test_enabled_without_a_map_is_reported(make_webui, capsys):
    webui = make_webui(controlnet="mikubill", unit_count=2)
    p = run(webui, "txt2img", map_values(True, 0, None))
    assert "there is no map" in capsys.readouterr().out
    assert all(u.image is None for u in p.controlnet_received)


def test_missing_unit_is_reported(make_webui, capsys):
    webui = make_webui(controlnet="forge", unit_count=2)
    p = run(webui, "txt2img", map_values(True, 5, colour_map()))
    assert "unit 5 does not exist" in capsys.readouterr().out
    assert all(u.image is None for u in p.controlnet_received)


def test_missing_controlnet_is_reported(make_webui, capsys):
    bare = make_webui(controlnet=None)
    p = bare.generate_txt2img({}, script_args=_with_map(bare, map_values(True, 0, colour_map())))
    assert "no ControlNet is installed" in capsys.readouterr().out and p is not None


def _with_map(webui, map_args):
    values = webui.ui_values(webui.txt2img, {})
    script = webui.script(webui.txt2img, TITLE)
    values[script.args_from + MAP_ARGS.start:script.args_from + MAP_ARGS.stop] = map_args
    return values


@pytest.mark.parametrize("controlnet", ["mikubill", "forge"])
def test_mask_and_map_go_to_their_own_units(make_webui, controlnet, capsys):
    webui = make_webui(controlnet=controlnet, unit_count=3)
    picture = colour_map()
    mask = np.zeros((48, 64), np.uint8)
    mask[:, :10] = 255
    mask_args = [False, picture, Image.fromarray(mask), True, "0", False]
    the_map = editanything_map()
    received = run(webui, "img2img", map_values(True, 2, the_map), mask_args=mask_args).controlnet_received
    assert len(received) == 3
    sent_mask = received[0].image["mask"] if controlnet == "mikubill" else received[0].mask_image[..., 0]
    assert np.array_equal(sent_mask, mask)
    assert np.array_equal(received[2].image, np.asarray(the_map))
    assert received[1].image is None
    # the same unit for both: the map wins and the log says so
    received = run(webui, "img2img", map_values(True, 0, the_map), mask_args=mask_args).controlnet_received
    assert np.array_equal(received[0].image, np.asarray(the_map))
    assert "replaces the mask" in capsys.readouterr().out


# ----- the Auto SAM tab's control ---------------------------------------------------------------------


@pytest.mark.parametrize("controlnet", ["mikubill", "forge"])
def test_map_controls_shown_with_controlnet(make_webui, controlnet):
    webui = make_webui(controlnet=controlnet, unit_count=2)
    for runner in (webui.txt2img, webui.img2img):
        controls = webui.script(runner, TITLE).controls[MAP_ARGS]
        assert [c.visible for c in controls] == [True, True, True]
        assert [c[0] if isinstance(c, (tuple, list)) else c for c in controls[1].choices] == ["0", "1"]


def test_no_map_controls_in_the_standalone_panel():
    import gradio as gr

    from sd_webui_sam.ui import autosam_tab
    from sd_webui_sam.ui.panel import PanelOptions, build_panel

    with gr.Blocks():
        panel = build_panel(PanelOptions(prefix="standalone", engine=lambda: None, sd_controls=False))
    assert "controlnet" not in panel.extra["autosam"]
    assert autosam_tab.control_map_components(panel) == {}


def test_the_chosen_map_is_the_one_shown():
    from sd_webui_sam.errors import SamUserError
    from sd_webui_sam.ui import autosam_tab as tab

    blend, colours, control = colour_map(), colour_map().rotate(90), editanything_map()
    maps = tab.random_maps([blend, colours, control])
    refined = Image.fromarray(np.full((48, 64, 3), (120, 120, 80), np.uint8))
    assert np.array_equal(np.asarray(tab.control_map_for(tab.COLOUR_MAP, maps, refined)[0]), np.asarray(colours))
    assert np.array_equal(np.asarray(tab.control_map_for(tab.EDITANYTHING_MAP, maps, refined)[0]), np.asarray(control))
    assert tab.control_map_for(tab.REFINED_MAP, maps, None)[0] is None
    picture, message = tab.control_map_for(tab.REFINED_MAP, None, refined)
    assert np.array_equal(np.asarray(picture), np.asarray(refined)) and "next generation" in message
    none, message = tab.control_map_for(tab.EDITANYTHING_MAP, None, refined)
    assert none is None and "Segment everything" in message
    with pytest.raises(SamUserError):
        tab.control_map_for("depth", maps, refined)


def test_segmentation_runs_and_the_choice_update_the_map_shown(make_webui):
    """The tab wires 'Segment everything', 'Segment' and the map choice to the image the script sends."""
    webui = make_webui(controlnet="mikubill", unit_count=2)
    script = webui.script(webui.txt2img, TITLE)
    map_image = script.controls[MAP_ARGS][2]
    config = webui.demo.get_config_file()
    feeding = [i for i, d in enumerate(config["dependencies"]) if map_image._id in d["outputs"]]
    prefix = "txt2img_sam_autosam"
    by_elem = {getattr(b, "elem_id", None): b._id for b in webui.demo.blocks.values()}
    triggers = set()
    for index in feeding:
        dependency = config["dependencies"][index]
        targets = dependency.get("targets") or [dependency.get("trigger")]
        triggers |= {t[0] if isinstance(t, (list, tuple)) else t for t in targets}
        if dependency.get("trigger_after") is not None:
            after = config["dependencies"][dependency["trigger_after"]]
            triggers |= {t[0] if isinstance(t, (list, tuple)) else t for t in (after.get("targets") or [])}
    assert {by_elem[f"{prefix}_random_run"], by_elem[f"{prefix}_semantic_run"],
            by_elem[f"{prefix}_controlnet_kind"]} <= triggers
    from sd_webui_sam.ui import autosam_tab as tab

    fn = webui.demo.fns[feeding[0]].fn
    maps = tab.random_maps([colour_map(), colour_map(), editanything_map()])
    picture, _status = fn(tab.EDITANYTHING_MAP, maps, None)
    assert np.array_equal(np.asarray(picture), np.asarray(editanything_map()))
