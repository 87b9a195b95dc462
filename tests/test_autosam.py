"""Segment everything: same masks as segment_anything.SamAutomaticMaskGenerator, our own code."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sd_webui_sam.autosam import generator_helpers as gen
from sd_webui_sam.autosam.generator import AutoMaskGenerator, AutoSamConfig, GenerationTimings
from sd_webui_sam.errors import SamUserError
from tools.fixtures.autosam_fixtures import (ReferenceSegmenter, local_reference_sam, reference_annotations,
                                             reference_encoder, small_reference_sam, textured_image)


@pytest.fixture(scope="module")
def small_sam():
    return small_reference_sam(seed=0)


@pytest.fixture(scope="module")
def image():
    return textured_image(64, 80, seed=1)


def assert_same_annotations(reference: list[dict], ours: list, exact_masks: bool = True) -> None:
    assert len(ours) == len(reference), (len(ours), len(reference))

    # Random weights give many exactly equal scores, so NMS may order ties differently; compare
    # as sets keyed by the generating point and the mask's box. The score only orders the rest
    # (rounding it into the key would split a score that sits on a rounding boundary); it is
    # compared to 1e-5 below.
    def reference_key(item):
        return (round(item["point_coords"][0][0], 6), round(item["point_coords"][0][1], 6), tuple(item["bbox"]),
                item["area"], item["predicted_iou"])

    def our_key(record):
        return (round(record.point_coords[0], 6), round(record.point_coords[1], 6), record.bbox, record.area,
                record.predicted_iou)

    for expected, got in zip(sorted(reference, key=reference_key), sorted(ours, key=our_key)):
        assert our_key(got)[:4] == reference_key(expected)[:4]
        assert got.crop_box == tuple(expected["crop_box"])
        assert got.predicted_iou == pytest.approx(expected["predicted_iou"], abs=1e-5)
        assert got.stability_score == pytest.approx(expected["stability_score"], abs=1e-5, nan_ok=True)
        if exact_masks:
            np.testing.assert_array_equal(got.mask(), expected["segmentation"])


def run_both(sam, image, **settings):
    reference = reference_annotations(sam, image, **settings)
    timings = GenerationTimings()
    ours = AutoMaskGenerator(ReferenceSegmenter(sam), reference_encoder(sam), AutoSamConfig(**settings)).generate(
        image, timings)
    return reference, ours, timings


def test_same_masks_as_reference_generator_without_crops(small_sam, image):
    # box_nms_thresh=1 keeps every candidate that passes the score filters, so the comparison
    # covers dozens of masks (random weights give masks that all span the image).
    settings = dict(points_per_side=5, pred_iou_thresh=0.3, stability_score_thresh=0.6, box_nms_thresh=1.0)
    reference, ours, timings = run_both(small_sam, image, **settings)
    assert len(reference) >= 10
    # the filters did discard something, before the upsampling in our case
    assert timings.after_iou < timings.candidates
    assert_same_annotations(reference, ours)


@pytest.fixture(scope="module")
def local_sam():
    return local_reference_sam(seed=0)


def test_same_masks_as_reference_generator_with_crops_nms_and_small_regions(local_sam):
    # The local test decoder gives small, image-dependent masks around each point, so the
    # crop-edge filter, NMS within and across crops and the small-region clean-up all act.
    image = textured_image(96, 128, seed=1)
    settings = dict(points_per_side=4, crop_n_layers=1, crop_n_points_downscale_factor=2,
                    crop_overlap_ratio=0.25, pred_iou_thresh=0.3, stability_score_thresh=0.6,
                    min_mask_region_area=12)
    reference, ours, timings = run_both(local_sam, image, **settings)
    assert timings.crops == 5
    assert len({tuple(a["crop_box"]) for a in reference}) >= 3, "the test should cover masks from several crops"
    assert timings.after_edge < timings.after_stability, "some masks should be cut off by a crop edge"
    assert_same_annotations(reference, ours)


def test_same_masks_as_reference_generator_default_nms_and_coco_rle(local_sam):
    from pycocotools import mask as coco_mask

    image = textured_image(80, 60, seed=2)
    settings = dict(points_per_side=6, pred_iou_thresh=0.3, stability_score_thresh=0.6)
    reference, ours, timings = run_both(local_sam, image, **settings)
    assert timings.after_edge > len(ours) >= 5, "NMS should have removed duplicates"
    assert_same_annotations(reference, ours)
    encoded = AutoMaskGenerator(ReferenceSegmenter(local_sam), reference_encoder(local_sam),
                                AutoSamConfig(output_mode="coco_rle", **settings)).generate(image)
    for binary, record in zip(ours, encoded):
        assert record.segmentation["size"] == [80, 60]
        counts = record.segmentation["counts"]
        decoded = coco_mask.decode({"size": [80, 60], "counts": counts.encode() if isinstance(counts, str) else counts})
        np.testing.assert_array_equal(decoded.astype(bool), binary.segmentation)
        np.testing.assert_array_equal(record.mask(), binary.segmentation)


# -- building blocks against the reference's own helpers ----------------------------------------


def test_point_grids_and_crop_boxes_match_reference():
    from segment_anything.utils import amg

    for per_side, layers, factor in [(32, 0, 1), (7, 2, 2), (5, 3, 1)]:
        expected = amg.build_all_layer_point_grids(per_side, layers, factor)
        ours = gen.layer_point_grids(per_side, layers, factor)
        assert len(ours) == len(expected)
        for a, b in zip(ours, expected):
            np.testing.assert_array_equal(a, b)
    for size, layers, overlap in [((768, 1024), 2, 512 / 1500), ((333, 97), 3, 0.3), ((50, 50), 1, 0.0)]:
        boxes, layer_index = amg.generate_crop_boxes(size, layers, overlap)
        ours = gen.crop_boxes(size, layers, overlap)
        assert [list(box) for box, _ in ours] == boxes
        assert [layer for _, layer in ours] == layer_index


@pytest.mark.parametrize("original", [(768, 1024), (1024, 768), (333, 500), (64, 80), (1500, 2000), (17, 900)])
def test_upsampling_matches_sam_postprocess(small_sam, original):
    from segment_anything.utils.transforms import ResizeLongestSide

    torch.manual_seed(0)
    low_res = torch.randn(3, 1, 256, 256) * 8
    input_size = ResizeLongestSide(1024).get_preprocess_shape(*original, 1024)
    assert gen.resized_input_size(*original, 1024) == tuple(input_size)
    expected = small_sam.postprocess_masks(low_res, input_size, original)[:, 0]
    ours = gen.upsample_logits(low_res[:, 0], 1024, input_size, original)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


def test_boxes_stability_and_small_regions_match_reference():
    from segment_anything.utils import amg

    rng = np.random.default_rng(3)
    masks = torch.as_tensor(rng.random((6, 40, 50)) > 0.7)
    masks[2] = False
    masks[3] = False
    masks[3, 5:9, 30:31] = True
    assert torch.equal(gen.mask_boxes(masks), amg.batched_mask_to_box(masks))
    logits = torch.as_tensor(rng.normal(size=(6, 40, 50)).astype(np.float32) * 3)
    torch.testing.assert_close(gen.stability_scores(logits, 0.0, 1.0), amg.calculate_stability_score(logits, 0.0, 1.0))
    for mask in [rng.random((30, 40)) > 0.5, rng.random((30, 40)) > 0.95, np.zeros((10, 10), bool)]:
        expected, expected_changed = amg.remove_small_regions(mask, 9, "holes")
        expected, islands_changed = amg.remove_small_regions(expected, 9, "islands")
        ours, changed = gen.remove_small_regions(mask, 9)
        np.testing.assert_array_equal(ours, expected)
        assert changed == (expected_changed or islands_changed)


def test_packed_masks_round_trip():
    rng = np.random.default_rng(0)
    for shape in [(3, 7, 9), (2, 8, 8), (1, 1, 1), (0, 4, 4)]:
        masks = torch.as_tensor(rng.random(shape) > 0.5)
        packed = gen.pack_masks(masks)
        assert packed.dtype == torch.uint8 and packed.shape[1] == -(-shape[1] * shape[2] // 8)
        assert torch.equal(gen.unpack_masks(packed, shape[1:]), masks)


# -- settings ---------------------------------------------------------------------------------


def test_config_defaults_are_the_reference_defaults():
    config = AutoSamConfig()
    assert (config.points_per_side, config.points_per_batch, config.pred_iou_thresh, config.stability_score_thresh,
            config.stability_score_offset, config.box_nms_thresh, config.crop_n_layers, config.crop_nms_thresh,
            config.crop_overlap_ratio, config.crop_n_points_downscale_factor, config.min_mask_region_area) == (
        32, 64, 0.88, 0.95, 1.0, 0.7, 0, 0.7, 512 / 1500, 1, 0)


def test_config_from_request_ignores_unknown_and_null_fields():
    config = AutoSamConfig.from_mapping({"points_per_side": 16, "pred_iou_thresh": None, "extra": 1})
    assert config.points_per_side == 16 and config.pred_iou_thresh == 0.88


@pytest.mark.parametrize("bad", [dict(points_per_side=0), dict(pred_iou_thresh=1.5), dict(output_mode="png"),
                                 dict(crop_n_layers=-1), dict(points_per_side=2, crop_n_layers=2,
                                                              crop_n_points_downscale_factor=2),
                                 # found by the OpenAPI fuzz: 0 ** -1 raised ZeroDivisionError (a 500)
                                 dict(crop_n_points_downscale_factor=0, crop_n_layers=-1),
                                 dict(crop_n_points_downscale_factor=-3, crop_n_layers=-512)])
def test_invalid_settings_are_user_errors(bad):
    with pytest.raises(SamUserError) as error:
        AutoSamConfig(**bad).validated()
    assert "Invalid AutoSAM settings" in str(error.value)


def test_engine_path_matches_reference_generator_on_the_same_checkpoint(tiny_sam, tmp_path):
    """Our loader, model code and predictor (through the Engine) against the reference generator
    on the official-layout checkpoint: the whole product path."""
    import shutil

    from sd_webui_sam.autosam.generator import generate_masks_with_engine
    from sd_webui_sam.engine import Engine
    from sd_webui_sam.settings import EngineSettings

    path, reference_sam = tiny_sam
    shutil.copy(path, tmp_path / "sam_tiny.pth")
    engine = Engine(EngineSettings(user_model_dir=tmp_path, device="cpu"))
    image = textured_image(48, 64, seed=3)
    settings = dict(points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                    stability_score_offset=0.01, box_nms_thresh=1.0)
    reference = reference_annotations(reference_sam.eval(), image, **settings)
    ours = generate_masks_with_engine(engine, "sam_tiny.pth", image, AutoSamConfig(**settings))
    assert len(reference) == 27
    assert sum(0 < a["area"] < 48 * 64 for a in reference) >= 5, "masks should be neither all empty nor all full"
    assert_same_annotations(reference, ours)


def test_benchmark_function_reports_the_split(tiny_sam):
    from tools.bench_autosam import benchmark_segment_everything, format_result

    result = benchmark_segment_everything(checkpoint=tiny_sam[0], device="cpu", size=(48, 64),
                                          config=AutoSamConfig(points_per_side=2, pred_iou_thresh=0.0,
                                                               stability_score_thresh=0.0))
    ours = result["ours"]
    assert ours["candidates"] == 12 and ours["encoder_s"] > 0 and ours["decoder_s"] > 0
    assert ours["encoder_s"] + ours["decoder_s"] + ours["postprocess_s"] <= ours["total_s"] * 1.05
    assert "SAM" in result["model"] and "encoder" in format_result(result)


def test_crop_embeddings_stay_out_of_the_shared_cache(tiny_sam, tmp_path):
    import shutil

    from sd_webui_sam.autosam.generator import generate_masks_with_engine
    from sd_webui_sam.engine import Engine
    from sd_webui_sam.settings import EngineSettings

    shutil.copy(tiny_sam[0], tmp_path / "sam_tiny.pth")
    engine = Engine(EngineSettings(user_model_dir=tmp_path, device="cpu"))
    timings = GenerationTimings()
    generate_masks_with_engine(engine, "sam_tiny.pth", textured_image(40, 56), AutoSamConfig(
        points_per_side=2, crop_n_layers=1, crop_n_points_downscale_factor=2, pred_iou_thresh=0.0,
        stability_score_thresh=0.0), timings=timings)
    assert timings.crops == 5
    assert len(engine.embeddings) == 1, "only the whole image's embedding is worth keeping"


def test_out_of_memory_in_the_decoder_halves_the_batch(local_sam):
    class Flaky(ReferenceSegmenter):
        sizes = []

        def decode(self, features, *, point_coords, **kwargs):
            self.sizes.append(len(point_coords))
            if len(point_coords) > 10:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().decode(features, point_coords=point_coords, **kwargs)

    image = textured_image(40, 50, seed=5)
    settings = dict(points_per_side=6, pred_iou_thresh=0.3, stability_score_thresh=0.6, decode_batch_size=64)
    plain = AutoMaskGenerator(ReferenceSegmenter(local_sam), reference_encoder(local_sam), AutoSamConfig(**settings))
    flaky = Flaky(local_sam)
    halved = AutoMaskGenerator(flaky, reference_encoder(local_sam), AutoSamConfig(**settings))
    expected, got = plain.generate(image), halved.generate(image)
    assert flaky.sizes[0] == 36 and max(flaky.sizes[1:]) <= 18 and min(flaky.sizes) <= 10
    assert [r.bbox for r in got] == [r.bbox for r in expected]
