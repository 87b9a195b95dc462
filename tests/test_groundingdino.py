"""local_groundingdino: equivalence with groundingdino-py, offline loading, tokenizer, detections, store."""
from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from local_groundingdino.checkpoint import build_model, canonical_state_dict, identify_checkpoint
from local_groundingdino.detector import Detection, detection_size, load_detector, postprocess
from local_groundingdino.model import GroundingDino, GroundingDinoShape, GroundingOutput
from local_groundingdino.swin import SwinShape
from local_groundingdino.tokenizer import (
    BUNDLED_VOCAB, MAX_TEXT_LEN, WordPieceTokenizer, caption_text, split_caption, tokenize_caption,
)
from sd_webui_sam.devices import Placement
from sd_webui_sam.errors import InvalidPromptError, ModelNotFoundError, SamUserError, UnrecognisedCheckpointError
from tools.fixtures import gdino_checkpoints as fixtures

CPU = Placement(device=torch.device("cpu"))
NUM_QUERIES = 30
#: Encoder/decoder depth of the equivalence models: the real widths, fewer repeats (the suite must stay fast).
LAYERS = 3
LONG_CAPTION = ", ".join(["red shirt", "blue car", "small dog"] * 36)   # 108 phrases, > 256 tokens
CAPTIONS = ["Hand, FACE", "red cat . dog ? blue shirt, the open window", LONG_CAPTION]


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    return fixtures.write_text_encoder_dir(tmp_path_factory.mktemp("tiny_bert"))


def _pair(tmp_path_factory, text_dir, variant, stage3_depth=None):
    pytest.importorskip("groundingdino")
    reference = fixtures.build_reference_gdino(variant, text_dir, seed=3, num_queries=NUM_QUERIES, stage3_depth=stage3_depth, layers=LAYERS)
    path = fixtures.save_checkpoint(reference, tmp_path_factory.mktemp("gdino") / f"tiny_{variant}.pth")
    detector = load_detector(path, CPU, tokenizer_dir=text_dir, short_side=128, max_side=200)
    return reference, detector


@pytest.fixture(scope="module")
def swin_t_pair(tmp_path_factory, text_dir):
    return _pair(tmp_path_factory, text_dir, "swin_t")


@pytest.fixture(scope="module")
def swin_b_pair(tmp_path_factory, text_dir):
    return _pair(tmp_path_factory, text_dir, "swin_b", stage3_depth=2)


def _image(seed=0, height=150, width=210):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _assert_equivalent(reference, detector, caption, image):
    tokens, ours = detector.run(image, caption)
    pixels = detector._pixels(image)
    text = caption_text(tokens.phrases)
    assert list(reference.tokenizer(text)["input_ids"]) == list(tokens.input_ids)
    with torch.no_grad():
        expected = reference(pixels, captions=[text])
    count = ours.logits.shape[-1]
    assert count == min(len(tokens.input_ids), MAX_TEXT_LEN)
    assert torch.isneginf(expected["pred_logits"][..., count:]).all()
    torch.testing.assert_close(ours.logits, expected["pred_logits"][..., :count], atol=1e-4, rtol=0)
    torch.testing.assert_close(ours.boxes, expected["pred_boxes"], atol=1e-5, rtol=0)

    # The same boxes come out of the user-facing call: the reference's rule (best token > threshold).
    probabilities = expected["pred_logits"][0].sigmoid()
    # Halfway between two distinct scores near the median (random weights saturate many at 1.0).
    distinct = probabilities.max(-1)[0].unique()
    middle = len(distinct) // 2
    threshold = float((distinct[middle - 1] + distinct[middle]) / 2) if len(distinct) > 1 else float(distinct[0]) / 2
    height, width = image.shape[:2]
    detections = postprocess(tokens, ours, width, height, threshold, 0.0, None)   # what detect() returns
    keep = probabilities.max(-1)[0] > threshold
    cx, cy, w, h = expected["pred_boxes"][0][keep].unbind(-1)
    boxes = torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), -1) * torch.tensor([width, height, width, height])
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    assert len(detections) == int(keep.sum()) > 0
    ours_sorted = sorted(d.box for d in detections)
    expected_sorted = sorted(tuple(b) for b in boxes.tolist())
    np.testing.assert_allclose(np.array(ours_sorted), np.array(expected_sorted), atol=1e-3)
    assert all(d.phrase in tokens.phrases for d in detections)
    return tokens


@pytest.mark.parametrize("caption", CAPTIONS, ids=["two", "mixed-separators", "over-256-tokens"])
def test_swin_t_matches_reference(swin_t_pair, caption):
    reference, detector = swin_t_pair
    assert detector.spec.variant == "swin_t"
    tokens = _assert_equivalent(reference, detector, caption, _image(1))
    if caption == LONG_CAPTION:
        assert tokens.truncated and len(tokens.kept_phrase_spans()) < len(tokens.phrases)


def _threshold_in_a_gap(values, quantile, fallback=None):
    """A threshold near ``quantile`` of ``values`` that no value lies within 1e-4 of, so that
    float noise between two implementations cannot move a value across it."""
    ordered = values.flatten().sort()[0]
    start = int(quantile * (len(ordered) - 1))
    for index in sorted(range(len(ordered) - 1), key=lambda i: abs(i - start)):
        low, high = float(ordered[index]), float(ordered[index + 1])
        if high - low > 2e-4:
            return (low + high) / 2
    assert fallback is not None, "no gap between the scores to put a threshold in"
    return fallback


@pytest.mark.parametrize("caption", ["Hand, FACE", "red cat . dog ? blue shirt"], ids=["commas", "separators"])
def test_reference_rule_is_groundingdino_predict(swin_t_pair, caption):
    # issue #19 item 3: the drop-in routes keep every box GroundingDINO's predict keeps (no extra
    # phrase threshold), in its query order, named with its own phrase strings
    # groundingdino.util.inference.predict's steps (that module needs `supervision`, which the
    # test stacks lack), with the oracle's own model, tokenizer and get_phrases_from_posmap
    from groundingdino.util.utils import get_phrases_from_posmap

    reference, detector = swin_t_pair
    image = _image(4)
    pixels = detector._pixels(image)
    height, width = image.shape[:2]
    text = caption.lower().strip() + "."
    with torch.no_grad():
        output = reference(pixels, captions=[text])
    logits, all_boxes = output["pred_logits"][0].sigmoid(), output["pred_boxes"][0]
    # random weights can saturate every box score at 1.0 (the Forge stack's BERT): then all are kept
    box_threshold = _threshold_in_a_gap(logits.max(-1)[0], 0.25, fallback=0.5)
    text_threshold = _threshold_in_a_gap(logits[logits > 0], 0.5)   # some tokens pass, some do not
    keep = logits.max(-1)[0] > box_threshold
    tokenized = reference.tokenizer(text)
    phrases = [get_phrases_from_posmap(row > text_threshold, tokenized, reference.tokenizer).replace(".", "")
               for row in logits[keep]]
    boxes, scores = all_boxes[keep], logits[keep].max(-1)[0]
    ours = detector.detect(image, caption, box_threshold=box_threshold, text_threshold=text_threshold, like_reference=True)
    assert len(ours) == len(phrases) > 1
    assert [d.phrase for d in ours] == phrases
    assert len(set(phrases)) > 1   # the strings differ per box, so the comparison means something
    np.testing.assert_allclose([d.score for d in ours], scores.numpy(), atol=1e-4)
    cx, cy, w, h = boxes.unbind(-1)
    xyxy = torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), -1) * torch.tensor([width, height, width, height])
    np.testing.assert_allclose(np.array([d.box for d in ours]), xyxy.numpy(), atol=1e-3)


def test_decode_writes_what_bert_writes():
    from transformers import BertTokenizer

    reference = BertTokenizer(vocab_file=str(BUNDLED_VOCAB), do_lower_case=True)
    ours = WordPieceTokenizer.from_directory()
    for text in ["[CLS] a man's hand, holding it . unaffable [SEP]", "don't stop ? ok !", ""]:
        ids = reference.convert_tokens_to_ids(reference.tokenize(text))
        assert ours.decode(ids) == reference.decode(ids), text


def test_reduced_swin_b_matches_reference(swin_b_pair):
    reference, detector = swin_b_pair
    assert detector.spec.shape.swin.window_size == 12 and detector.spec.shape.swin.embed_dim == 128
    _assert_equivalent(reference, detector, "a red cat, dog . blue shirt", _image(2, 170, 130))


def test_official_layout_helper_matches_reference(swin_t_pair):
    reference, detector = swin_t_pair
    # The official checkpoints carry BERT's position_ids; transformers >= 4.31 (the Forge stack)
    # no longer saves that buffer, so the reference's own state dict may lack it.
    ours = set(fixtures.official_layout(detector.model.state_dict(), decoder_layers=LAYERS))
    theirs = set(reference.state_dict())
    assert ours - theirs <= {"bert.embeddings.position_ids"}
    assert theirs <= ours


# ----------------------------------------------------------------------------- real configurations


def _meta_shapes(shape: GroundingDinoShape):
    with torch.device("meta"):
        model = GroundingDino(shape)
    return {name: tuple(t.shape) for name, t in fixtures.official_layout(model.state_dict()).items()}


def test_identifies_swin_t_and_swin_b_by_contents():
    swin_t = identify_checkpoint(_meta_shapes(GroundingDinoShape()))
    assert (swin_t.variant, swin_t.label) == ("swin_t", "GroundingDINO Swin-T")
    assert swin_t.shape == GroundingDinoShape()
    swin_b_shape = GroundingDinoShape(swin=SwinShape(128, (2, 2, 18, 2), (4, 8, 16, 32), 12))
    swin_b = identify_checkpoint(_meta_shapes(swin_b_shape))
    assert (swin_b.variant, swin_b.label) == ("swin_b", "GroundingDINO Swin-B")
    assert swin_b.shape == swin_b_shape
    assert swin_b.shape.bert.num_layers == 12 and swin_b.shape.bert.num_heads == 12 and swin_b.shape.bert.vocab_size == 30522


def test_rejects_what_is_not_groundingdino(tiny_sam):
    from sd_webui_sam.checkpoints import read_shapes

    sam_path, _ = tiny_sam
    assert identify_checkpoint(read_shapes(sam_path)) is None
    with pytest.raises(UnrecognisedCheckpointError):
        load_detector(sam_path, CPU)


def test_unshared_box_heads_are_refused(swin_t_pair):
    reference, _ = swin_t_pair
    state = dict(reference.state_dict())
    state["bbox_embed.2.layers.0.bias"] = state["bbox_embed.2.layers.0.bias"] + 1
    with pytest.raises(UnrecognisedCheckpointError):
        canonical_state_dict(state)


def test_real_configuration_builds_offline(monkeypatch, tmp_path):
    """The full Swin-T + bert-base model loads from nothing but the checkpoint: no socket, no Hugging Face."""
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    import huggingface_hub
    import transformers

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(transformers.BertModel, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)

    state = {
        name: torch.zeros(shape, dtype=torch.long if name.endswith(("position_ids", "relative_position_index")) else torch.float32)
        for name, shape in _meta_shapes(GroundingDinoShape()).items()
    }
    path = tmp_path / "groundingdino_swint_ogc.pth"
    path.write_bytes(b"placeholder")  # read through the patched loader below; 700 MB on disk would be slow
    from sd_webui_sam import checkpoints

    monkeypatch.setattr(checkpoints, "load_state_dict", lambda p: state)
    detector = load_detector(path, CPU)
    assert detector.spec.variant == "swin_t" and len(detector.tokenizer.vocab) == 30522
    detector.short_side, detector.max_side = 32, 48   # one small forward pass
    detections = detector.detect(_image(3, 64, 80), "hand, face", box_threshold=0.0, text_threshold=0.0)
    assert detections and all(d.phrase in ("hand", "face") for d in detections)


# ----------------------------------------------------------------------------- tokenizer and captions


def test_bundled_vocabulary_is_bert_base_uncased():
    data = BUNDLED_VOCAB.read_bytes()
    assert len(data) == 231508 and len(data.decode("utf-8").splitlines()) == 30522
    assert hashlib.sha256(data).hexdigest() == "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
    assert (BUNDLED_VOCAB.parent / "VOCAB_LICENSE.md").is_file()


def test_wordpiece_matches_bert_tokenizer():
    from transformers import BertTokenizer

    reference = BertTokenizer(vocab_file=str(BUNDLED_VOCAB), do_lower_case=True)
    ours = WordPieceTokenizer.from_directory()
    texts = [
        "A man's left hand, holding a Café-au-lait cup.",
        "unaffable supercalifragilisticexpialidocious xylophones",
        "Zürich naïve résumé  façade",
        "猫と犬 (cat & dog) #1 $5 ^_^ ~tilde~",
        "a" * 120 + " tail",
        "tab\tand\nnewline\x00control\u200b",
    ]
    for text in texts:
        assert ours.encode(text) == reference.convert_tokens_to_ids(reference.tokenize(text)), text


def test_captions_split_into_normalised_phrases():
    assert split_caption("Hand, FACE.") == ["hand", "face"]
    assert split_caption(" hand .  face ") == ["hand", "face"]
    assert split_caption("red  cat?dog,,") == ["red cat", "dog"]
    assert caption_text(["hand", "face"]) == "hand . face ."
    for empty in ("", "   ", " . , ."):
        with pytest.raises(InvalidPromptError):
            tokenize_caption(WordPieceTokenizer.from_directory(), empty)


def test_phrase_spans_and_block_mask():
    tokenizer = WordPieceTokenizer.from_directory()
    tokens = tokenize_caption(tokenizer, "left hand, face")
    ids = list(tokens.input_ids)
    assert ids[0] == tokenizer.cls_id and ids[-1] == tokenizer.sep_id
    inverse = {index: token for token, index in tokenizer.vocab.items()}
    assert [[inverse[i] for i in ids[a:b]] for a, b in tokens.phrase_spans] == [["left", "hand"], ["face"]]
    inputs = tokens.model_inputs(torch.device("cpu"))
    mask = inputs["self_attention_mask"][0]
    # [CLS] left hand . face . [SEP]: each phrase with its "." is one block; positions restart.
    assert mask[1, 3] and mask[3, 1] and not mask[1, 4] and not mask[0, 1] and mask[4, 5]
    assert inputs["position_ids"][0].tolist() == [0, 0, 1, 2, 0, 1, 0]


def _fake_output(token_count, rows):
    logits = torch.full((1, len(rows), token_count), -10.0)
    boxes = torch.zeros(1, len(rows), 4)
    for query, (token_logits, box) in enumerate(rows):
        for token, value in token_logits.items():
            logits[0, query, token] = value
        boxes[0, query] = torch.tensor(box)
    return GroundingOutput(logits=logits, boxes=boxes)


def test_each_box_is_named_after_its_best_phrase():
    tokens = tokenize_caption(WordPieceTokenizer.from_directory(), "hand, face")   # [CLS] hand . face . [SEP]
    output = _fake_output(len(tokens.input_ids), [
        ({3: 3.0}, (0.25, 0.5, 0.2, 0.2)),               # face, high
        ({1: 1.0, 3: -1.0}, (0.75, 0.5, 0.2, 0.4)),      # hand
        ({1: -1.5}, (0.5, 0.5, 0.1, 0.1)),               # below the box threshold
        ({1: 0.5}, (0.95, 0.95, 0.3, 0.3)),              # hand, crosses the border: clamped
    ])
    detections = postprocess(tokens, output, width=200, height=100, box_threshold=0.3, text_threshold=0.25, nms_threshold=None)
    assert [d.phrase for d in detections] == ["face", "hand", "hand"]
    assert detections[0].score == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
    np.testing.assert_allclose(detections[0].box, (30, 40, 70, 60), atol=1e-4)
    np.testing.assert_allclose(detections[2].box, (160, 80, 200, 100), atol=1e-4)
    # A stricter text threshold drops boxes whose best phrase is not confident enough.
    strict = postprocess(tokens, output, 200, 100, box_threshold=0.3, text_threshold=0.7, nms_threshold=None)
    assert [d.phrase for d in strict] == ["face", "hand"]


def test_nms_removes_overlaps_of_the_same_phrase_only():
    tokens = tokenize_caption(WordPieceTokenizer.from_directory(), "hand, face")
    output = _fake_output(len(tokens.input_ids), [
        ({1: 2.0}, (0.5, 0.5, 0.4, 0.4)),
        ({1: 1.0}, (0.51, 0.5, 0.4, 0.4)),   # same phrase, overlapping: suppressed
        ({3: 1.5}, (0.5, 0.5, 0.4, 0.4)),    # other phrase, same place: kept
    ])
    without = postprocess(tokens, output, 100, 100, 0.3, 0.25, None)
    with_nms = postprocess(tokens, output, 100, 100, 0.3, 0.25, 0.5)
    assert len(without) == 3
    assert [(d.phrase, round(d.score, 3)) for d in with_nms] == [("hand", 0.881), ("face", 0.818)]


def test_empty_caption_and_bad_inputs_fail_before_running(swin_t_pair):
    _, detector = swin_t_pair
    for caption in ("", " . "):
        with pytest.raises(InvalidPromptError):
            detector.detect(_image(), caption)
    with pytest.raises(InvalidPromptError):
        detector.detect(_image(), "hand", box_threshold=1.5)
    with pytest.raises(SamUserError):
        detector.detect(np.zeros((10, 10), np.uint8), "hand")


def test_detection_size_follows_the_trained_resize():
    assert detection_size(1000, 500) == (1332, 666)   # long side capped at 1333, aspect kept
    assert detection_size(600, 800) == (800, 1066)
    assert detection_size(800, 800) == (800, 800)
    # issue #19 item 1: a thin picture keeps one pixel across instead of a 0-pixel side
    assert detection_size(1, 3000) == (1, 1333)
    assert detection_size(3000, 1) == (1333, 1)


# ----------------------------------------------------------------------------- store


def test_store_lists_only_groundingdino_and_caches(tmp_path, swin_t_pair, tiny_sam, text_dir):
    import shutil

    from local_groundingdino import store as store_module

    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    source = Path(swin_t_pair[1].name)
    reference, _ = swin_t_pair
    fixtures.save_checkpoint(reference, first / "mine.pth")
    fixtures.save_checkpoint(reference, second / "other.pth")
    shutil.copy(tiny_sam[0], first / "sam_in_wrong_folder.pth")
    (first / "notes.txt").write_text("x")
    (first / "broken.pth").write_bytes(b"not a checkpoint")

    loads = []

    def loader(path, placement, **options):
        loads.append(path.name)
        return load_detector(path, placement, **options)

    settings = store_module.GroundingDinoSettings(model_dirs=(first, second), tokenizer_dir=text_dir, cache_size=1)
    store = store_module.GroundingDinoStore(settings, CPU, loader=loader)
    assert store.list_models() == ["mine.pth", "other.pth"]
    assert store.detector("mine.pth") is store.detector("mine.pth")
    store.detector("other.pth")
    assert store.loaded() == ["other.pth"] and loads == ["mine.pth", "other.pth"]
    store.unload()
    assert store.loaded() == []
    with pytest.raises(SamUserError):
        store.detector("../a/mine.pth")
    with pytest.raises(ModelNotFoundError):
        store.detector("groundingdino_swint_ogc.pth")
    assert source  # the fixture's detector is untouched


def test_download_uses_the_official_location_and_checksum(monkeypatch, tmp_path):
    from local_groundingdino import store as store_module

    calls = []
    monkeypatch.setattr(store_module, "download_file", lambda url, dest, name, **kw: calls.append((url, dest, name, kw)) or dest / name)
    store = store_module.GroundingDinoStore(store_module.GroundingDinoSettings(model_dirs=(tmp_path,)), CPU)
    store.download("groundingdino_swinb_cogcoor.pth")
    url, dest, name, options = calls[0]
    assert url == "https://huggingface.co/ShilongLiu/GroundingDINO/resolve/main/groundingdino_swinb_cogcoor.pth"
    assert dest == tmp_path and options["size"] == 938057991
    assert options["sha256"] == "46270f7a822e6906b655b729c90613e48929d0f2bb8b9b76fd10a856f3ac6ab7"
    with pytest.raises(SamUserError):
        store.download("something_else.pth")


def test_a_damaged_checkpoint_is_refused_with_the_tensor_named(tmp_path):
    """A file identified as GroundingDINO whose tensors do not fit is reported, not half-loaded."""
    from sd_webui_sam.checkpoints import load_state_dict
    from sd_webui_sam.errors import CorruptCheckpointError
    from tests.fixtures.text_prompt_fixtures import write_tiny_gdino

    state = dict(load_state_dict(write_tiny_gdino(tmp_path)))
    spec = identify_checkpoint({name: tuple(tensor.shape) for name, tensor in state.items()})
    assert spec is not None
    build_model(spec, state)  # the intact file loads
    damaged_name = next(name for name in state if name.endswith("bias") and "transformer" in name)
    state[damaged_name] = torch.zeros(state[damaged_name].numel() + 1)
    with pytest.raises(CorruptCheckpointError) as refused:
        build_model(spec, state)
    assert "wrong shape" in str(refused.value)


def test_cpu_gather_sampling_equals_the_atlas_grid_sample():
    """The CPU's embedding_bag path and the accelerators' atlas path read the same bilinear samples,
    zeros outside each level included (locations reach well past the borders)."""
    from local_groundingdino.deformable_attention import build_layout, sample_levels, sample_levels_by_gather

    generator = torch.Generator().manual_seed(5)
    shapes = [(9, 13), (5, 7), (3, 4), (2, 2)]
    layout = build_layout(shapes, torch.device("cpu"))
    value = torch.randn((2, layout.num_tokens, 3, 4), generator=generator)
    locations = torch.rand((2, 6, 3, 4, 2, 2), generator=generator) * 1.6 - 0.3
    weights = torch.rand((2, 6, 3, 4, 2), generator=generator)
    expected = sample_levels(value, layout, locations, weights)
    torch.testing.assert_close(sample_levels_by_gather(value, layout, locations, weights), expected, atol=1e-5, rtol=1e-5)
    assert expected.abs().sum() > 0
