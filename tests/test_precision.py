"""One precision setting (issue #15): its resolution per device, the image encoders alone in it
(decoders stay float32), honest embedding cache keys, the settings and flags that set it, and
bf16 on the CPU against fp32 at real ViT-B size."""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sd_webui_sam import devices, model_registry
from sd_webui_sam.compat import options
from sd_webui_sam.devices import PRECISION_CHOICES, Placement, resolve_placement
from sd_webui_sam.embedding_cache import EmbeddingCache
from sd_webui_sam.model_store import ModelStore
from sd_webui_sam.predictor import Predictor
from sd_webui_sam.prompts import Prompts
from sd_webui_sam.settings import EngineSettings
from tools.fixtures.sam_checkpoints import VIT_B, build_reference_sam, save_state_dict

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def shapes_picture(height: int = 768, width: int = 1024, seed: int = 0) -> np.ndarray:
    """A shaded background with a shaded disc, a rectangle and a triangle, plus light sensor noise."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    picture = np.empty((height, width, 3))
    picture[..., 0] = 90 + 60 * ys / height
    picture[..., 1] = 140 + 40 * xs / width
    picture[..., 2] = 200 - 50 * ys / height
    cx, cy, r = 0.3 * width, 0.52 * height, 0.2 * height
    disc = (xs - cx) ** 2 + (ys - cy) ** 2 < r ** 2
    picture[disc] = (220, 60, 40)
    picture[disc] *= (1 - 0.3 * (xs[disc] - cx) / r)[:, None]
    picture[(xs > 0.57 * width) & (xs < 0.88 * width) & (ys > 0.2 * height) & (ys < 0.55 * height)] = (40, 70, 160)
    picture[(ys > 0.65 * height) & (ys < 0.91 * height) & (np.abs(xs - 0.73 * width) < (ys - 0.65 * height) * 0.8)] = (240, 220, 80)
    picture += np.random.default_rng(seed).normal(0, 4, picture.shape)
    return picture.clip(0, 255).astype(np.uint8)


def mask_iou(first: np.ndarray, second: np.ndarray) -> float:
    union = np.logical_or(first, second).sum()
    return 1.0 if union == 0 else float(np.logical_and(first, second).sum() / union)


# -- resolution ------------------------------------------------------------------------------


@pytest.fixture
def no_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    """A CUDA machine as far as the resolution can tell; ``fake_cuda(bf16=False)`` is a pre-Ampere GPU."""

    def make(bf16: bool = True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)

    return make


@pytest.mark.parametrize("choice, dtype, explained", [
    ("auto", torch.float32, False),
    ("fp32", torch.float32, False),
    ("bf16", torch.bfloat16, False),
    ("fp16", torch.float32, True),  # CPU fp16 matrix products are slow or missing: fp32, with the reason
])
def test_precision_on_the_cpu(no_accelerator, monkeypatch, choice, dtype, explained):
    monkeypatch.setattr(devices, "cpu_bf16_slowdown", lambda: 1.2)  # a CPU with bf16 instructions
    for device in ("auto", "cpu"):
        placement = resolve_placement(device, precision=choice)
        assert placement.device == CPU and placement.dtype == dtype
        assert placement.decoder_dtype == torch.float32
        assert bool(placement.precision_note) == explained
    if explained:
        assert "fp16" in placement.precision_note and "CPU" in placement.precision_note


def test_bf16_on_a_cpu_without_bf16_instructions_is_kept_and_its_price_is_said(no_accelerator, monkeypatch):
    monkeypatch.setattr(devices, "cpu_bf16_slowdown", lambda: 84.0)
    placement = resolve_placement("cpu", precision="bf16")
    assert placement.dtype == torch.bfloat16
    assert "84x" in placement.precision_note and "fp32" in placement.precision_note
    assert resolve_placement("cpu", precision="auto").precision_note == ""  # auto is fp32 there: nothing to say


def test_the_bf16_probe_measures_once():
    """The factor is a plain positive number (about 1 with bf16 instructions, 84-95 on an AVX2
    EPYC), measured on first use only: later resolutions cost nothing."""
    slowdown = devices.cpu_bf16_slowdown()
    assert 0 < slowdown < float("inf")
    assert devices.cpu_bf16_slowdown() == slowdown and devices.cpu_bf16_slowdown.cache_info().hits >= 1


def test_every_choice_is_covered_and_an_unknown_one_is_refused(no_accelerator):
    assert PRECISION_CHOICES == ("auto", "fp32", "bf16", "fp16")
    with pytest.raises(ValueError, match="auto, fp32, bf16, fp16"):
        resolve_placement("cpu", precision="int8")
    assert resolve_placement("cpu", precision=" BF16 ").dtype == torch.bfloat16
    assert resolve_placement("cpu", precision="").dtype == torch.float32  # empty means auto


@pytest.mark.parametrize("bf16_supported, choice, dtype, explained", [
    (True, "auto", torch.bfloat16, False),
    (False, "auto", torch.float16, False),
    (True, "bf16", torch.bfloat16, False),
    (False, "bf16", torch.float16, True),
    (True, "fp16", torch.float16, False),
    (False, "fp16", torch.float16, False),
    (True, "fp32", torch.float32, False),
])
def test_precision_on_a_cuda_gpu(fake_cuda, bf16_supported, choice, dtype, explained):
    fake_cuda(bf16=bf16_supported)
    placement = resolve_placement("auto", precision=choice)
    assert placement.device.type == "cuda" and placement.dtype == dtype
    assert bool(placement.precision_note) == explained
    # the CPU choice on the same machine follows the CPU's rules
    assert resolve_placement("cpu", precision="auto").dtype == torch.float32


def test_precision_on_an_apple_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: True)
    assert resolve_placement("auto", precision="auto").dtype == torch.float32
    assert resolve_placement("mps", precision="fp16").dtype == torch.float16
    bf16 = resolve_placement("mps", precision="bf16")
    assert bf16.dtype == torch.float32 and "bf16" in bf16.precision_note


# -- only the encoders in reduced precision, per family ------------------------------------------


FAMILY_FILES = ("sam.pth", "hq_vit.pth", "hq_tiny_vit.pth", "mobile_sam.pt", "sam2.1_tiny.pt")


@pytest.fixture(scope="module")
def family_folder(tmp_path_factory, tiny_sam):
    from tools.fixtures.hq_checkpoints import HQ_TINY, build_reference_hq_sam, build_reference_hq_tiny, build_reference_mobile_sam
    from tools.fixtures.sam2_checkpoints import write_tiny_sam2

    folder = tmp_path_factory.mktemp("precision_models")
    (folder / "sam.pth").write_bytes(Path(tiny_sam[0]).read_bytes())
    save_state_dict(build_reference_hq_sam(HQ_TINY, seed=2).state_dict(), folder / "hq_vit.pth")
    save_state_dict(build_reference_hq_tiny(seed=3).state_dict(), folder / "hq_tiny_vit.pth")
    save_state_dict(build_reference_mobile_sam(seed=4).state_dict(), folder / "mobile_sam.pt")
    write_tiny_sam2(folder / "sam2.1_tiny.pt", seed=5)
    return folder


def _split_parameters(model):
    encoder = {id(p) for p in model.image_encoder.parameters()}
    inside = [p.dtype for p in model.parameters() if id(p) in encoder]
    outside = {name: p.dtype for name, p in model.named_parameters() if id(p) not in encoder}
    return inside, outside


@pytest.mark.parametrize("name", FAMILY_FILES)
def test_bf16_puts_only_the_image_encoder_in_bf16(family_folder, name):
    settings = EngineSettings(user_model_dir=family_folder, device="cpu", precision="bf16")
    store = ModelStore(settings)
    loaded = store.get(name)
    model = loaded.model
    inside, outside = _split_parameters(model)
    assert inside and set(inside) == {torch.bfloat16}
    assert outside and set(outside.values()) == {torch.float32}, {k: v for k, v in outside.items() if v != torch.float32}
    assert model.encoder_dtype == torch.bfloat16 and model.dtype == torch.float32

    picture = shapes_picture(120, 160, seed=1)
    prompts = Prompts(points=[(50.0, 60.0)], labels=[1], boxes=[(20.0, 20.0, 110.0, 100.0)])
    predictor = Predictor(model, store.placement, EmbeddingCache(), model_id=loaded.model_id)
    encoded = predictor.encode(picture)
    assert encoded.key.dtype == "bfloat16"
    if name.startswith("sam2"):
        # Everything after the trunk and neck (no-memory embedding, high-res convolutions) is float32.
        assert {t.dtype for t in encoded.features.values()} == {torch.float32}
    else:
        assert encoded.features["image_embeddings"].dtype == torch.bfloat16  # cached as the encoder computed it
    if "hq_features" in encoded.features:
        # HQ-SAM's fusion of the early ViT features belongs to the decoder: computed in float32.
        assert encoded.features["interm_embeddings"].dtype == torch.bfloat16
        assert encoded.features["hq_features"].dtype == torch.float32
    prediction = predictor.predict(encoded, prompts)
    refined = predictor.predict(encoded, Prompts(points=[(50.0, 60.0)], labels=[1],
                                                 mask_input=prediction.low_res_logits[0, 0]))
    for result in (prediction, refined):
        assert result.low_res_logits.dtype == np.float32 and np.isfinite(result.low_res_logits).all()
        assert result.masks.dtype == bool

    # The same weights in fp32 give nearly the same masks (tiny random models: a loose bound).
    full = ModelStore(EngineSettings(user_model_dir=family_folder, device="cpu", precision="fp32"))
    reference = Predictor(full.get(name).model, full.placement, EmbeddingCache()).predict(picture, prompts)
    assert (reference.masks == prediction.masks).mean() > 0.9


def test_hq_decoder_without_cached_hq_features_upcasts_the_early_features(family_folder):
    """A decode from the early ViT features alone (what the cache may hold) works in bf16 too."""
    store = ModelStore(EngineSettings(user_model_dir=family_folder, device="cpu", precision="bf16"))
    model = store.get("hq_vit.pth").model
    predictor = Predictor(model, store.placement, EmbeddingCache())
    encoded = predictor.encode(shapes_picture(120, 160, seed=2))
    coords = torch.tensor([[[40.0, 50.0]]])
    labels = torch.ones(1, 1, dtype=torch.int32)
    kwargs = dict(point_coords=coords, point_labels=labels, boxes=None, mask_input=None, multimask_output=True)
    with torch.inference_mode():
        with_hq = model.decode(encoded.features, **kwargs)
        without = model.decode({k: v for k, v in encoded.features.items() if k != "hq_features"}, **kwargs)
    torch.testing.assert_close(without[0], with_hq[0])
    assert with_hq[0].dtype == torch.float32


def test_switching_precision_places_the_loaded_model_again(family_folder):
    store = ModelStore(EngineSettings(user_model_dir=family_folder, device="cpu", precision="fp32"))
    model = store.get("sam.pth").model
    assert model.encoder_dtype == torch.float32
    store.set_placement(resolve_placement("cpu", precision="bf16"))
    inside, outside = _split_parameters(model)
    assert set(inside) == {torch.bfloat16} and set(outside.values()) == {torch.float32}


def test_embeddings_are_cached_in_their_precision_and_keyed_by_it(family_folder):
    store = ModelStore(EngineSettings(user_model_dir=family_folder, device="cpu", precision="bf16"))
    loaded = store.get("sam.pth")
    cache = EmbeddingCache()
    picture = shapes_picture(90, 120, seed=3)
    low = Predictor(loaded.model, store.placement, cache, model_id=loaded.model_id).encode(picture)
    store.set_placement(resolve_placement("cpu", precision="fp32"))
    high = Predictor(loaded.model, store.placement, cache, model_id=loaded.model_id).encode(picture)
    assert (low.key.dtype, high.key.dtype) == ("bfloat16", "float32")
    assert high is not low and cache.stats()["entries"] == 2  # the fp32 model did not reuse the bf16 embeddings
    assert low.features["image_embeddings"].dtype == torch.bfloat16
    assert low.nbytes * 2 == high.nbytes  # the cache holds bf16 embeddings at half the memory


def test_groundingdino_runs_swin_and_bert_in_bf16_and_the_rest_in_fp32(tmp_path, tiny_sam):
    from sd_webui_sam.engine import Engine
    from tests.fixtures.text_prompt_fixtures import gdino_folder, tiny_text_settings

    models, vocab = gdino_folder(tmp_path)
    settings = tiny_text_settings(Path(tiny_sam[0]).parent, models, vocab)
    settings.precision = "bf16"
    engine = Engine(settings)
    detector = engine.detectors.detector("groundingdino_swint_ogc.pth")
    model = detector.model
    encoders = {id(p) for part in (model.backbone, model.bert) for p in part.parameters()}
    assert {p.dtype for p in model.parameters() if id(p) in encoders} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters() if id(p) not in encoders} == {torch.float32}
    _, output = detector.run(shapes_picture(96, 128, seed=4), "disc . box")
    assert output.logits.dtype == torch.float32 and torch.isfinite(output.logits).all()
    assert torch.isfinite(output.boxes).all()


# -- bf16 on the CPU at real ViT-B size --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(devices.cpu_bf16_slowdown() >= devices.SLOW_BF16_FACTOR,
                    reason="this CPU has no bf16 instructions: two real ViT-B encodes in emulated bf16 take ~10 minutes")
def test_slow_cpu_bf16_encoder_matches_fp32_at_real_vit_b_size():
    """Random weights at real ViT-B size, one 1024x768 picture of shapes, three prompts: every
    candidate mask of the bf16 encoder overlaps fp32's with IoU >= 0.98, and the low-res logits
    differ on average by under 2 % of the fp32 logits' standard deviation. (Two encodes of a real
    ViT-B: 1.5 to 2.5 minutes on one thread of the loaded 2-core CI machine. Measured there: IoU
    0.986 to 0.996, mean difference 0.7 to 0.9 % of the standard deviation.)"""
    reference = build_reference_sam(VIT_B, seed=1)
    state_dict = {key: value.detach().clone() for key, value in reference.state_dict().items()}
    del reference
    spec = model_registry.identify({key: tuple(value.shape) for key, value in state_dict.items()})
    assert spec.label == "SAM ViT-B"
    model = model_registry.build_model(spec, state_dict)
    picture = shapes_picture()
    height, width = picture.shape[:2]
    prompts = [
        Prompts(points=[(0.3 * width, 0.52 * height)], labels=[1]),  # on the disc
        Prompts(boxes=[(0.56 * width, 0.18 * height, 0.89 * width, 0.56 * height)]),  # around the rectangle
        Prompts(points=[(0.73 * width, 0.85 * height), (0.3 * width, 0.52 * height)], labels=[1, 0],
                boxes=[(0.58 * width, 0.63 * height, 0.88 * width, 0.92 * height)]),  # the triangle, not the disc
    ]
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        model.place(CPU, dtype)
        predictor = Predictor(model, Placement(CPU, dtype=dtype), EmbeddingCache())
        encoded = predictor.encode(picture)
        assert encoded.features["image_embeddings"].dtype == dtype
        results[dtype] = [predictor.predict(encoded, prompt) for prompt in prompts]

    non_trivial = 0
    for full, reduced in zip(results[torch.float32], results[torch.bfloat16]):
        assert full.masks.shape == reduced.masks.shape == (1, 3, height, width)
        for candidate in range(full.masks.shape[1]):
            full_mask, reduced_mask = full.masks[0, candidate], reduced.masks[0, candidate]
            assert mask_iou(full_mask, reduced_mask) >= 0.98
            full_logits, reduced_logits = full.low_res_logits[0, candidate], reduced.low_res_logits[0, candidate]
            assert np.abs(full_logits - reduced_logits).mean() < 0.02 * full_logits.std()
            non_trivial += 0.01 < full_mask.mean() < 0.99
    assert non_trivial >= 3, "too few candidates cover part of the picture: the comparison would say nothing"


# -- settings, flags and what the engine reports --------------------------------------------------


def test_app_flag_reaches_the_engine_and_its_report(tmp_path):
    from sd_webui_sam.app import build_parser, engine_from_args

    engine = engine_from_args(build_parser().parse_args(["--model-dir", str(tmp_path), "--device", "cpu", "--precision", "bf16"]))
    assert engine.settings.precision == "bf16"
    stats = engine.stats()
    # The note is empty on a CPU with bf16 instructions, and says the price on one without.
    assert (stats["dtype"], stats["decoder_dtype"], stats["precision"], stats["precision_note"]) == (
        "bfloat16", "float32", "bf16", devices.resolve_precision("bf16", CPU)[1])
    engine.set_device("cpu")  # a device switch keeps the precision
    assert engine.stats()["dtype"] == "bfloat16"

    fallback = engine_from_args(build_parser().parse_args(["--model-dir", str(tmp_path), "--device", "cpu", "--precision", "fp16"]))
    assert fallback.stats()["dtype"] == "float32" and "fp16" in fallback.stats()["precision_note"]
    assert engine_from_args(build_parser().parse_args(["--model-dir", str(tmp_path), "--device", "cpu"])).settings.precision == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--precision", "fp8"])


def test_batch_flag_reaches_the_engine(tmp_path, monkeypatch):
    from sd_webui_sam import batch

    made = []

    class Recorded(Exception):
        pass

    def engine(settings):
        made.append(settings)
        raise Recorded

    monkeypatch.setattr(batch, "Engine", engine)
    with pytest.raises(Recorded):
        batch.main([str(tmp_path), "-o", str(tmp_path / "out"), "--point", "5,5", "--device", "cpu", "--precision", "bf16"])
    assert made[0].precision == "bf16" and made[0].device == "cpu"


def test_webui_setting_and_flag_set_the_precision():
    spec = next(spec for spec in options.OPTIONS if spec.key == "sam_precision")
    assert spec.default == "auto" and spec.component_args == {"choices": list(PRECISION_CHOICES)}
    keys = [spec.key for spec in options.OPTIONS]
    assert keys.index("sam_precision") == keys.index("sam_device") + 1  # next to the device

    def settings(data, **flags):
        return options.engine_settings(SimpleNamespace(data=data), SimpleNamespace(**flags), None, None)

    assert settings({}).precision == "auto"
    assert settings({"sam_precision": "bf16"}).precision == "bf16"
    assert settings({"sam_precision": "bf16"}, sam_precision="fp32").precision == "fp32"  # the flag wins
    assert settings({"sam_precision": "half"}).precision == "auto"  # a stale or edited value

    preload = importlib.util.spec_from_file_location("sam_preload_precision", ROOT / "preload.py")
    module = importlib.util.module_from_spec(preload)
    preload.loader.exec_module(module)
    parser = argparse.ArgumentParser()
    module.preload(parser)
    assert parser.parse_args(["--sam-precision", "bf16"]).sam_precision == "bf16"
    assert parser.parse_args([]).sam_precision is None
