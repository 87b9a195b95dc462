"""COCO RLE: round trips, the known byte format, and agreement with pycocotools when present."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sd_webui_sam import rle
from sd_webui_sam.errors import InvalidImageError

try:
    from pycocotools import mask as coco_mask
except ImportError:  # the product never needs it; it is only an oracle here
    coco_mask = None


@st.composite
def masks(draw):
    height = draw(st.integers(0, 23))
    width = draw(st.integers(0, 23))
    density = draw(st.sampled_from([0.0, 0.05, 0.5, 0.95, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).random((height, width)) < density


def test_known_encoding():
    # Column-major: column 0 = [0, 1, 1], column 1 = [0, 0, 1] -> runs 1,2,2,1.
    mask = np.array([[0, 0], [1, 0], [1, 1]], bool)
    assert rle.encode_uncompressed(mask) == {"size": [3, 2], "counts": [1, 2, 2, 1]}
    encoded = rle.encode(mask)
    assert encoded["size"] == [3, 2]
    assert isinstance(encoded["counts"], str)
    # 1, 2, 2 as they are; from the fourth count on, the difference from two before: 1 - 2 = -1 -> 'O'.
    assert encoded["counts"] == "122O"
    json.dumps(encoded)  # plain JSON types


def test_mask_starting_with_foreground_begins_with_a_zero_run():
    mask = np.ones((2, 2), bool)
    mask[1, 1] = False
    assert rle.encode_uncompressed(mask)["counts"] == [0, 3, 1]


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (480, 641), (0, 4), (3, 0)])
def test_empty_and_full_masks_round_trip(shape):
    for fill in (False, True):
        mask = np.full(shape, fill)
        for encoded in (rle.encode(mask), rle.encode_uncompressed(mask)):
            decoded = rle.decode(encoded)
            assert decoded.shape == shape and decoded.dtype == bool
            np.testing.assert_array_equal(decoded, mask)
            assert rle.area(encoded) == int(mask.sum())


@settings(max_examples=200, deadline=None)
@given(masks())
def test_round_trip_area_and_box(mask):
    for encoded in (rle.encode(mask), rle.encode_uncompressed(mask)):
        np.testing.assert_array_equal(rle.decode(encoded), mask)
        assert rle.area(encoded) == int(mask.sum())
        ys, xs = np.nonzero(mask)
        expected = [0.0] * 4 if xs.size == 0 else [
            float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
        assert rle.to_bbox(encoded) == expected


def test_long_runs_use_multi_character_numbers():
    mask = np.zeros((1000, 1000), bool)
    mask[100:900, 300:301] = True
    mask[5, 999] = True
    encoded = rle.encode(mask)
    np.testing.assert_array_equal(rle.decode(encoded), mask)
    assert rle.decode({"size": [1000, 1000], "counts": encoded["counts"].encode()}).sum() == mask.sum()


def test_counts_string_round_trips_large_and_negative_differences():
    counts = np.array([0, 5, 1_000_000, 3, 7, 2**31, 1, 2**33 + 5, 0, 1], np.int64)
    np.testing.assert_array_equal(rle.string_to_counts(rle.counts_to_string(counts)), counts)


@pytest.mark.skipif(coco_mask is None, reason="pycocotools not installed (test oracle only)")
@settings(max_examples=150, deadline=None)
@given(masks())
def test_agrees_with_pycocotools(mask):
    if mask.size == 0:
        return
    reference = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    ours = rle.encode(mask)
    assert ours["counts"] == reference["counts"].decode("ascii")
    assert ours["size"] == list(reference["size"])
    assert rle.area(ours) == int(coco_mask.area(reference))
    assert rle.to_bbox(ours) == [float(v) for v in coco_mask.toBbox(reference)]
    np.testing.assert_array_equal(rle.decode({"size": reference["size"], "counts": reference["counts"]}), mask)


@pytest.mark.skipif(coco_mask is None, reason="pycocotools not installed (test oracle only)")
def test_agrees_with_pycocotools_on_a_large_mask():
    rng = np.random.default_rng(7)
    mask = np.zeros((513, 777), bool)
    for _ in range(40):
        y, x, r = rng.integers(0, 513), rng.integers(0, 777), rng.integers(3, 90)
        yy, xx = np.ogrid[:513, :777]
        mask ^= (yy - y) ** 2 + (xx - x) ** 2 <= r * r
    reference = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert rle.encode(mask)["counts"] == reference["counts"].decode("ascii")
    np.testing.assert_array_equal(coco_mask.decode(dict(rle.encode(mask))), mask)


def test_malformed_rles_are_refused():
    bad = [
        {"size": [2, 2], "counts": [1, 2]},           # covers 3 pixels, not 4
        {"size": [2, 2], "counts": "1"},              # covers 1
        {"size": [2, 2], "counts": "1\x7f"},          # outside the alphabet
        {"size": [2, 2], "counts": "0P"},             # ends mid-number (continuation bit set)
        {"size": [2, 2], "counts": [5, -1]},
        {"counts": "4"},
        {"size": "big", "counts": "4"},
    ]
    for case in bad:
        with pytest.raises(InvalidImageError):
            rle.decode(case)


def test_noisy_mask_with_hundreds_of_thousands_of_runs_round_trips():
    mask = np.random.default_rng(11).random((601, 599)) < 0.5
    encoded = rle.encode(mask)
    np.testing.assert_array_equal(rle.decode(encoded), mask)
    if coco_mask is not None:
        assert encoded["counts"] == coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"].decode()
