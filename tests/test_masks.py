"""Mask toolkit: radii are Euclidean radii, operations compose as a user expects."""
import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sd_webui_sam import masks
from sd_webui_sam.errors import InvalidImageError


def _disk(height, width, cx, cy, r):
    yy, xx = np.ogrid[:height, :width]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _exact_distance_to(mask):
    """Exact Euclidean distance of every pixel to the nearest mask pixel (OpenCV's exact EDT)."""
    return cv2.distanceTransform(np.where(mask, 0, 255).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


@st.composite
def random_masks(draw, max_side=40):
    height = draw(st.integers(1, max_side))
    width = draw(st.integers(1, max_side))
    density = draw(st.sampled_from([0.002, 0.02, 0.2, 0.6, 0.97]))
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).random((height, width)) < density


# ---------------------------------------------------------------- expand / shrink

@pytest.mark.parametrize("radius", [1, 2, 3, 5, 10, 25, 60])
def test_a_pixel_expands_to_a_disk_of_that_radius(radius):
    side = 2 * radius + 11
    mask = np.zeros((side, side), bool)
    mask[side // 2, side // 2] = True
    grown = masks.expand(mask, radius)
    ys, xs = np.nonzero(grown)
    assert xs.max() - xs.min() + 1 == 2 * radius + 1  # the extent is exactly 2r + 1
    assert ys.max() - ys.min() + 1 == 2 * radius + 1
    np.testing.assert_array_equal(grown, _disk(side, side, side // 2, side // 2, radius))
    assert abs(grown.sum() - math.pi * radius**2) <= 4 * radius + 1


def test_the_old_diameter_amount_is_now_half():
    # The replaced extension's amount 30 grew a mask by about 15 px; our radius 15 does.
    mask = np.zeros((80, 80), bool)
    mask[40, 20:60] = True
    grown = masks.expand(mask, 15)
    rows = np.flatnonzero(grown[:, 40])
    assert (rows.min(), rows.max()) == (25, 55)


@settings(max_examples=120, deadline=None)
@given(random_masks(), st.floats(0.0, 30.0))
def test_expand_is_the_exact_euclidean_distance_threshold(mask, radius):
    expected = _exact_distance_to(mask) <= radius + 1e-6 if mask.any() else np.zeros_like(mask)
    np.testing.assert_array_equal(masks.expand(mask, radius), expected)


@settings(max_examples=80, deadline=None)
@given(random_masks(), st.floats(0.0, 30.0))
def test_shrink_is_expand_of_the_background(mask, radius):
    np.testing.assert_array_equal(masks.shrink(mask, radius), ~masks.expand(~mask, radius))
    np.testing.assert_array_equal(masks.expand(mask, -radius), masks.shrink(mask, radius))
    np.testing.assert_array_equal(masks.shrink(mask, -radius), masks.expand(mask, radius))


def test_large_radius_on_a_large_image_matches_exact_distances():
    # Over a million pixels, so the blocks run on several threads.
    mask = np.zeros((1100, 1000), bool)
    mask |= _disk(1100, 1000, 300, 350, 120)
    mask[50, 950] = mask[1090, 10] = True
    for radius in (100, 254, 255, 300.5):  # both byte and 16-bit internal paths
        np.testing.assert_array_equal(masks.expand(mask, radius), _exact_distance_to(mask) <= radius)


@pytest.mark.parametrize("shape", [(65, 257), (129, 263), (300, 517), (7, 600), (600, 9)])
def test_sizes_that_leave_thin_leftover_blocks(shape):
    mask = np.random.default_rng(sum(shape)).random(shape) < 0.003
    mask[0, 0] = mask[-1, -1] = True
    for radius in (1, 4.5, 17, 40):
        np.testing.assert_array_equal(masks.expand(mask, radius), _exact_distance_to(mask) <= radius)
        np.testing.assert_array_equal(masks.shrink(~mask, radius), _exact_distance_to(mask) > radius)


def test_expand_then_shrink_restores_a_disk():
    disk = _disk(200, 200, 100, 100, 40)
    for radius in (3, 10, 25):
        restored = masks.shrink(masks.expand(disk, radius), radius)
        difference = restored ^ disk
        # Only pixels on the disk's rim may differ (a digital circle is not exactly convex).
        rim = masks.expand(disk, 1.5) & ~masks.shrink(disk, 1.5)
        assert not (difference & ~rim).any()
        assert difference.sum() <= 0.05 * disk.sum()


def test_shrink_by_more_than_the_mask_leaves_nothing():
    disk = _disk(100, 100, 50, 50, 20)
    assert not masks.shrink(disk, 21).any()
    assert masks.shrink(disk, 19).any()


def test_image_border_is_not_background():
    sky = np.zeros((50, 50), bool)
    sky[:20] = True
    shrunk = masks.shrink(sky, 5)
    np.testing.assert_array_equal(shrunk, np.arange(50)[:, None] < 15 * np.ones((1, 50), bool))
    assert masks.shrink(np.ones((10, 10), bool), 3).all()
    assert not masks.expand(np.zeros((10, 10), bool), 3).any()


def test_inputs_are_not_modified_and_other_dtypes_are_accepted():
    mask = _disk(30, 30, 15, 15, 5)
    copy = mask.copy()
    masks.expand(mask, 4)
    masks.shrink(mask, 2)
    masks.postprocess(mask, expand=0)
    np.testing.assert_array_equal(mask, copy)
    assert masks.postprocess(mask) is not mask
    np.testing.assert_array_equal(masks.expand(mask.astype(np.uint8) * 255, 2), masks.expand(mask, 2))
    np.testing.assert_array_equal(masks.expand(mask.astype(np.float32), 2), masks.expand(mask, 2))
    with pytest.raises(InvalidImageError):
        masks.expand(np.zeros((2, 2, 3), bool), 1)


# ---------------------------------------------------------------- feather

def test_feather_is_a_soft_alpha_bounded_by_the_radius():
    mask = np.zeros((60, 60), bool)
    mask[:, 30:] = True
    alpha = masks.feather(mask, 6)
    assert alpha.dtype == np.float32 and alpha.shape == mask.shape
    assert alpha.min() >= 0.0 and alpha.max() <= 1.0
    row = alpha[30]
    assert (row[:30 - 6] == 0).all() and (row[30 + 6:] == 1).all()   # exactly 0 / 1 past the radius
    assert (np.diff(row) >= 0).all() and 0 < row[28] < row[31] < 1      # monotone ramp across the edge
    assert abs(row[29] + row[30] - 1.0) < 1e-5                           # symmetric about the edge
    np.testing.assert_array_equal(masks.feather(mask, 0), mask.astype(np.float32))


def test_feather_keeps_a_mask_touching_the_border_solid():
    mask = np.zeros((40, 40), bool)
    mask[:, :20] = True
    alpha = masks.feather(mask, 8)
    assert (alpha[:, :10] == 1).all()


# ---------------------------------------------------------------- holes and islands

def test_fill_holes_fills_enclosed_background_only():
    ring = _disk(80, 80, 40, 40, 30) & ~_disk(80, 80, 40, 40, 10)
    notch = np.zeros((80, 80), bool)
    notch[0:5, 0:20] = True
    notch[5, 0:20] = False  # an open bay touching the border stays open
    filled = masks.fill_holes(ring)
    np.testing.assert_array_equal(filled, _disk(80, 80, 40, 40, 30))
    small_hole = ring.copy()
    small_hole[60:63, 38:41] = False
    limited = masks.fill_holes(small_hole, max_hole_area=20)
    assert limited[61, 39] and not limited[40, 40]  # the 9-pixel hole filled, the big one kept
    border_touching = np.ones((20, 20), bool)
    border_touching[0:5, 8:12] = False
    np.testing.assert_array_equal(masks.fill_holes(border_touching), border_touching)


def test_diagonal_ring_still_encloses_its_inside():
    ring = np.zeros((7, 7), bool)
    for y, x in [(1, 3), (2, 2), (3, 1), (4, 2), (5, 3), (4, 4), (3, 5), (2, 4)]:
        ring[y, x] = True
    assert masks.fill_holes(ring)[3, 3]


def test_remove_islands_drops_small_regions():
    mask = _disk(80, 80, 30, 30, 15)
    mask[70, 70] = True
    mask[5:8, 70:73] = True  # 9 pixels
    cleaned = masks.remove_islands(mask, 10)
    np.testing.assert_array_equal(cleaned, _disk(80, 80, 30, 30, 15))
    assert masks.remove_islands(mask, 9)[6, 71]
    diagonal = np.zeros((5, 5), bool)
    diagonal[1, 1] = diagonal[2, 2] = True  # 8-connected: one island of 2
    assert masks.remove_islands(diagonal, 2).sum() == 2


# ---------------------------------------------------------------- algebra

@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_set_algebra(seed):
    rng = np.random.default_rng(seed)
    a, b, c = (rng.random((9, 11)) < 0.5 for _ in range(3))
    np.testing.assert_array_equal(masks.invert(masks.invert(a)), a)
    np.testing.assert_array_equal(masks.union(a, b), masks.union(b, a))
    np.testing.assert_array_equal(masks.union(a, b, c), a | b | c)
    np.testing.assert_array_equal(masks.intersect(a, b, c), a & b & c)
    np.testing.assert_array_equal(masks.subtract(a, b), a & ~b)
    np.testing.assert_array_equal(masks.subtract(a, b) | masks.intersect(a, b), a)
    np.testing.assert_array_equal(masks.invert(masks.union(a, b)), masks.intersect(~a, ~b))
    assert not masks.intersect(masks.subtract(a, b), b).any()


def test_combining_masks_of_different_sizes_is_refused():
    with pytest.raises(InvalidImageError, match="same size"):
        masks.union(np.zeros((3, 3), bool), np.zeros((3, 4), bool))


def test_mask_to_box():
    mask = np.zeros((20, 30), bool)
    assert masks.mask_to_box(mask) is None
    mask[5:9, 10:21] = True
    assert masks.mask_to_box(mask) == (10, 5, 21, 9)
    mask[:] = False
    mask[0, 29] = True
    assert masks.mask_to_box(mask) == (29, 0, 30, 1)


# ---------------------------------------------------------------- pipeline

def test_postprocess_order_and_types():
    ring = _disk(100, 100, 50, 50, 30) & ~_disk(100, 100, 50, 50, 8)
    ring[5, 5] = True  # a speck
    plain = masks.postprocess(ring)
    assert plain.dtype == bool
    np.testing.assert_array_equal(plain, ring)

    cleaned = masks.postprocess(ring, fill_holes=True, min_island=5)
    np.testing.assert_array_equal(cleaned, _disk(100, 100, 50, 50, 30))

    # invert happens before expand: a positive expand grows the background into the object
    inverted = masks.postprocess(ring, fill_holes=True, min_island=5, invert=True, expand=5)
    np.testing.assert_array_equal(inverted, masks.expand(~_disk(100, 100, 50, 50, 30), 5))
    assert inverted[50, 50 + 26] and not inverted[50, 50]

    soft = masks.postprocess(ring, fill_holes=True, min_island=5, feather=4)
    assert soft.dtype == np.float32 and 0 < soft[50, 80] < 1 and soft[50, 50] == 1.0

    shrunk = masks.postprocess(_disk(100, 100, 50, 50, 30), expand=-10)
    np.testing.assert_array_equal(shrunk, masks.shrink(_disk(100, 100, 50, 50, 30), 10))
