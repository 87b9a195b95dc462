"""HQ-SAM (ViT-B/L/H-shaped and the TinyViT Light variant) against the reference package.

The reference ``segment_anything_hq`` builds each model with random weights; its state dict
is saved in the official layout, loaded through our checkpoint loading, identification and
strict build, and both models then see the same image and prompts (fp32, CPU).
"""
from __future__ import annotations

import itertools

import pytest
import torch

from sam_hq.segmenter import HQ_MULTIMASK, HQ_TOKEN_ONLY, HQSamSegmenter
from sd_webui_sam import checkpoints, model_registry
from sd_webui_sam.devices import Placement
from sd_webui_sam.embedding_cache import EmbeddingCache
from sd_webui_sam.errors import InvalidPromptError
from sd_webui_sam.predictor import Predictor, Prompts
from tools.fixtures.hq_checkpoints import (
    HQ_VIT_B_REDUCED,
    HQ_VIT_H_REDUCED,
    HQ_VIT_L_REDUCED,
    PROMPT_KINDS,
    assert_same_masks,
    assert_same_prediction,
    build_reference_hq_sam,
    build_reference_hq_tiny,
    predictor_prompts,
    prompt_tensors,
    reference_decode,
    reference_predict,
    reference_predictor as make_reference_predictor,
    sample_image,
    save_state_dict,
)

MODELS = {
    # Real widths and head sizes of ViT-B / ViT-L / ViT-H (so the fusion layer compresses
    # 768 / 1024 / 1280 channels), three blocks with the early features taken from the first
    # of two global blocks; a 256 input keeps the CPU time modest.
    "vit_b_shaped": lambda: build_reference_hq_sam(HQ_VIT_B_REDUCED, seed=2),
    "vit_l_shaped": lambda: build_reference_hq_sam(HQ_VIT_L_REDUCED, seed=3),
    "vit_h_shaped": lambda: build_reference_hq_sam(HQ_VIT_H_REDUCED, seed=4),
    # HQ-SAM Light: the real TinyViT-5M encoder at the real 1024 input (64x64 embeddings,
    # 256x256 low-res masks).
    "vit_tiny": lambda: build_reference_hq_tiny(seed=5),
}

ALL_CASES = tuple(itertools.product(PROMPT_KINDS, (False, True), (False, True)))
#: At the real input size the HQ head convolves 256x256 maps per prompt, which is slow on a
#: CPU; there a subset that still meets every prompt kind and every multimask x
#: hq-token-only combination is run. The small-input models run the whole matrix.
FULL_SIZE_CASES = (
    ("point", True, False),
    ("box", False, True),
    ("box_point", True, True),
    ("mask_refine", False, False),
    ("boxes_batch", True, False),
)


def _cases(pair):
    return FULL_SIZE_CASES if pair.image_size >= 1024 else ALL_CASES


def _case_name(kind, multimask_output, hq_token_only):
    return f"{kind}/{'multi' if multimask_output else 'single'}/{'hq_only' if hq_token_only else 'fused'}"


class Pair:
    """Reference and our model with the same weights, each behind its predictor, one image encoded."""

    def __init__(self, reference, reference_predictor, ours, predictor, image):
        self.reference = reference
        self.reference_predictor = reference_predictor
        self.ours = ours
        self.predictor = predictor
        self.image = image
        self.image_size = ours.image_size
        self.reference_embeddings = reference_predictor.features
        self.reference_interm = reference_predictor.interm_features
        self.encoded = predictor.encode(image)
        self.features = self.encoded.features


@pytest.fixture(scope="module", params=list(MODELS))
def pair(request, tmp_path_factory):
    reference = MODELS[request.param]()
    path = save_state_dict(reference.state_dict(), tmp_path_factory.mktemp("hq") / f"{request.param}.pth")
    state_dict = checkpoints.load_state_dict(path)
    spec = model_registry.identify({name: tuple(tensor.shape) for name, tensor in state_dict.items()})
    assert spec.family == "sam_hq"
    ours = model_registry.build_model(spec, state_dict)
    assert isinstance(ours, HQSamSegmenter)
    assert ours.image_size == reference.image_encoder.img_size
    image = sample_image(seed=len(request.param))
    reference_predictor = make_reference_predictor(reference, "segment_anything_hq")
    reference_predictor.set_image(image)
    predictor = Predictor(ours, Placement(torch.device("cpu")), EmbeddingCache())
    yield Pair(reference, reference_predictor, ours, predictor, image)


def test_encoder_returns_final_and_early_features_like_the_reference(pair):
    embeddings = pair.features["image_embeddings"]
    early = pair.features["interm_embeddings"]
    assert embeddings.shape == pair.reference_embeddings.shape
    assert (embeddings - pair.reference_embeddings).abs().max().item() <= 1e-4
    # HQ-SAM fuses the first global-attention block's output (the Light variant: the first
    # attention stage's), not a later one.
    reference_early = pair.reference_interm[0]
    assert early.shape == reference_early.shape
    assert (early - reference_early).abs().max().item() <= 1e-4


def _decode_both(pair, kind, multimask_output, hq_token_only):
    previous = None
    if kind == "mask_refine":
        first = prompt_tensors("point", pair.image_size)
        previous, _ = reference_decode(
            pair.reference, pair.reference_embeddings, pair.reference_interm, first, False, hq_token_only
        )
    prompts = prompt_tensors(kind, pair.image_size, previous)
    reference_logits, reference_scores = reference_decode(
        pair.reference, pair.reference_embeddings, pair.reference_interm, prompts, multimask_output, hq_token_only
    )
    with torch.no_grad():
        logits, scores = pair.ours.decode(
            pair.features,
            **prompts,
            multimask_output=multimask_output,
            options={HQ_TOKEN_ONLY: hq_token_only, HQ_MULTIMASK: "best"},
        )
    return logits, scores, reference_logits, reference_scores


def test_decoder_matches_reference(pair):
    """Prompt encoder + HQ decoder against the reference for every prompt kind, single and
    multimask output ("best" rule), fused and HQ-token-only."""
    failures = []
    for kind, multimask_output, hq_token_only in _cases(pair):
        logits, scores, reference_logits, reference_scores = _decode_both(pair, kind, multimask_output, hq_token_only)
        try:
            assert_same_masks(logits, reference_logits, pair.reference, pair.image_size)
            assert scores.shape == reference_scores.shape
            assert (scores - reference_scores).abs().max().item() <= 1e-4
        except AssertionError as error:
            failures.append(f"{_case_name(kind, multimask_output, hq_token_only)}: {error}")
    assert not failures, "\n".join(failures)


def test_candidates_mode_fuses_each_sam_candidate_with_the_hq_mask(pair):
    """The default multimask output: SAM's three candidates, each + the HQ mask, with their scores."""
    # Several boxes at once where that is cheap: the HQ mask must pair with its own prompt.
    kind = "point" if pair.image_size == 1024 else "boxes_batch"
    prompts = prompt_tensors(kind, pair.image_size)
    reference = pair.reference
    points = (prompts["point_coords"], prompts["point_labels"]) if prompts["point_coords"] is not None else None
    with torch.no_grad():
        sparse, dense = reference.prompt_encoder(points=points, boxes=prompts["boxes"], masks=None)
        decoder = reference.mask_decoder
        early = pair.reference_interm[0].permute(0, 3, 1, 2)
        hq_features = decoder.embedding_encoder(pair.reference_embeddings) + decoder.compress_vit_feat(early)
        all_masks, all_scores = decoder.predict_masks(
            pair.reference_embeddings, reference.prompt_encoder.get_dense_pe(), sparse, dense, hq_features
        )
        expected = all_masks[:, 1:4] + all_masks[:, 4:5]
        logits, scores = pair.ours.decode(pair.features, **prompts, multimask_output=True)
    assert logits.shape[1] == 3
    assert_same_masks(logits, expected, reference, pair.image_size)
    assert (scores - all_scores[:, 1:4]).abs().max().item() <= 1e-4
    # The three candidates are different masks, not one mask repeated.
    assert not torch.equal(logits[:, 0] > 0, logits[:, 1] > 0) or not torch.equal(logits[:, 1] > 0, logits[:, 2] > 0)


def test_decode_without_precomputed_hq_features_gives_the_same_result(pair):
    prompts = prompt_tensors("box_point", pair.image_size)
    features = {key: value for key, value in pair.features.items() if key != "hq_features"}
    with torch.no_grad():
        expected = pair.ours.decode(pair.features, **prompts, multimask_output=False)
        again = pair.ours.decode(features, **prompts, multimask_output=False)
    assert torch.allclose(expected[0], again[0], atol=1e-5)


def test_unknown_multimask_mode_is_a_user_error(pair):
    prompts = prompt_tensors("point", pair.image_size)
    with pytest.raises(InvalidPromptError, match="candidates"):
        pair.ours.decode(pair.features, **prompts, multimask_output=True, options={HQ_MULTIMASK: "all"})


def test_predictor_matches_reference_predictor(pair):
    """Our Predictor with the HQ family against segment_anything_hq.SamPredictor: image pixels
    in, masks at the image size out, with the reference's multimask rule ("best")."""
    height, width = pair.image.shape[:2]
    failures = []
    for kind, multimask_output, hq_token_only in _cases(pair):
        previous = None
        if kind == "mask_refine":
            _, first = predictor_prompts("point", height, width)
            previous = reference_predict(pair.reference_predictor, "point", first, False, hq_token_only=hq_token_only)[2][0]
        ours_kwargs, reference_kwargs = predictor_prompts(kind, height, width, previous)
        expected = reference_predict(
            pair.reference_predictor, kind, reference_kwargs, multimask_output, hq_token_only=hq_token_only
        )
        prediction = pair.predictor.predict(
            pair.encoded,
            Prompts(**ours_kwargs),
            multimask_output=multimask_output,
            options={HQ_TOKEN_ONLY: hq_token_only, HQ_MULTIMASK: "best"},
        )
        try:
            assert_same_prediction(prediction, expected)
            assert prediction.masks.shape[-2:] == (height, width)
        except AssertionError as error:
            failures.append(f"{_case_name(kind, multimask_output, hq_token_only)}: {error}")
    assert not failures, "\n".join(failures)


def test_predictor_default_offers_three_fused_candidates(pair):
    height, width = pair.image.shape[:2]
    ours_kwargs, _ = predictor_prompts("point", height, width)
    prediction = pair.predictor.predict(pair.encoded, Prompts(**ours_kwargs))
    assert prediction.masks.shape == (1, 3, height, width)
    assert prediction.scores.shape == (1, 3)


def test_encoding_is_cached_with_the_hq_features(pair):
    again = pair.predictor.encode(pair.image)
    assert again is pair.encoded
    assert set(again.features) >= {"image_embeddings", "interm_embeddings", "hq_features"}


def test_engine_loads_hq_checkpoint_by_contents_and_passes_options(tmp_path):
    """Through the Engine (what the panel, API and batch call): a renamed HQ-SAM file is listed
    with its family label, and the HQ options reach the decoder with no special case outside
    the family module."""
    from sd_webui_sam.engine import Engine
    from sd_webui_sam.settings import EngineSettings

    reference = build_reference_hq_sam(HQ_VIT_B_REDUCED, seed=9)
    save_state_dict(reference.state_dict(), tmp_path / "my_model.pth")
    engine = Engine(EngineSettings(user_model_dir=tmp_path, device="cpu"))
    assert engine.list_models() == ["my_model.pth"]
    assert engine.model_label("my_model.pth").startswith("HQ-SAM ViT (custom")
    image = sample_image(seed=9)
    height, width = image.shape[:2]
    ours_kwargs, reference_kwargs = predictor_prompts("box_point", height, width)
    oracle = make_reference_predictor(reference, "segment_anything_hq")
    oracle.set_image(image)
    for hq_token_only in (False, True):
        prediction = engine.segment(
            "my_model.pth",
            image,
            Prompts(**ours_kwargs),
            multimask_output=True,
            options={HQ_TOKEN_ONLY: hq_token_only, HQ_MULTIMASK: "best"},
        )
        expected = reference_predict(oracle, "box_point", reference_kwargs, True, hq_token_only=hq_token_only)
        assert_same_prediction(prediction, expected)
    default = engine.segment("my_model.pth", image, Prompts(**ours_kwargs))
    assert default.masks.shape == (1, 3, height, width)
