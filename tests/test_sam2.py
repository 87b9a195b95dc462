"""SAM 2 / 2.1: identification from shapes, loading of the official layout, and fidelity against
Meta's ``sam2`` package (SAM2ImagePredictor, SAM2AutomaticMaskGenerator) on shared random weights.

The oracle runs in its own venv (torch >= 2.5.1) through tools/sam2_oracle.py; it writes the
checkpoint (official layout, video weights included) that our loader then reads like a user's file.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sam2_image.families import Sam2Family, VIDEO_PREFIXES
from sam2_image.segmenter import build_sam2
from sd_webui_sam import checkpoints
from sd_webui_sam.autosam.generator import AutoSamConfig, generate_masks
from sd_webui_sam.devices import Placement
from sd_webui_sam.embedding_cache import EmbeddingCache
from sd_webui_sam.errors import UnrecognisedCheckpointError
from sd_webui_sam.model_registry import build_model, identify
from sd_webui_sam.predictor import Predictor, Prompts
from tests.fixtures.mask_compare import assert_masks_match
from tools.fixtures.sam2_checkpoints import (
    HIERA_T_TRUNK,
    TINY_TRUNK,
    VIDEO_ONLY_2_1,
    run_oracle,
    sample_image,
    write_tiny_sam2,
)

# Official trunks (sam2.1_hiera_*.yaml); the rest of each config is shared.
OFFICIAL = {
    "tiny": dict(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9), window_spec=(8, 4, 14, 7),
                 window_pos_embed_bkg_spatial_size=(7, 7)),
    "small": dict(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13), window_spec=(8, 4, 14, 7),
                  window_pos_embed_bkg_spatial_size=(7, 7)),
    "base_plus": dict(embed_dim=112, num_heads=2, stages=(2, 3, 16, 3), global_att_blocks=(12, 16, 20),
                      window_spec=(8, 4, 14, 7), window_pos_embed_bkg_spatial_size=(14, 14)),
    "large": dict(embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43), window_spec=(8, 4, 16, 8),
                  window_pos_embed_bkg_spatial_size=(7, 7)),
}

CASES = [
    dict(name="point", point_coords=[[300.0, 220.0]], point_labels=[1], multimask=True),
    dict(name="points_single", point_coords=[[300.0, 220.0], [500.0, 100.0]], point_labels=[1, 0], multimask=False),
    dict(name="box", box=[180.0, 110.0, 420.0, 330.0], multimask=False),
    dict(name="box_multimask", box=[400.0, 50.0, 620.0, 200.0], multimask=True),
    dict(name="points_box", point_coords=[[300.0, 220.0], [200.0, 300.0]], point_labels=[1, 0],
         box=[180.0, 110.0, 420.0, 330.0], multimask=True),
    dict(name="mask_point", point_coords=[[310.0, 230.0]], point_labels=[1], mask_input_from="point", multimask=False),
]


def shapes_of(model: torch.nn.Module, extra=VIDEO_ONLY_2_1) -> dict:
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    shapes.update(extra)
    return shapes


@pytest.mark.parametrize("size", sorted(OFFICIAL))
def test_official_sizes_are_identified_with_their_configs(size):
    with torch.device("meta"):
        model = build_sam2(OFFICIAL[size])
    spec = identify(shapes_of(model))
    assert spec.family == "sam2" and spec.variant == size
    assert spec.label.startswith("SAM 2.1 Hiera-")
    for key, value in OFFICIAL[size].items():
        assert spec.config[key] == value, key
    # a SAM 2.0 file has neither of 2.1's extra tensors
    old = {k: v for k, v in VIDEO_ONLY_2_1.items() if k not in ("no_obj_embed_spatial", "obj_ptr_tpos_proj.weight")}
    assert identify(shapes_of(model, old)).label.startswith("SAM 2 Hiera-")


def test_foreign_or_incomplete_sam2_files_are_refused_with_a_message():
    with torch.device("meta"):
        model = build_sam2(OFFICIAL["tiny"])
    shapes = shapes_of(model)
    shapes.pop("image_encoder.trunk.blocks.3.attn.qkv.weight")
    with pytest.raises(UnrecognisedCheckpointError, match="SAM 2 checkpoint"):
        identify(shapes)
    shapes = shapes_of(model)
    shapes["something_else.weight"] = (3,)
    assert Sam2Family().identify(shapes) is None


def test_checkpoint_with_video_weights_loads_and_ignores_them(tmp_path):
    path = write_tiny_sam2(tmp_path / "renamed.pt")
    state = checkpoints.load_state_dict(path)
    spec = identify({name: tuple(tensor.shape) for name, tensor in state.items()})
    model = build_model(spec, state)
    names = set(model.state_dict())
    assert not any(name.startswith(VIDEO_PREFIXES) for name in names)
    assert "no_mem_embed" in names and "sam_mask_decoder.conv_s0.weight" in names


# -- fidelity against the official package -------------------------------------------------------


def _ours(checkpoint):
    state = checkpoints.load_state_dict(checkpoint)
    spec = identify({name: tuple(tensor.shape) for name, tensor in state.items()})
    model = build_model(spec, state)
    return Predictor(model, Placement(torch.device("cpu")), EmbeddingCache()), spec


def _oracle_run(tmp_path_factory, trunk, cases, name, amg=None, version="2.1"):
    work = tmp_path_factory.mktemp(name)
    image = sample_image()
    np.save(work / "image.npy", image)
    job = dict(trunk=trunk, seed=0, checkpoint=str(work / "sam2.1_oracle.pt"), images=[str(work / "image.npy")],
               cases=cases, amg=amg, version=version)
    return image, work / "sam2.1_oracle.pt", run_oracle(job, work)


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    image, checkpoint, results = _oracle_run(tmp_path_factory, TINY_TRUNK, CASES, "sam2_reduced")
    predictor, spec = _ours(checkpoint)
    return image, predictor, spec, results


def _prompts(case, results, image_index=0):
    mask_input = None
    if case.get("mask_input_from"):
        # the oracle's own low-res logits (clamped as it returns them), so both get the same input
        mask_input = results[f"{image_index}_{case['mask_input_from']}_low_res"][0]
    return Prompts(points=case.get("point_coords") or (), labels=case.get("point_labels") or (),
                   boxes=[case["box"]] if case.get("box") else (), mask_input=mask_input)


def _assert_case_matches(predictor, image, case, results):
    prediction = predictor.predict(image, _prompts(case, results), multimask_output=case["multimask"])
    logits = results[f"0_{case['name']}_logits"]
    assert prediction.masks.shape[1:] == logits.shape, (prediction.masks.shape, logits.shape)
    assert_masks_match(prediction.masks[0], logits)
    np.testing.assert_allclose(prediction.scores[0], results[f"0_{case['name']}_iou"], atol=1e-4)
    np.testing.assert_allclose(prediction.low_res_logits[0], results[f"0_{case['name']}_low_res"], atol=2e-3, rtol=1e-4)
    return prediction


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_predictions_equal_sam2_image_predictor(reduced, case):
    image, predictor, spec, results = reduced
    assert spec.config["version"] == "2.1"
    prediction = _assert_case_matches(predictor, image, case, results)
    # the masks are not degenerate: random weights still give masks with both values
    assert 0 < prediction.masks[0].mean() < 1 or case["name"] != "point"


def test_sam2_0_file_equals_the_oracle(tmp_path_factory):
    cases = [CASES[0], CASES[2]]
    image, checkpoint, results = _oracle_run(tmp_path_factory, TINY_TRUNK, cases, "sam2_0", version="2")
    predictor, spec = _ours(checkpoint)
    assert spec.config["version"] == "2" and spec.label.startswith("SAM 2 Hiera")
    for case in cases:
        _assert_case_matches(predictor, image, case, results)


@pytest.mark.slow
def test_real_hiera_t_shape_equals_the_oracle(tmp_path_factory):
    cases = [CASES[0], CASES[4]]
    image, checkpoint, results = _oracle_run(tmp_path_factory, HIERA_T_TRUNK, cases, "sam2_hiera_t")
    predictor, spec = _ours(checkpoint)
    assert spec.variant == "tiny" and spec.label == "SAM 2.1 Hiera-T"
    for case in cases:
        _assert_case_matches(predictor, image, case, results)


# Random weights give masks of a few sizes; relaxed filters keep dozens of candidates in play.
AMG_SETTINGS = dict(points_per_side=6, points_per_batch=16, pred_iou_thresh=0.3, stability_score_thresh=0.3,
                    box_nms_thresh=1.0)


def test_segment_everything_equals_sam2_automatic_mask_generator(tmp_path_factory):
    image, checkpoint, results = _oracle_run(tmp_path_factory, TINY_TRUNK, [], "sam2_amg", amg=AMG_SETTINGS)
    predictor, _ = _ours(checkpoint)
    ours = generate_masks(predictor, image, AutoSamConfig(**AMG_SETTINGS))
    count = int(results["0_amg_count"])
    assert count >= 5, "the settings keep too few masks to compare"
    assert len(ours) == count
    # Keyed by the generating point and the score: float rounding (about 1e-5) may move a mask's
    # border pixels whose logit is next to the threshold, never the set of masks.
    ours = sorted(ours, key=lambda record: (record.point_coords, round(record.predicted_iou, 4)))
    order = sorted(range(count), key=lambda i: (tuple(results["0_amg_points"][i]), round(float(results["0_amg_scores"][i]), 4)))
    for record, index in zip(ours, order):
        np.testing.assert_allclose(record.point_coords, results["0_amg_points"][index], atol=1e-4)
        assert record.predicted_iou == pytest.approx(float(results["0_amg_scores"][index]), abs=1e-4)
        assert record.stability_score == pytest.approx(float(results["0_amg_stability"][index]), abs=1e-3)
        differ = np.count_nonzero(record.mask() != results["0_amg_masks"][index])
        assert differ <= max(2, record.mask().size // 10000), f"{differ} pixels differ"
