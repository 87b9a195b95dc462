"""MobileSAM (TinyViT-5M + SAM's prompt encoder and decoder) against the reference package."""
from __future__ import annotations

import copy

import pytest
import torch

from sd_webui_sam import checkpoints, model_registry
from sd_webui_sam.devices import Placement
from sd_webui_sam.embedding_cache import EmbeddingCache
from sd_webui_sam.predictor import Predictor, Prompts
from tools.fixtures.hq_checkpoints import (
    PROMPT_KINDS,
    assert_same_masks,
    assert_same_prediction,
    build_reference_mobile_sam,
    predictor_prompts,
    prompt_tensors,
    reference_decode,
    reference_predict,
    reference_predictor,
    sample_image,
    save_state_dict,
)


@pytest.fixture(scope="module")
def mobile(tmp_path_factory):
    reference = build_reference_mobile_sam(seed=11)
    path = save_state_dict(reference.state_dict(), tmp_path_factory.mktemp("mobile") / "mobile_sam.pt")
    state_dict = checkpoints.load_state_dict(path)
    spec = model_registry.identify({name: tuple(tensor.shape) for name, tensor in state_dict.items()})
    assert (spec.family, spec.variant, spec.label) == ("mobile_sam", "tiny_vit", "MobileSAM")
    ours = model_registry.build_model(spec, state_dict)
    image = sample_image(seed=3)
    oracle = reference_predictor(reference, "mobile_sam")
    oracle.set_image(image)
    predictor = Predictor(ours, Placement(torch.device("cpu")), EmbeddingCache())
    encoded = predictor.encode(image)
    return reference, ours, oracle.features, encoded.features, (oracle, predictor, encoded, image)


def test_encoder_matches_reference(mobile):
    _, ours, reference_embeddings, features, _ = mobile
    assert ours.image_size == 1024
    assert features["image_embeddings"].shape == (1, 256, 64, 64)
    assert (features["image_embeddings"] - reference_embeddings).abs().max().item() <= 1e-4


def test_batch_norm_statistics_are_loaded_and_used(mobile):
    """The fixture perturbs running statistics; matching outputs prove they are the loaded ones."""
    reference, ours, _, _, _ = mobile
    ours_bn = ours.image_encoder.layers[0].blocks[0].conv1.bn
    reference_bn = reference.image_encoder.layers[0].blocks[0].conv1.bn
    assert torch.equal(ours_bn.running_var, reference_bn.running_var)
    assert not torch.allclose(ours_bn.running_var, torch.ones_like(ours_bn.running_var))
    assert not ours.training


# The whole predictor test below runs every kind x multimask pair; the decoder alone is
# checked once per prompt kind, alternating single and multimask output.
@pytest.mark.parametrize(
    "kind,multimask_output", [(kind, index % 2 == 0) for index, kind in enumerate(PROMPT_KINDS)]
)
def test_decoder_matches_reference(mobile, kind, multimask_output):
    reference, ours, reference_embeddings, features, _ = mobile
    previous = None
    if kind == "mask_refine":
        previous, _ = reference_decode(reference, reference_embeddings, None, prompt_tensors("point", 1024), False)
    prompts = prompt_tensors(kind, 1024, previous)
    reference_logits, reference_scores = reference_decode(reference, reference_embeddings, None, prompts, multimask_output)
    with torch.no_grad():
        # HQ options are ignored by families that do not have them.
        logits, scores = ours.decode(
            features, **prompts, multimask_output=multimask_output, options={"hq_token_only": True}
        )
    assert logits.shape[1] == (3 if multimask_output else 1)
    assert_same_masks(logits, reference_logits, reference, 1024)
    assert (scores - reference_scores).abs().max().item() <= 1e-4


def test_attention_follows_dtype_moves(mobile):
    """The attention-bias table is gathered per call (the reference caches it when entering
    eval mode), so a converted model has no stale float32 copy."""
    _, ours, _, _, _ = mobile
    block = copy.deepcopy(ours.image_encoder.layers[1].blocks[0]).to(torch.float64)
    tokens = torch.randn(2, 49, block.attn.qkv.in_features, dtype=torch.float64)
    with torch.no_grad():
        assert block.attn(tokens).dtype == torch.float64


@pytest.mark.parametrize("multimask_output", [True, False], ids=["multi", "single"])
@pytest.mark.parametrize("kind", PROMPT_KINDS)
def test_predictor_matches_reference_predictor(mobile, kind, multimask_output):
    """Our Predictor with MobileSAM against mobile_sam.SamPredictor, image pixels to masks."""
    _, _, _, _, (oracle, predictor, encoded, image) = mobile
    height, width = image.shape[:2]
    previous = None
    if kind == "mask_refine":
        _, first = predictor_prompts("point", height, width)
        previous = reference_predict(oracle, "point", first, False)[2][0]
    ours_kwargs, reference_kwargs = predictor_prompts(kind, height, width, previous)
    expected = reference_predict(oracle, kind, reference_kwargs, multimask_output)
    prediction = predictor.predict(encoded, Prompts(**ours_kwargs), multimask_output=multimask_output)
    assert_same_prediction(prediction, expected)
