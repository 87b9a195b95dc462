"""Overlay preview, mask image, cut-out: what a user sees."""
import numpy as np
import pytest
from PIL import Image

from sd_webui_sam import render
from sd_webui_sam.errors import InvalidImageError, InvalidPromptError


def _photo(height=60, width=80, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _disk(height, width, cx, cy, r):
    yy, xx = np.ogrid[:height, :width]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def test_overlay_is_opaque_rgb_and_changes_only_masked_pixels():
    image = _photo()
    first, second = _disk(60, 80, 20, 20, 10), _disk(60, 80, 55, 35, 12)
    result = render.overlay(image, [first, second])
    assert isinstance(result, np.ndarray) and result.dtype == np.uint8 and result.shape == (60, 80, 3)
    outside = ~(first | second)
    np.testing.assert_array_equal(result[outside], image[outside])
    assert (result[first] != image[first]).any(axis=1).mean() > 0.9
    assert (result[second] != image[second]).any(axis=1).mean() > 0.9
    assert render.overlay(image, [first, second]).tobytes() == result.tobytes()  # deterministic


def test_masks_get_distinct_colours_and_outlines():
    image = np.full((60, 80, 3), 128, np.uint8)
    first, second = _disk(60, 80, 20, 20, 10), _disk(60, 80, 55, 35, 12)
    result = render.overlay(image, np.stack([first, second]))
    colours = render.palette(2)
    assert not np.array_equal(colours[0], colours[1])
    # The edge of each mask is drawn in its full colour, the inside is a half blend.
    assert tuple(result[20, 10]) == tuple(colours[0])          # left edge of the first disk
    assert tuple(result[20, 20]) != tuple(colours[0])          # its centre is blended
    np.testing.assert_allclose(result[20, 20], (image[20, 20] * 0.5 + colours[0] * 0.5), atol=1)
    assert tuple(result[35, 55 + 12]) == tuple(colours[1])


def test_palette_is_seeded_and_distinct():
    assert np.array_equal(render.palette(12, seed=3), render.palette(12, seed=3))
    assert not np.array_equal(render.palette(12, seed=3), render.palette(12, seed=4))
    colours = render.palette(12).astype(int)
    distances = np.abs(colours[:, None, :] - colours[None, :, :]).sum(axis=2)
    assert distances[~np.eye(12, dtype=bool)].min() > 30


def test_points_are_green_and_red_markers_centred_on_the_pixel():
    image = np.full((100, 120, 3), 128, np.uint8)
    result = render.overlay(image, [], points=[(30, 40), (90.4, 60.2)], labels=[1, 0])
    assert tuple(result[40, 30]) == render.POSITIVE_COLOUR
    assert tuple(result[60, 90]) == render.NEGATIVE_COLOUR
    for (x, y) in ((30, 40), (90, 60)):
        changed = np.argwhere((result != image).any(axis=2))
        near = changed[(np.abs(changed[:, 0] - y) < 20) & (np.abs(changed[:, 1] - x) < 20)]
        centre_y = (near[:, 0].min() + near[:, 0].max()) / 2
        centre_x = (near[:, 1].min() + near[:, 1].max()) / 2
        assert (centre_x, centre_y) == (x, y)
    changed = (result != image).any(axis=2)
    far = np.ones_like(changed)
    far[25:56, 15:46] = False
    far[45:76, 75:106] = False
    assert not changed[far].any()


def test_boxes_are_drawn_as_rectangles_only():
    image = np.full((100, 120, 3), 128, np.uint8)
    result = render.overlay(image, [], boxes=[(10, 20, 70, 80)])
    changed = (result != image).any(axis=2)
    assert changed[20, 40] and changed[80, 40] and changed[50, 10] and changed[50, 70]
    assert not changed[50, 40]  # inside stays as it was
    assert not changed[:15].any() and not changed[:, 76:].any()
    assert tuple(result[20, 40]) == render.BOX_COLOUR


def test_feathered_alpha_shows_its_softness():
    image = np.zeros((40, 40, 3), np.uint8)
    alpha = np.zeros((40, 40), np.float32)
    alpha[:, 20:] = 1.0
    alpha[:, 15:20] = 0.25
    result = render.overlay(image, alpha, outline=False).astype(int)
    assert result[10, 30].sum() > result[10, 17].sum() > 0
    assert result[10, 5].sum() == 0


def test_overlay_refuses_mismatched_inputs():
    with pytest.raises(InvalidImageError):
        render.overlay(_photo(), [np.zeros((10, 10), bool)])
    with pytest.raises(InvalidPromptError):
        render.overlay(_photo(), [], points=[(1, 1), (2, 2)], labels=[1])


def test_reference_blend_is_opaque_rgb_with_red_boxes():
    image = np.full((50, 50, 3), 128, np.uint8)
    picture = render.reference_blend(image, _disk(50, 50, 25, 25, 8), [(5, 5, 45, 45)])
    assert picture.mode == "RGB" and picture.size == (50, 50)
    assert picture.getpixel((25, 5)) == render.REFERENCE_BOX_COLOUR


def test_mask_image_is_l_0_255():
    mask = _disk(30, 40, 10, 10, 5)
    picture = render.mask_image(mask)
    assert picture.mode == "L" and picture.size == (40, 30)
    values = np.asarray(picture)
    assert set(np.unique(values)) == {0, 255}
    np.testing.assert_array_equal(values == 255, mask)
    soft = render.mask_image(np.array([[0.0, 0.5, 1.0]], np.float32))
    assert list(np.asarray(soft)[0]) == [0, 128, 255]


def test_cutout_alpha_equals_the_mask():
    image = _photo()
    mask = _disk(60, 80, 40, 30, 15)
    picture = render.cutout(image, mask)
    assert picture.mode == "RGBA" and picture.size == (80, 60)
    rgba = np.asarray(picture)
    np.testing.assert_array_equal(rgba[..., 3], mask.astype(np.uint8) * 255)
    np.testing.assert_array_equal(rgba[mask][:, :3], image[mask])
    assert (rgba[~mask] == 0).all()


def test_cutout_feathered_alpha_and_source_alpha_multiply():
    rgba = np.dstack([_photo(4, 4), np.full((4, 4), 128, np.uint8)])
    alpha = np.full((4, 4), 0.5, np.float32)
    alpha[0, 0] = 0.0
    alpha[3, 3] = 1.0
    result = np.asarray(render.cutout(rgba, alpha))
    assert result[3, 3, 3] == 128 and result[1, 1, 3] == 64 and tuple(result[0, 0]) == (0, 0, 0, 0)
    from_pil = np.asarray(render.cutout(Image.fromarray(rgba, "RGBA"), alpha > 0.7))
    assert from_pil[3, 3, 3] == 128 and from_pil[1, 1, 3] == 0
    with pytest.raises(InvalidImageError):
        render.cutout(rgba, np.ones((5, 5), bool))
