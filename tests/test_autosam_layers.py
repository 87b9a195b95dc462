"""Image layout: layers that stack back into the image, PNGs and a layered PSD."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sd_webui_sam.autosam.layers import LEFTOVER, build_layers, export_layout, psd_bytes, write_psd
from sd_webui_sam.errors import SamUserError
from tools.fixtures.autosam_fixtures import textured_image


@pytest.fixture()
def scene():
    image = textured_image(60, 90, seed=4)
    yy, xx = np.mgrid[:60, :90]
    masks = [
        xx < 50,                                         # large
        (xx - 30) ** 2 + (yy - 30) ** 2 < 15 ** 2,       # disc inside the large one
        (yy > 45) & (xx > 20),                           # overlaps both
        np.zeros((60, 90), bool),                        # empty: no layer
        ((xx - 30) ** 2 + (yy - 30) ** 2 < 15 ** 2) & (xx < 10),  # nothing left after the disc: no layer
    ]
    return image, masks


def test_layers_are_disjoint_smallest_first_and_stack_back_exactly(scene):
    image, masks = scene
    stack = build_layers(image, masks)
    names = [layer.name for layer in stack.layers]
    assert names == ["segment 001", "segment 002", "segment 003", LEFTOVER]
    owned = np.stack([layer.mask for layer in stack.layers]).astype(int)
    assert (owned.sum(axis=0) == 1).all(), "every pixel in exactly one layer"
    # the smallest segment keeps all its pixels; larger ones lose what it claimed
    disc = masks[1]
    np.testing.assert_array_equal(stack.layers[0].mask, disc)
    assert not (stack.layers[2].mask & disc).any()
    composite = stack.composite()
    np.testing.assert_array_equal(composite[..., :3], image)
    assert (composite[..., 3] == 255).all()
    for layer in stack.layers:
        rgba = stack.rgba(layer)
        assert (rgba[~layer.mask, 3] == 0).all() and (rgba[layer.mask, 3] == 255).all()


def test_png_layers_alpha_composite_into_the_original(scene, tmp_path):
    image, masks = scene
    result = export_layout(image, masks, tmp_path, "photo")
    assert result.directory == tmp_path / "photo"
    assert [p.name for p in result.png_paths] == ["segment_001.png", "segment_002.png", "segment_003.png",
                                                  "leftover.png"]
    canvas = Image.new("RGBA", (90, 60), (0, 0, 0, 0))
    for path in reversed(result.png_paths):
        layer = Image.open(path)
        assert layer.mode == "RGBA" and layer.size == (90, 60)
        canvas = Image.alpha_composite(canvas, layer)
    np.testing.assert_array_equal(np.asarray(canvas)[..., :3], image)
    # a second export never overwrites the first
    again = export_layout(image, masks, tmp_path, "photo", write_psd_file=False)
    assert again.directory == tmp_path / "photo-2"
    assert result.psd_path.exists()


def test_psd_opens_in_psd_tools_with_named_ordered_layers_and_exact_pixels(scene):
    from psd_tools import PSDImage

    image, masks = scene
    stack = build_layers(image, masks)
    psd = PSDImage.open(io.BytesIO(psd_bytes(stack)))
    assert (psd.width, psd.height) == (90, 60)
    layers = list(psd)
    # bottom to top in the file: leftover at the bottom, the smallest segment on top
    assert [layer.name for layer in layers] == [LEFTOVER, "segment 003", "segment 002", "segment 001"]
    canvas = np.zeros((60, 90, 4), np.uint8)
    for ours, theirs in zip(reversed(stack.layers), layers):
        x0, y0, x1, y1 = theirs.bbox
        assert (x0, y0, x1, y1) == ours.box
        assert theirs.is_visible() and theirs.opacity == 255
        pixels = np.asarray(theirs.topil().convert("RGBA"))
        opaque = pixels[..., 3] == 255
        np.testing.assert_array_equal(opaque, ours.mask[y0:y1, x0:x1])
        canvas[y0:y1, x0:x1][opaque] = pixels[opaque]
    np.testing.assert_array_equal(canvas[..., :3], image)
    assert (canvas[..., 3] == 255).all()
    np.testing.assert_array_equal(np.asarray(psd.topil().convert("RGB")), image)  # merged preview


def test_psd_never_overwrites_and_names_survive_non_latin(tmp_path, scene):
    from psd_tools import PSDImage

    image, masks = scene
    stack = build_layers(image, masks[:1])
    stack.layers[0] = type(stack.layers[0])(name="ciel 空", mask=stack.layers[0].mask, box=stack.layers[0].box)
    path = write_psd(stack, tmp_path / "a.psd")
    with pytest.raises(SamUserError):
        write_psd(stack, path)
    assert PSDImage.open(path)[-1].name == "ciel 空"


def test_masks_must_match_the_image():
    with pytest.raises(ValueError):
        build_layers(np.zeros((4, 4, 3), np.uint8), [np.zeros((5, 4), bool)])
