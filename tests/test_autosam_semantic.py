"""EditAnything maps, SAM-refined semantic segmentation, masks by category, host segmenters."""
from __future__ import annotations

import functools
import os
import types

import numpy as np
import pytest

from sd_webui_sam.autosam import editanything, segmenters, semantic
from sd_webui_sam.autosam.semantic import UNLABELLED, dataset
from sd_webui_sam.compat.controlnet_preprocessors import find_preprocessor
from sd_webui_sam.errors import SamUserError

ADE = dataset("ade20k")
COCO = dataset("coco")


def disc(shape, cx, cy, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 < r * r


# -- EditAnything ------------------------------------------------------------------------------


def test_random_segmentation_is_seeded_and_encodes_ids_in_red_and_green():
    image = np.full((40, 50, 3), 100, np.uint8)
    big = np.zeros((40, 50), bool)
    big[:, :30] = True
    small = disc((40, 50), 10, 10, 5)
    first = editanything.random_segmentation(image, [small, big], seed=7)
    again = editanything.random_segmentation(image, [small, big], seed=7)
    other = editanything.random_segmentation(image, [small, big], seed=8)
    np.testing.assert_array_equal(first.colour_map, again.colour_map)
    assert not np.array_equal(first.colour_map, other.colour_map)
    # larger first: the big region is id 1, the small disc painted over it is id 2
    assert first.id_map[20, 25] == 1 and first.id_map[10, 10] == 2 and first.id_map[0, 45] == 0
    np.testing.assert_array_equal(first.control_map[..., 0], first.id_map % 256)
    np.testing.assert_array_equal(first.control_map[..., 1], first.id_map // 256)
    assert (first.control_map[..., 2] == 0).all()
    assert (first.colour_map[0, 45] == 0).all()
    expected_blend = np.rint(image[10, 10] * 0.5 + first.colour_map[10, 10] * 0.5)
    np.testing.assert_array_equal(first.blend[10, 10], expected_blend)


def test_control_map_carries_ids_beyond_255():
    masks = [np.zeros((2, 300), bool) for _ in range(300)]
    for index, mask in enumerate(masks):
        mask[:, index] = True
        mask[0, :] = index == 0  # distinct areas keep the order known: mask 0 is the largest
    control = editanything.random_segmentation(np.zeros((2, 300, 3), np.uint8), masks).control_map
    ids = control[..., 0].astype(int) + 256 * control[..., 1].astype(int)
    assert ids.max() == 300 and len(np.unique(ids[1])) == 300


# -- class lists and palettes ------------------------------------------------------------------


def test_class_lists_match_the_reference_ids():
    assert len(ADE.class_names) == 150 and len(COCO.class_names) == 133
    assert ADE.short_names[7] == "bed" and ADE.short_names[12] == "person"
    assert COCO.short_names[59] == "bed" and COCO.short_names[0] == "person"
    assert ADE.palette.shape == (150, 3) and COCO.palette.shape == (133, 3)
    assert tuple(ADE.palette[0]) == (120, 120, 120) and tuple(COCO.palette[0]) == (220, 20, 60)


def test_uploaded_colour_map_round_trips_to_class_ids_despite_noise():
    rng = np.random.default_rng(0)
    class_map = rng.integers(0, 133, size=(30, 40))
    colours = semantic.colourise(class_map, COCO).astype(int)
    noisy = np.clip(colours + rng.integers(-4, 5, size=colours.shape), 0, 255).astype(np.uint8)
    recovered = semantic.class_map_from_colours(noisy, COCO)
    np.testing.assert_array_equal(recovered, class_map)
    odd = np.zeros((2, 2, 3), np.uint8)
    odd[0, 0] = (255, 0, 255)  # far from every COCO colour
    assert semantic.class_map_from_colours(odd, COCO)[0, 0] == UNLABELLED


# -- SAM refinement ----------------------------------------------------------------------------


def test_majority_vote_refinement_snaps_classes_to_segments():
    shape = (60, 80)
    truth_disc = disc(shape, 40, 30, 15)
    class_map = np.full(shape, 3)            # floor
    class_map[truth_disc] = 7                # bed
    # the semantic model bled: a ring of bed outside the disc, a bite of floor inside it
    class_map[disc(shape, 40, 30, 18) & ~truth_disc] = 7
    class_map[25:30, 30:36] = 3
    class_map[0:5, 0:5] = 12                 # a few pixels of person in the background
    sam_background = ~truth_disc
    masks = [truth_disc, sam_background]
    refined = semantic.refine_semantic_map(class_map, masks)
    assert (refined[truth_disc] == 7).all()
    assert (refined[~truth_disc] == 3).all()
    # smaller masks win over larger ones, whatever order they come in
    inner = disc(shape, 40, 30, 4)
    class_map2 = class_map.copy()
    class_map2[inner] = 12
    refined2 = semantic.refine_semantic_map(class_map2, [np.ones(shape, bool), inner])
    assert (refined2[inner] == 12).all() and (refined2[~inner] == 3).all()


def test_refined_result_is_at_image_resolution_with_blends():
    image = np.zeros((60, 80, 3), np.uint8)
    small_map = np.zeros((30, 40), np.int32)
    small_map[:, 20:] = 12
    masks = [np.ones((60, 80), bool)]
    masks[0][:, 40:] = False
    result = semantic.sam_refined_segmentation(image, small_map, masks, ADE)
    assert result.before.shape == result.after.shape == (60, 80)
    assert (result.after[:, :40] == 0).all() and (result.after[:, 40:] == 12).all()
    assert [a.shape for a in result.gallery()] == [(60, 80, 3)] * 4
    np.testing.assert_array_equal(result.after_colour[0, 50], ADE.palette[12])


# -- mask by category --------------------------------------------------------------------------


@pytest.mark.parametrize("selection, expected", [
    ("bed+person", [7, 12]), ("7+12", [7, 12]), (["Bed", 12], [7, 12]), ("7: bed", [7]),
    ("individual", [12]), ("bed + bed", [7]), (7, [7]),
])
def test_categories_by_name_synonym_or_id(selection, expected):
    assert semantic.parse_categories(selection, ADE) == expected


def test_coco_categories_use_coco_ids():
    assert semantic.parse_categories("bed+person", COCO) == [59, 0]
    assert semantic.parse_categories("59+0", COCO) == [59, 0]


@pytest.mark.parametrize("selection", ["", "bedd", "150", "7+x"])
def test_bad_categories_are_explained(selection):
    with pytest.raises(SamUserError) as error:
        semantic.parse_categories(selection, ADE)
    assert "class" in str(error.value).lower()


def test_category_mask_at_original_resolution():
    class_map = np.zeros((30, 40), np.int32)
    class_map[:15] = 7
    class_map[15:, :20] = 12
    mask = semantic.category_mask(class_map, "bed+person", ADE, size=(60, 80))
    assert mask.shape == (60, 80) and mask.dtype == bool
    assert mask[:30].all() and mask[30:, :40].all() and not mask[30:, 40:].any()


# -- host segmenters ---------------------------------------------------------------------------


def host(modules):
    """The WebUI's preprocessor finder, over these loaded modules."""
    return functools.partial(find_preprocessor, modules=modules)


def fake_forge_modules(calls):
    def preprocessor(image, resolution=512, **_):
        calls.append((image.shape, resolution))
        out = np.zeros_like(image)
        out[:, : image.shape[1] // 2] = ADE.palette[7]
        out[:, image.shape[1] // 2:] = ADE.palette[12]
        return out

    shared = types.SimpleNamespace(supported_preprocessors={"seg_ofade20k": preprocessor})
    return {"modules_forge.shared": shared}


def test_forge_preprocessor_is_found_and_its_colours_become_class_ids():
    calls = []
    modules = fake_forge_modules(calls)
    found = segmenters.discover_segmenters(host(modules))
    assert list(found) == ["seg_ofade20k"]
    class_map = found["seg_ofade20k"].segment(np.zeros((20, 30, 3), np.uint8), 384)
    assert calls == [((20, 30, 3), 384)]
    assert (class_map[:, :15] == 7).all() and (class_map[:, 15:] == 12).all()


def test_legacy_controlnet_table_with_bgr_output_and_tuple_result():
    def oneformer_coco(image, res=512, **_):
        out = np.zeros_like(image)
        out[...] = COCO.palette[59][::-1]          # drawn in BGR
        return out, True

    modules = {"scripts.global_state": types.SimpleNamespace(cn_preprocessor_modules={"oneformer_coco": oneformer_coco})}
    segmenter = segmenters.get_segmenter("seg_ofcoco", host(modules))
    assert segmenter.dataset == "coco"
    assert (segmenter.segment(np.zeros((8, 8, 3), np.uint8), 512) == 59).all()


def test_no_segmenter_says_what_to_do_and_creates_no_links(tmp_path):
    before = set(os.listdir(tmp_path))
    with pytest.raises(segmenters.NoSegmenterError) as error:
        segmenters.get_segmenter("seg_ufade20k", host({}))
    assert "ControlNet" in str(error.value) and "upload" in str(error.value)
    assert set(os.listdir(tmp_path)) == before
    with pytest.raises(segmenters.NoSegmenterError) as error:
        segmenters.get_segmenter("seg_ufade20k", host(fake_forge_modules([])))
    assert "seg_ofade20k" in str(error.value)


def test_failing_preprocessor_becomes_a_user_error():
    def broken(image, resolution=512, **_):
        raise RuntimeError("annotator weights missing")

    modules = {"modules_forge.shared": types.SimpleNamespace(supported_preprocessors={"seg_ufade20k": broken})}
    with pytest.raises(SamUserError, match="annotator weights missing"):
        segmenters.get_segmenter("seg_ufade20k", host(modules)).segment(np.zeros((4, 4, 3), np.uint8), 64)


def test_uploaded_map_segmenter_and_pixel_perfect():
    colour = semantic.colourise(np.full((5, 5), 59), COCO)
    assert (segmenters.UploadedMapSegmenter(colour, "coco").segment(np.zeros((5, 5, 3), np.uint8), 0) == 59).all()
    assert segmenters.pixel_perfect_resolution((512, 768), (1024, 1536), 1) == 1024
    assert segmenters.pixel_perfect_resolution((512, 768), (512, 1536), 2) == 512
    with pytest.raises(SamUserError):
        segmenters.pixel_perfect_resolution((512, 768), (0, 0), 1)
