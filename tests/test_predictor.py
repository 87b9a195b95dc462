"""Predictor against segment_anything.SamPredictor with the same random weights, the
several-boxes+points rule, prompt validation and the embedding cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sd_webui_sam.devices import Placement
from sd_webui_sam.embedding_cache import EmbeddingCache
from sd_webui_sam.errors import InvalidImageError, InvalidPromptError
from sd_webui_sam.modeling import build_sam
from sd_webui_sam.predictor import Predictor, Prompts, group_objects, prompt_token_groups, resize_image, resized_shape
from tests.fixtures.mask_compare import assert_masks_match
from tools.fixtures.sam_checkpoints import TINY, VIT_B, VitShape, build_reference_sam, save_state_dict

CPU = Placement(device=torch.device("cpu"))


def config_for(shape: VitShape) -> dict:
    return {
        "encoder_embed_dim": shape.embed_dim,
        "encoder_depth": shape.depth,
        "encoder_num_heads": shape.num_heads,
        "encoder_global_attn_indexes": tuple(shape.global_attn_indexes),
    }


def load_ours(path, shape: VitShape = TINY):
    model = build_sam(config_for(shape))
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model


def test_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth shapes plus noise, so resizing and masks have structure to get wrong."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    image = np.zeros((height, width, 3), dtype=np.float64)
    image[..., 0] = 255 * (xs / max(width - 1, 1))
    image[..., 1] = 255 * ((xs - width / 2) ** 2 + (ys - height / 2) ** 2 < (min(height, width) / 3) ** 2)
    image[..., 2] = 128 + 60 * np.sin(ys / 7.0)
    image += rng.normal(0, 12, image.shape)
    return image.clip(0, 255).astype(np.uint8)


test_image.__test__ = False  # a helper, not a test


class CountingEncoder(torch.nn.Module):
    """Wraps an image encoder and counts forward calls."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.img_size = inner.img_size
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


@pytest.fixture(scope="module")
def reference_model(tiny_sam):
    return tiny_sam[1].eval()


@pytest.fixture(scope="module")
def predictor(tiny_sam):
    return Predictor(load_ours(tiny_sam[0]), CPU, EmbeddingCache(max_entries=4, max_bytes=10**9))


@pytest.fixture(scope="module")
def scenes(reference_model, predictor):
    """(H, W) -> (image, our EncodedImage, a SamPredictor with the image set); each built once."""
    from segment_anything import SamPredictor

    built = {}

    def get(height: int, width: int):
        if (height, width) not in built:
            image = test_image(height, width, seed=height)
            reference = SamPredictor(reference_model)
            reference.set_image(image)
            built[(height, width)] = (image, predictor.encode(image), reference)
        return built[(height, width)]

    return get


@pytest.fixture(scope="module", params=[(200, 300), (768, 1024)], ids=["300x200", "1024x768"])
def scene(request, scenes):
    return scenes(*request.param)


@pytest.fixture(scope="module")
def small_scene(scenes):
    return scenes(200, 300)


def assert_same_prediction(ours, logits, scores, low_res, index=0):
    """``logits``: the reference's full-resolution logits (``predict(..., return_logits=True)``)."""
    assert ours.masks.dtype == bool
    assert ours.masks.shape[1:] == logits.shape
    assert_masks_match(ours.masks[index], logits)
    np.testing.assert_allclose(ours.scores[index], scores, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours.low_res_logits[index], low_res, atol=1e-4, rtol=0)


def test_preprocessing_matches_reference_resize(scene):
    from segment_anything.utils.transforms import ResizeLongestSide

    image, encoded, reference = scene
    assert np.array_equal(resize_image(image, 1024), ResizeLongestSide(1024).apply_image(image))
    assert encoded.input_size == tuple(reference.input_size)
    assert encoded.original_size == tuple(reference.original_size)
    torch.testing.assert_close(encoded.features["image_embeddings"], reference.features, atol=1e-5, rtol=1e-5)


def frac(image, fx, fy):
    return (image.shape[1] * fx, image.shape[0] * fy)


CASES = {
    "one point": lambda im: dict(points=[frac(im, 0.5, 0.5)], labels=[1]),
    "points and negatives": lambda im: dict(points=[frac(im, 0.5, 0.5), frac(im, 0.1, 0.2), frac(im, 0.9, 0.8)], labels=[1, 0, 0]),
    "box": lambda im: dict(boxes=[(*frac(im, 0.2, 0.15), *frac(im, 0.8, 0.85))]),
    "box and points": lambda im: dict(
        points=[frac(im, 0.5, 0.5), frac(im, 0.3, 0.3)], labels=[1, 0], boxes=[(*frac(im, 0.2, 0.15), *frac(im, 0.8, 0.85))]
    ),
}


@pytest.mark.parametrize(
    "case,multimask",
    [(case, True) for case in sorted(CASES)] + [("one point", False), ("box and points", False)],
)
def test_matches_sam_predictor(scene, predictor, case, multimask):
    image, encoded, reference = scene
    prompt = CASES[case](image)
    ours = predictor.predict(encoded, Prompts(**prompt), multimask_output=multimask)
    points = np.array(prompt["points"]) if "points" in prompt else None
    labels = np.array(prompt["labels"]) if "labels" in prompt else None
    box = np.array(prompt["boxes"][0]) if "boxes" in prompt else None
    logits, scores, low_res = reference.predict(
        point_coords=points, point_labels=labels, box=box, multimask_output=multimask, return_logits=True
    )
    assert ours.masks.shape == (1, 3 if multimask else 1, *image.shape[:2])
    assert ours.object_boxes == [tuple(float(v) for v in prompt["boxes"][0]) if box is not None else None]
    assert_same_prediction(ours, logits, scores, low_res)


@pytest.mark.parametrize("size,shape", [((768, 1024), "(256, 256)"), ((200, 300), "(1, 256, 256)")])
def test_mask_refinement_matches_sam_predictor(scenes, predictor, size, shape):
    image, encoded, reference = scenes(*size)
    points = np.array([frac(image, 0.5, 0.5), frac(image, 0.2, 0.7)])
    labels = np.array([1, 1])
    first = predictor.predict(encoded, Prompts(points=points, labels=labels))
    best = int(np.argmax(first.scores[0]))
    previous = first.low_res_logits[0, best]
    mask_input = previous if shape == "(256, 256)" else previous[None]
    ours = predictor.predict(encoded, Prompts(points=points, labels=labels, mask_input=mask_input), multimask_output=False)
    logits, scores, low_res = reference.predict(
        point_coords=points, point_labels=labels, mask_input=previous[None], multimask_output=False, return_logits=True
    )
    assert_same_prediction(ours, logits, scores, low_res)


def test_several_boxes_match_batched_sam_predictor(scene, predictor):
    image, encoded, reference = scene
    boxes = np.array(
        [(*frac(image, 0.0, 0.0), *frac(image, 0.4, 0.5)), (*frac(image, 0.3, 0.2), *frac(image, 1.0, 1.0)), (*frac(image, 0.6, 0.1), *frac(image, 0.7, 0.3))]
    )
    ours = predictor.predict(encoded, Prompts(boxes=boxes))
    box_torch = reference.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float), reference.original_size)
    logits, scores, low_res = reference.predict_torch(None, None, boxes=box_torch, multimask_output=True, return_logits=True)
    assert ours.masks.shape == (3, 3, *image.shape[:2])
    assert_masks_match(ours.masks, logits.numpy())
    np.testing.assert_allclose(ours.scores, scores.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours.low_res_logits, low_res.numpy(), atol=1e-4, rtol=0)
    assert ours.object_boxes == [tuple(float(v) for v in box) for box in boxes]


# -- several boxes plus points ---------------------------------------------------------------

RULE_BOXES = np.array([[0.0, 0.0, 100.0, 100.0], [50.0, 50.0, 150.0, 150.0]])
RULE_POINTS = np.array(
    [
        [10.0, 10.0],  # 0 positive, only in box 0
        [140.0, 140.0],  # 1 negative, only in box 1
        [190.0, 10.0],  # 2 negative, in no box
        [190.0, 190.0],  # 3 positive, in no box
        [75.0, 75.0],  # 4 positive, in both boxes
        [100.0, 20.0],  # 5 negative, on box 0's right border
    ]
)
RULE_LABELS = np.array([1, 0, 0, 1, 1, 0])


def test_rule_for_several_boxes_and_points():
    objects = group_objects(RULE_POINTS, RULE_LABELS, RULE_BOXES)
    assert [None if obj.box is None else obj.box.tolist() for obj in objects] == [*RULE_BOXES.tolist(), None]
    assert [obj.point_indices.tolist() for obj in objects] == [[0, 2, 4, 5], [1, 2, 4], [2, 3]]
    used = set(np.concatenate([obj.point_indices for obj in objects]).tolist())
    assert used == set(range(len(RULE_POINTS)))  # no user point is dropped


def test_rule_without_stray_positive_points_adds_no_object():
    keep = np.array([0, 1, 2, 4])
    objects = group_objects(RULE_POINTS[keep], RULE_LABELS[keep], RULE_BOXES)
    assert len(objects) == 2
    assert [obj.point_indices.tolist() for obj in objects] == [[0, 2, 3], [1, 2, 3]]


def test_one_box_takes_every_point_like_sam_predictor():
    objects = group_objects(RULE_POINTS, RULE_LABELS, RULE_BOXES[:1])
    assert len(objects) == 1 and objects[0].point_indices.tolist() == list(range(len(RULE_POINTS)))


def test_several_boxes_and_points_decode_per_rule(predictor, small_scene):
    image, encoded, reference = small_scene
    ours = predictor.predict(encoded, Prompts(points=RULE_POINTS, labels=RULE_LABELS, boxes=RULE_BOXES), multimask_output=False)
    assert ours.masks.shape == (3, 1, 200, 300)
    assert ours.object_boxes == [tuple(RULE_BOXES[0]), tuple(RULE_BOXES[1]), None]

    # Each boxed object equals its own prompts sent alone (issue #19 item 2): box 1 has fewer
    # points than box 0, and padding it with "not a point" tokens would change its masks.
    for index, chosen in ((0, [0, 2, 4, 5]), (1, [1, 2, 4])):
        alone_logits, alone_scores, alone_low = reference.predict(
            point_coords=RULE_POINTS[chosen], point_labels=RULE_LABELS[chosen], box=RULE_BOXES[index],
            multimask_output=False, return_logits=True,
        )
        assert_same_prediction(ours, alone_logits, alone_scores, alone_low, index=index)

    # The stray positive point, with the negative point outside every box.
    extra_masks, extra_scores, extra_low = reference.predict(
        point_coords=RULE_POINTS[[2, 3]], point_labels=RULE_LABELS[[2, 3]], multimask_output=False, return_logits=True
    )
    assert_same_prediction(ours, extra_masks, extra_scores, extra_low, index=2)


def test_per_object_previous_masks(predictor, small_scene):
    image, encoded, _ = small_scene
    boxes = [(*frac(image, 0.0, 0.0), *frac(image, 0.5, 0.5)), (*frac(image, 0.5, 0.5), *frac(image, 1.0, 1.0))]
    first = predictor.predict(encoded, Prompts(boxes=boxes), multimask_output=False)
    refined = predictor.predict(encoded, Prompts(boxes=boxes, mask_input=first.low_res_logits[:, 0]), multimask_output=False)
    swapped = predictor.predict(encoded, Prompts(boxes=boxes, mask_input=first.low_res_logits[::-1, 0]), multimask_output=False)
    assert refined.masks.shape == first.masks.shape
    assert not np.allclose(refined.low_res_logits, swapped.low_res_logits)
    with pytest.raises(InvalidPromptError, match="previous masks"):
        predictor.predict(encoded, Prompts(boxes=boxes, mask_input=np.zeros((3, 256, 256), np.float32)))


# -- validation ------------------------------------------------------------------------------

INVALID = {
    "nothing": (Prompts(), "No prompt"),
    "nan point": (Prompts(points=[(float("nan"), 5.0)], labels=[1]), "finite"),
    "inf box": (Prompts(boxes=[(0.0, 0.0, float("inf"), 5.0)]), "finite"),
    "labels mismatch": (Prompts(points=[(5.0, 5.0), (6.0, 6.0)], labels=[1]), "one label per point"),
    "bad label": (Prompts(points=[(5.0, 5.0)], labels=[2]), "1 \\(positive\\) or 0"),
    "point outside": (Prompts(points=[(5.0, 250.0)], labels=[1]), "outside"),
    "negative coordinate": (Prompts(points=[(-1.0, 5.0)], labels=[1]), "outside"),
    "point not a pair": (Prompts(points=[(1.0, 2.0, 3.0)], labels=[1]), "\\(x, y\\)"),
    "box outside": (Prompts(boxes=[(400.0, 10.0, 500.0, 50.0)]), "no area"),
    "flat box": (Prompts(boxes=[(10.0, 10.0, 10.0, 50.0)]), "no area"),
    "box of three": (Prompts(boxes=[(1.0, 2.0, 3.0)]), "four numbers"),
    "bad mask shape": (Prompts(points=[(5.0, 5.0)], labels=[1], mask_input=np.zeros((64, 64))), "256x256"),
    "nan mask": (Prompts(points=[(5.0, 5.0)], labels=[1], mask_input=np.full((256, 256), np.nan)), "NaN"),
    "not numbers": (Prompts(points=[("a", "b")], labels=[1]), "numbers"),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_prompts_are_refused_with_a_clear_message(predictor, small_scene, name):
    prompts, message = INVALID[name]
    image, encoded, _ = small_scene
    with pytest.raises(InvalidPromptError, match=message):
        predictor.predict(encoded, prompts)
    with pytest.raises(InvalidPromptError, match=message):
        predictor.predict(image, prompts)  # a cache hit, then the same check


def test_edge_points_are_accepted_and_boxes_past_the_edge_are_clipped(predictor, small_scene):
    image, encoded, reference = small_scene
    ours = predictor.predict(encoded, Prompts(points=[(300.0, 200.0), (0.0, 0.0)], labels=[1, 0]))
    logits, scores, low_res = reference.predict(
        point_coords=np.array([[300.0, 200.0], [0.0, 0.0]]), point_labels=np.array([1, 0]), return_logits=True
    )
    assert_same_prediction(ours, logits, scores, low_res)

    ours = predictor.predict(encoded, Prompts(boxes=[(350.0, 250.0, 100.0, -20.0)]))  # reversed corners, past the edge
    logits, scores, low_res = reference.predict(box=np.array([100.0, 0.0, 300.0, 200.0]), return_logits=True)
    assert_same_prediction(ours, logits, scores, low_res)
    assert ours.object_boxes == [(100.0, 0.0, 300.0, 200.0)]


def test_objects_are_batched_only_with_objects_of_the_same_prompt_tokens():
    tiny_boxes = [[0.0, 180.0, 5.0, 185.0], [195.0, 0.0, 200.0, 5.0]]   # each gets only the stray negative point 2
    objects = group_objects(RULE_POINTS, RULE_LABELS, np.concatenate([RULE_BOXES, tiny_boxes]))
    shapes = [(obj.box is not None, len(obj.point_indices)) for obj in objects]
    assert shapes == [(True, 4), (True, 3), (True, 1), (True, 1), (False, 2)]
    assert prompt_token_groups(objects) == [[0], [1], [2, 3], [4]]


@pytest.mark.parametrize("shape", [(3000, 1), (1, 3000), (5000, 2)], ids=["1x3000", "3000x1", "2x5000"])
def test_a_picture_thinner_than_one_input_pixel_still_segments(predictor, shape):
    # SamPredictor's resize rule gives a 0-pixel side here (issue #19 item 1)
    assert min(resized_shape(*shape, 1024)) == 1
    image = test_image(*shape, seed=3)
    height, width = shape
    prediction = predictor.predict(image, Prompts(points=[(width / 2, height / 2)], labels=[1]))
    assert prediction.masks.shape == (1, 3, height, width)
    assert np.all(np.isfinite(prediction.scores))


@pytest.mark.parametrize(
    "image", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10, 3), np.float32), np.zeros((0, 10, 3), np.uint8)]
)
def test_non_rgb_uint8_images_are_refused(predictor, image):
    with pytest.raises(InvalidImageError):
        predictor.encode(image)


# -- embedding cache -------------------------------------------------------------------------


SMALL_INPUT_CONFIG = {**config_for(TINY), "image_size": 256}


@pytest.fixture()
def counting():
    """A tiny SAM for 256-pixel inputs whose encoder counts its calls (cache tests need no reference)."""
    torch.manual_seed(0)
    model = build_sam(SMALL_INPUT_CONFIG)
    model.image_encoder = CountingEncoder(model.image_encoder)
    return model


def test_second_prompt_on_the_same_image_does_not_run_the_encoder(counting):
    cache = EmbeddingCache(max_entries=4, max_bytes=10**9)
    predictor = Predictor(counting, CPU, cache, model_id="tiny")
    image = test_image(60, 80, seed=1)
    predictor.predict(image, Prompts(points=[(10.0, 10.0)], labels=[1]))
    predictor.predict(image.copy(), Prompts(boxes=[(0.0, 0.0, 40.0, 30.0)]))
    encoded = predictor.encode(image)
    predictor.predict(encoded, Prompts(points=[(20.0, 20.0)], labels=[0]))
    assert counting.image_encoder.calls == 1
    assert cache.stats()["hits"] == 2 and cache.stats()["misses"] == 1

    # Another predictor for the same weights (same model id) shares the embeddings.
    Predictor(counting, CPU, cache, model_id="tiny").predict(image, Prompts(points=[(5.0, 5.0)], labels=[1]))
    assert counting.image_encoder.calls == 1

    other = image.copy()
    other[0, 0, 0] ^= 1
    predictor.predict(other, Prompts(points=[(10.0, 10.0)], labels=[1]))
    assert counting.image_encoder.calls == 2


def test_other_model_or_placement_misses_the_cache(counting):
    cache = EmbeddingCache(max_entries=8, max_bytes=10**9)
    image = test_image(60, 80, seed=2)
    prompts = Prompts(points=[(10.0, 10.0)], labels=[1])
    Predictor(counting, CPU, cache, model_id="a").predict(image, prompts)
    Predictor(counting, CPU, cache, model_id="b").predict(image, prompts)
    assert counting.image_encoder.calls == 2
    other_device = Placement(device=torch.device("cpu", 0))
    other_device_predictor = Predictor(counting, other_device, cache, model_id="a")
    other_device_predictor.predict(image, prompts)
    assert counting.image_encoder.calls == 3
    keys = {Predictor(counting, placement, cache, model_id="a").cache_key(image) for placement in (
        CPU, other_device, Placement(device=torch.device("cuda"))
    )}
    assert len(keys) == 3

    encoded = other_device_predictor.encode(image)
    with pytest.raises(ValueError, match="another model or placement"):
        Predictor(counting, CPU, cache, model_id="a").predict(encoded, prompts)

    # The key's dtype is the one the encoder really computes in.
    counting.place(torch.device("cpu"), torch.bfloat16)
    reduced = Predictor(counting, Placement(device=torch.device("cpu"), dtype=torch.bfloat16), cache, model_id="a")
    assert reduced.cache_key(image) not in keys and reduced.cache_key(image).dtype == "bfloat16"
    reduced.predict(image, prompts)
    assert counting.image_encoder.calls == 4  # the bf16 key missed the fp32 embeddings


def test_models_without_an_id_do_not_share_embeddings():
    first, second = build_sam(SMALL_INPUT_CONFIG), build_sam(SMALL_INPUT_CONFIG)
    cache = EmbeddingCache()
    assert Predictor(first, CPU, cache).model_id != Predictor(second, CPU, cache).model_id
    assert Predictor(first, CPU, cache).model_id == Predictor(first, CPU, cache).model_id


def test_cache_eviction_reencodes(counting):
    cache = EmbeddingCache(max_entries=1, max_bytes=10**9)
    predictor = Predictor(counting, CPU, cache, model_id="tiny")
    first, second = test_image(40, 40, seed=4), test_image(40, 40, seed=5)
    prompts = Prompts(points=[(10.0, 10.0)], labels=[1])
    for image in (first, second, first):
        predictor.predict(image, prompts)
    assert counting.image_encoder.calls == 3
    assert cache.stats()["evictions"] == 2


# -- real ViT-B shapes -----------------------------------------------------------------------


@pytest.mark.slow
def test_real_vit_b_shapes_match_sam_predictor(tmp_path):
    from segment_anything import SamPredictor

    reference_model = build_reference_sam(VIT_B, seed=1)
    path = save_state_dict(reference_model.state_dict(), tmp_path / "sam_vit_b_random.pth")
    ours = Predictor(load_ours(path, VIT_B), CPU, EmbeddingCache())
    image = test_image(768, 1024, seed=11)
    reference = SamPredictor(reference_model)
    reference.set_image(image)
    encoded = ours.encode(image)
    torch.testing.assert_close(encoded.features["image_embeddings"], reference.features, atol=1e-4, rtol=1e-4)
    points = np.array([[460.0, 380.0], [100.0, 700.0]])
    labels = np.array([1, 0])
    prediction = ours.predict(encoded, Prompts(points=points, labels=labels))
    logits, scores, low_res = reference.predict(point_coords=points, point_labels=labels, return_logits=True)
    assert_same_prediction(prediction, logits, scores, low_res)


def test_reduced_precision_placement_runs_end_to_end_with_float32_outputs(counting):
    """The predictor converts inputs to the placement's dtype (bfloat16 stands in for CUDA fp16 on a CPU)."""
    image = test_image(60, 80, seed=6)
    prompts = Prompts(points=[(40.0, 30.0)], labels=[1], boxes=[(10.0, 10.0, 70.0, 50.0)])
    full = Predictor(counting, CPU, EmbeddingCache(), model_id="fp32").predict(image, prompts)
    half_model = build_sam(SMALL_INPUT_CONFIG)
    half_model.load_state_dict(_without_counter(counting.state_dict()), strict=True)
    half_model.to(torch.bfloat16)
    placement = Placement(device=torch.device("cpu"), dtype=torch.bfloat16)
    half = Predictor(half_model, placement, EmbeddingCache()).predict(image, Prompts(**{**prompts.__dict__, "mask_input": full.low_res_logits[0, 0]}))
    assert half.low_res_logits.dtype == np.float32 and half.scores.dtype == np.float32
    assert half.masks.shape == full.masks.shape and half.masks.dtype == bool
    unrefined = Predictor(half_model, placement, EmbeddingCache()).predict(image, prompts)
    np.testing.assert_allclose(unrefined.scores, full.scores, atol=0.05)
    agreement = (unrefined.masks == full.masks).mean()
    assert agreement > 0.9


def _without_counter(state_dict):
    return {key.replace("image_encoder.inner.", "image_encoder."): value for key, value in state_dict.items()}
