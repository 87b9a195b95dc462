"""Soft edges (issue 17): the alpha matte a user gets from a binary SAM mask."""
import builtins

import cv2
import numpy as np
import pytest
from PIL import Image

from sd_webui_sam import matting, render
from sd_webui_sam.errors import InvalidPromptError, SamUserError

pytest.importorskip("pymatting")

HEIGHT, WIDTH = 120, 160


def textured_background(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 120, size=(HEIGHT // 8, WIDTH // 8, 3)).astype(np.uint8)
    picture = cv2.resize(small, (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    picture[:, :, 2] += 100          # a bluish background
    return np.clip(picture + rng.integers(-8, 9, size=picture.shape), 0, 255).astype(np.uint8)


def opaque_disc(radius: float = 35.0):
    """(image, true alpha, mask): an opaque orange disc, anti-aliased, and a mask 2 px too big."""
    big = np.zeros((HEIGHT * 4, WIDTH * 4), np.float32)
    cv2.circle(big, (WIDTH * 2, HEIGHT * 2), int(radius * 4), 1.0, -1, cv2.LINE_AA)
    alpha = cv2.resize(big, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
    foreground = np.array([240, 140, 20], np.float32)
    image = alpha[..., None] * foreground + (1 - alpha[..., None]) * textured_background()
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    cv2.circle(mask, (WIDTH // 2, HEIGHT // 2), int(radius + 2), 1, -1)
    return np.round(image).astype(np.uint8), alpha, mask.astype(bool)


def distance_to_edge(mask: np.ndarray) -> np.ndarray:
    inside = mask.astype(np.uint8)
    return np.maximum(cv2.distanceTransform(inside, cv2.DIST_L2, 5), cv2.distanceTransform(1 - inside, cv2.DIST_L2, 5))


def test_opaque_object_is_opaque_inside_and_transparent_outside():
    image, truth, mask = opaque_disc()
    matte = matting.alpha_matte(image, mask, band_px=6)
    true_edge_distance = distance_to_edge(truth > 0.5)
    inside = (truth >= 1.0) & (true_edge_distance > 2)
    well_outside = (truth <= 0.0) & (true_edge_distance > 2)
    assert matte.alpha[inside].min() > 0.95
    assert matte.alpha[well_outside].mean() < 0.01
    beyond_band = ~mask & (distance_to_edge(mask) > 6 + 1)
    assert matte.alpha[beyond_band].max() == 0.0
    # The mask was 2 px too big: the matte follows the object's real edge, the mask did not.
    hard_error = np.abs(mask.astype(np.float32) - truth).sum()
    assert np.abs(matte.alpha - truth).sum() < 0.3 * hard_error


@pytest.mark.parametrize("band_px", [3, 8])
def test_alpha_and_colours_change_only_within_the_band(band_px):
    image, _, mask = opaque_disc()
    matte = matting.alpha_matte(image, mask, band_px=band_px)
    far = distance_to_edge(mask) > band_px + 1
    assert np.array_equal(matte.alpha[far], mask[far].astype(np.float32))
    assert np.array_equal(matte.foreground[far], image[far])
    assert matte.band_px == band_px
    changed = (matte.alpha != mask) | (matte.foreground != image).any(axis=-1)
    assert changed.any()
    assert distance_to_edge(mask)[changed].max() <= band_px + 1


def test_automatic_band_grows_with_the_object_within_limits():
    small = np.zeros((400, 400), bool)
    small[190:210, 190:210] = True
    large = np.zeros((400, 400), bool)
    large[20:380, 20:380] = True
    assert matting.MIN_BAND_PX <= matting.auto_band_px(small) < matting.auto_band_px(large) <= matting.MAX_BAND_PX
    assert matting.alpha_matte(np.zeros((400, 400, 3), np.uint8), large).band_px == matting.auto_band_px(large)


def test_foreground_colours_stay_in_range_and_lose_the_old_background():
    # Black hair-like strands over white: unmixing pushes estimates past 0; they must clip, not wrap.
    image = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    truth = np.zeros((HEIGHT, WIDTH), np.float32)
    truth[30:90, 40:120] = 1.0
    for column in range(20, 140, 6):
        truth[10:110, column] = np.maximum(truth[10:110, column], 0.5)
    image = np.round(image * (1 - truth[..., None])).astype(np.uint8)   # black foreground
    matte = matting.alpha_matte(image, truth > 0.5, band_px=8)
    assert matte.foreground.dtype == np.uint8
    semi = (matte.alpha > 0.2) & (matte.alpha < 0.8)
    assert semi.sum() > 50
    # In the image these pixels are grey (half white background); the object's own colour is black.
    assert image[semi].mean() > 60
    assert matte.foreground[semi].mean() < 0.5 * image[semi].mean()


def test_soft_cutout_keeps_size_and_gives_rgba():
    image, _, mask = opaque_disc()
    for source in (image, Image.fromarray(image), Image.fromarray(image).convert("L")):
        cut = matting.cutout(source, mask, alpha="soft", band_px=5)
        assert cut.mode == "RGBA" and cut.size == (WIDTH, HEIGHT)
        levels = np.unique(np.asarray(cut)[:, :, 3])
        assert len(levels) > 2               # real partial transparency, not a binary mask


def test_soft_cutout_keeps_the_sources_own_transparency():
    image, _, mask = opaque_disc()
    rgba = np.dstack([image, np.full((HEIGHT, WIDTH), 255, np.uint8)])
    rgba[:, : WIDTH // 2, 3] = 0          # the left half was already transparent
    cut = np.asarray(matting.cutout(rgba, mask, alpha="soft", band_px=5))
    assert cut[:, : WIDTH // 2, 3].max() == 0
    assert cut[HEIGHT // 2, WIDTH // 2 + 5, 3] == 255


@pytest.mark.parametrize("make_source", [lambda a: a, Image.fromarray,
                                         lambda a: np.dstack([a, np.full(a.shape[:2], 200, np.uint8)])])
def test_hard_cutout_is_byte_identical_to_the_plain_cutout(make_source):
    image, truth, mask = opaque_disc()
    for mask_or_alpha in (mask, mask.astype(np.uint8) * 255, truth):
        expected = render.cutout(make_source(image), mask_or_alpha)
        got = matting.cutout(make_source(image), mask_or_alpha)            # default: hard
        assert got.mode == expected.mode and got.tobytes() == expected.tobytes()
        assert matting.cutout(make_source(image), mask_or_alpha, alpha="hard").tobytes() == expected.tobytes()


def test_bad_options_are_refused_with_a_message():
    image, _, mask = opaque_disc()
    with pytest.raises(InvalidPromptError, match="alpha must be one of"):
        matting.cutout(image, mask, alpha="fuzzy")
    for band in (-3, "wide", float("nan"), 10_000):
        with pytest.raises(InvalidPromptError, match="band width"):
            matting.alpha_matte(image, mask, band_px=band)


def test_empty_mask_and_full_mask_come_back_unchanged():
    image, _, _ = opaque_disc()
    for mask in (np.zeros((HEIGHT, WIDTH), bool), np.ones((HEIGHT, WIDTH), bool)):
        matte = matting.alpha_matte(image, mask, band_px=4)
        assert np.array_equal(matte.alpha, mask.astype(np.float32))


def test_missing_pymatting_says_what_to_install(monkeypatch):
    real_import = builtins.__import__

    def refuse_pymatting(name, *args, **kwargs):
        if name.startswith("pymatting"):
            raise ImportError("No module named 'pymatting'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse_pymatting)
    image, _, mask = opaque_disc()
    with pytest.raises(SamUserError, match="pymatting"):
        matting.alpha_matte(image, mask, band_px=4)


def test_a_large_band_region_is_solved_smaller_with_the_same_guarantees(monkeypatch):
    image, truth, mask = opaque_disc()
    monkeypatch.setattr(matting, "MAX_SOLVE_PIXELS", 3000)    # the band's region is ~90x90 here
    matte = matting.alpha_matte(image, mask, band_px=6)
    beyond_band = distance_to_edge(mask) > 6 + 1
    assert np.array_equal(matte.alpha[beyond_band], mask[beyond_band].astype(np.float32))
    assert np.abs(matte.alpha - truth).sum() < 0.5 * np.abs(mask.astype(np.float32) - truth).sum()
