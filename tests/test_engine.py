"""The Engine end to end: models by file name, segmentation through the real loading path,
embedding reuse, thread safety, device switching and unload."""
from __future__ import annotations

import gc
import shutil
import threading
import weakref

import numpy as np
import pytest
import torch

from sd_webui_sam import engine as engine_module
from sd_webui_sam.devices import Placement
from sd_webui_sam.engine import Engine
from sd_webui_sam.errors import ModelNotFoundError, SamUserError
from sd_webui_sam.settings import MODEL_DIR_ENV, EngineSettings


@pytest.fixture(autouse=True)
def _no_env_model_dir(monkeypatch):
    monkeypatch.delenv(MODEL_DIR_ENV, raising=False)


@pytest.fixture(scope="module")
def model_dir(tiny_sam, tmp_path_factory):
    path, _ = tiny_sam
    folder = tmp_path_factory.mktemp("models") / "sam"
    folder.mkdir(parents=True)
    shutil.copy(path, folder / "tiny_sam.pth")
    shutil.copy(path, folder / "sam_vit_b_01ec64.pth")  # misleading name on purpose
    (folder / "PUT_YOUR_SAM_MODEL_HERE.txt").write_text("")
    return folder


@pytest.fixture
def engine(model_dir):
    return Engine(EngineSettings(user_model_dir=model_dir, device="cpu"))


@pytest.fixture(scope="module")
def shared_engine(model_dir):
    """One engine for the segmentation tests, so that they share embeddings (encoding is the slow part)."""
    return Engine(EngineSettings(user_model_dir=model_dir, device="cpu"))


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((96, 128, 3), np.uint8)
    image[20:70, 30:90] = rng.integers(120, 255, size=(50, 60, 3))
    return image


def test_models_are_listed_and_labelled_by_content(engine):
    assert engine.list_models() == ["sam_vit_b_01ec64.pth", "tiny_sam.pth"]
    assert engine.model_label("sam_vit_b_01ec64.pth") == "SAM ViT (custom: dim 32, depth 4) (sam_vit_b_01ec64.pth)"


def test_bad_names_are_refused(engine):
    with pytest.raises(ModelNotFoundError):
        engine.predictor("sam_vit_h_4b8939.pth")
    with pytest.raises(SamUserError):
        engine.predictor("../tiny_sam.pth")


def test_unknown_device_is_a_user_error(engine):
    with pytest.raises(SamUserError, match="Unknown device"):
        engine.set_device("tpu")


def test_stats_report_device_and_caches(engine):
    stats = engine.stats()
    assert stats["device"] == "cpu" and stats["loaded_models"] == []
    assert {"hits", "misses"} <= set(stats["embedding_cache"])


def test_set_device_moves_models_and_drops_old_embeddings(engine, monkeypatch):
    engine.store.get("tiny_sam.pth")
    sentinel_cleared = []
    monkeypatch.setattr(engine.embeddings, "clear", lambda: sentinel_cleared.append(True))
    monkeypatch.setattr(engine_module.devices, "resolve_placement", lambda *args, **kwargs: Placement(device=torch.device("meta")))
    placement = engine.set_device("cuda")
    assert sentinel_cleared
    assert engine.store.get("tiny_sam.pth").model.pixel_mean.device.type == "meta"
    assert placement.device.type == "meta" and engine.stats()["device"] == "meta"
    assert engine.device_preference == "cuda" and engine.settings.device == "cpu"  # the settings stay input


def test_unload_frees_models(engine):
    model_ref = weakref.ref(engine.store.get("tiny_sam.pth").model)
    engine.unload()
    gc.collect()
    assert model_ref() is None and engine.stats()["loaded_models"] == []


# ---------------------------------------------------------------- with the predictor

predictor_module = pytest.importorskip("sd_webui_sam.predictor")
Prompts = predictor_module.Prompts


def _reference_masks(reference, image, point):
    from segment_anything import SamPredictor

    predictor = SamPredictor(reference)
    predictor.set_image(image)
    masks, scores, logits = predictor.predict(point_coords=np.array([point]), point_labels=np.array([1]), multimask_output=True)
    return masks, scores


IMAGE = _image()
POINT = (60.0, 45.0)


def test_segment_matches_the_reference_and_reuses_embeddings(shared_engine, tiny_sam):
    _, reference = tiny_sam
    engine = shared_engine
    prediction = engine.segment("tiny_sam.pth", IMAGE, Prompts(points=[POINT], labels=[1]))
    expected_masks, expected_scores = _reference_masks(reference, IMAGE, POINT)
    assert prediction.masks.shape == (1, 3, 96, 128)
    np.testing.assert_allclose(prediction.scores[0], expected_scores, rtol=1e-3, atol=1e-4)
    agreement = (prediction.masks[0] == expected_masks).mean()
    assert agreement > 0.999

    misses = engine.stats()["embedding_cache"]["misses"]
    engine.segment("tiny_sam.pth", IMAGE.copy(), Prompts(points=[(70.0, 50.0)], labels=[1]))
    stats = engine.stats()["embedding_cache"]
    assert stats["misses"] == misses and stats["hits"] >= 1
    assert engine.stats()["loaded_models"] == ["tiny_sam.pth"]


def test_concurrent_segment_calls_are_serialised_and_agree(shared_engine):
    engine = shared_engine
    prompts = Prompts(points=[POINT], labels=[1])
    expected = engine.segment("tiny_sam.pth", IMAGE, prompts)
    results, errors = [], []

    def work():
        try:
            results.append(engine.segment("tiny_sam.pth", IMAGE, prompts))
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 4
    assert all(np.array_equal(result.masks, expected.masks) for result in results)


def test_renamed_copy_gives_the_same_masks(shared_engine):
    engine = shared_engine
    prompts = Prompts(points=[POINT], labels=[1])
    first = engine.segment("tiny_sam.pth", IMAGE, prompts)
    second = engine.segment("sam_vit_b_01ec64.pth", IMAGE, prompts)
    np.testing.assert_array_equal(first.masks, second.masks)
    # Same bytes under two names: one loaded model (issue 20), so its one embedding serves both.
    assert engine.stats()["loaded_models"] == ["tiny_sam.pth", "sam_vit_b_01ec64.pth"]
    assert engine.stats()["embedding_cache"]["entries"] == 1


def test_predictor_survives_unload_and_frees_embeddings(engine):
    predictor = engine.predictor("tiny_sam.pth")
    image = _image(3)
    predictor.encode(image)
    assert engine.stats()["embedding_cache"]["entries"] == 1
    engine.unload()
    assert engine.stats()["embedding_cache"]["entries"] == 0
    assert engine.stats()["loaded_models"] == []
    prediction = predictor.predict(image, Prompts(points=[(60.0, 45.0)], labels=[1]))  # reloads
    assert prediction.masks.shape[-2:] == (96, 128)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_offload_and_device_switch(model_dir):
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    engine = Engine(EngineSettings(user_model_dir=model_dir, device="cuda", offload_to_cpu=True))
    prompts = Prompts(points=[(60.0, 45.0)], labels=[1])
    on_gpu = engine.segment("tiny_sam.pth", _image(), prompts)
    assert not next(engine.store.get("tiny_sam.pth").model.parameters()).is_cuda  # rests on the CPU
    engine.set_device("cpu")
    on_cpu = engine.segment("tiny_sam.pth", _image(), prompts)
    assert (on_gpu.masks == on_cpu.masks).mean() > 0.999
    engine.set_device("cuda")
    engine.segment("tiny_sam.pth", _image(), prompts)
    engine.unload()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == baseline
