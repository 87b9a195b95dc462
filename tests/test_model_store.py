"""Model discovery across folders, descriptions, the LRU of loaded models, unload and offload."""
from __future__ import annotations

import gc
import os
import shutil
import threading
import weakref
from pathlib import Path

import pytest
import torch

from sd_webui_sam import model_store as model_store_module
from sd_webui_sam.devices import Placement
from sd_webui_sam.errors import CorruptCheckpointError, ModelNotFoundError, SamUserError, UnsafeCheckpointError
from sd_webui_sam.model_store import ModelStore
from sd_webui_sam.settings import MODEL_DIR_ENV, EngineSettings
from tools.fixtures.sam_checkpoints import save_state_dict


@pytest.fixture(autouse=True)
def _no_env_model_dir(monkeypatch):
    monkeypatch.delenv(MODEL_DIR_ENV, raising=False)


@pytest.fixture
def dirs(tmp_path):
    user, webui, extension = (tmp_path / "user", tmp_path / "webui_models_sam", tmp_path / "ext_models_sam")
    for directory in (user, webui, extension):
        directory.mkdir()
    return user, webui, extension


def _settings(dirs, **overrides) -> EngineSettings:
    user, webui, extension = dirs
    return EngineSettings(user_model_dir=user, default_model_dirs=(webui, extension), device="cpu", **overrides)


def _copy(source: Path, destination: Path) -> Path:
    shutil.copyfile(source, destination)
    return destination


def test_lists_only_real_checkpoints_sorted_and_first_folder_wins(tiny_sam, dirs):
    path, _ = tiny_sam
    user, webui, extension = dirs
    _copy(path, webui / "b_model.pth")
    _copy(path, extension / "A_model.safetensors")
    _copy(path, user / "c_model.PT")
    _copy(path, extension / "b_model.pth")  # shadowed by the webui copy
    for junk in ("PUT_YOUR_SAM_MODEL_HERE.txt", ".DS_Store", ".hidden.pth", "sam_vit_h.pth.part",
                 "sam_vit_l.pth.tmp", "sam_vit_b.pth.crdownload", "notes.md"):
        (webui / junk).write_bytes(b"junk")
    (webui / "zero_bytes.pth").write_bytes(b"")
    (webui / "a_folder.pth").mkdir()

    store = ModelStore(_settings(dirs))
    assert store.list_models() == ["A_model.safetensors", "b_model.pth", "c_model.PT"]
    assert store.resolve("b_model.pth") == (webui / "b_model.pth").resolve()


def test_env_dir_is_searched_after_user_dir_and_before_defaults(tiny_sam, dirs, tmp_path, monkeypatch):
    path, _ = tiny_sam
    user, webui, _ = dirs
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    monkeypatch.setenv(MODEL_DIR_ENV, str(env_dir))
    _copy(path, env_dir / "same.pth")
    _copy(path, webui / "same.pth")
    store = ModelStore(_settings(dirs))
    assert store.resolve("same.pth") == (env_dir / "same.pth").resolve()


def test_rescan_on_demand_and_on_unknown_name(tiny_sam, dirs):
    path, _ = tiny_sam
    user = dirs[0]
    store = ModelStore(_settings(dirs))
    assert store.list_models() == []
    _copy(path, user / "new.pth")
    assert store.list_models() == []  # cached listing until asked
    assert store.list_models(refresh=True) == ["new.pth"]
    _copy(path, user / "newer.pth")
    assert store.resolve("newer.pth").name == "newer.pth"  # an unknown name triggers a re-scan
    (user / "new.pth").unlink()
    assert store.list_models(refresh=True) == ["newer.pth"]


def test_missing_model_dir_is_not_an_error(tmp_path):
    store = ModelStore(EngineSettings(user_model_dir=tmp_path / "does_not_exist", device="cpu"))
    assert store.list_models() == []


@pytest.mark.parametrize("name", ["../secret.pth", "sub/model.pth", "..\\model.pth", "/etc/passwd", "..", "", "  "])
def test_names_with_paths_are_refused(tiny_sam, dirs, name):
    store = ModelStore(_settings(dirs))
    with pytest.raises(SamUserError):
        store.resolve(name)


def test_unknown_name_says_where_to_put_the_file(dirs):
    store = ModelStore(_settings(dirs))
    with pytest.raises(ModelNotFoundError) as raised:
        store.resolve("sam_vit_h_4b8939.pth")
    assert "sam_vit_h_4b8939.pth" in str(raised.value) and str(dirs[0]) in str(raised.value)


def test_describe_renamed_and_safetensors_copies_alike(tiny_sam, dirs):
    path, _ = tiny_sam
    user = dirs[0]
    _copy(path, user / "sam_vit_h_4b8939.pth")  # a misleading name: identification ignores it
    save_state_dict(torch.load(path, weights_only=True), user / "converted.safetensors")
    store = ModelStore(_settings(dirs))
    for name in ("sam_vit_h_4b8939.pth", "converted.safetensors"):
        description = store.describe(name)
        assert description.usable
        assert (description.spec.family, description.spec.variant) == ("sam", "custom")
    assert store.label("converted.safetensors") == "SAM ViT (custom: dim 32, depth 4) (converted.safetensors)"


def test_describe_is_cached_until_the_file_changes(tiny_sam, dirs, monkeypatch):
    path, _ = tiny_sam
    user = dirs[0]
    _copy(path, user / "model.pth")
    store = ModelStore(_settings(dirs))
    calls = []
    real_read_shapes = model_store_module.checkpoints.read_shapes
    monkeypatch.setattr(model_store_module.checkpoints, "read_shapes", lambda p: calls.append(p) or real_read_shapes(p))
    store.describe("model.pth")
    store.describe("model.pth")
    assert len(calls) == 1
    (user / "model.pth").write_text("now it is something else entirely")
    description = store.describe("model.pth")
    assert len(calls) == 2 and not description.usable and "model.pth" in description.error


def test_describe_reports_unusable_files_without_raising(tiny_sam, dirs, tmp_path):
    user = dirs[0]
    (user / "broken.pth").write_bytes(b"\x80\x02not really a pickle" * 10)
    torch.save({"w": torch.ones(2)}, user / "other_model.pth")
    store = ModelStore(_settings(dirs))
    assert not store.describe("broken.pth").usable
    assert "broken.pth (not usable:" in store.label("broken.pth")
    assert "tensors" in store.describe("other_model.pth").error


# ---------------------------------------------------------------- loading


def _store_with_models(tiny_sam, dirs, names, **settings):
    """The first name is the tiny SAM itself; each further one a different model (identical
    copies would share one loaded model)."""
    path, _ = tiny_sam
    _copy(path, dirs[0] / names[0])
    for index, name in enumerate(names[1:], start=1):
        weights = torch.load(path, weights_only=True)
        weights["mask_decoder.iou_token.weight"] = torch.full((1, 256), float(index))
        torch.save(weights, dirs[0] / name)
    return ModelStore(_settings(dirs, **settings))


def test_load_gives_the_reference_weights(tiny_sam, dirs):
    _, reference = tiny_sam
    store = _store_with_models(tiny_sam, dirs, ["m.pth"])
    loaded = store.get("m.pth")
    assert loaded.spec.family == "sam"
    assert torch.equal(loaded.model.state_dict()["image_encoder.blocks.1.attn.rel_pos_h"], reference.image_encoder.blocks[1].attn.rel_pos_h)
    assert not any(parameter.requires_grad for parameter in loaded.model.parameters())
    assert store.get("m.pth") is loaded  # cached


def test_lru_keeps_the_configured_number_of_models(tiny_sam, dirs):
    store = _store_with_models(tiny_sam, dirs, ["a.pth", "b.pth", "c.pth"], model_cache_size=2)
    first = store.get("a.pth")
    store.get("b.pth")
    store.get("a.pth")  # a is now the most recent
    store.get("c.pth")
    assert store.loaded_names() == ["a.pth", "c.pth"]
    assert store.get("a.pth") is first


def test_default_cache_holds_one_model_and_frees_the_previous(tiny_sam, dirs):
    store = _store_with_models(tiny_sam, dirs, ["a.pth", "b.pth"])
    model_ref = weakref.ref(store.get("a.pth").model)
    store.get("b.pth")
    gc.collect()
    assert store.loaded_names() == ["b.pth"]
    assert model_ref() is None


def test_unload_really_frees_the_model(tiny_sam, dirs):
    store = _store_with_models(tiny_sam, dirs, ["a.pth"])
    model_ref = weakref.ref(store.get("a.pth").model)
    store.unload()
    gc.collect()
    assert store.loaded_names() == []
    assert model_ref() is None
    assert store.get("a.pth").model is not None  # loads again after an unload


def test_replaced_file_is_reloaded(tiny_sam, dirs):
    store = _store_with_models(tiny_sam, dirs, ["a.pth"])
    first = store.get("a.pth")
    weights = torch.load(dirs[0] / "a.pth", weights_only=True)
    weights["mask_decoder.iou_token.weight"] = torch.full((1, 256), 7.0)
    torch.save(weights, dirs[0] / "a.pth")
    os.utime(dirs[0] / "a.pth", ns=(first.file_key[2] + 10**9, first.file_key[2] + 10**9))
    second = store.get("a.pth")
    assert second is not first
    assert torch.all(second.model.state_dict()["mask_decoder.iou_token.weight"] == 7.0)


def test_bad_files_fail_to_load_with_their_own_errors(tiny_sam, dirs):
    user = dirs[0]

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {user / 'PWNED'}",))

    torch.save({"x": Payload()}, user / "evil.pth")
    data = Path(tiny_sam[0]).read_bytes()
    (user / "truncated.pth").write_bytes(data[: len(data) // 3])
    store = ModelStore(_settings(dirs))
    with pytest.raises(UnsafeCheckpointError):
        store.get("evil.pth")
    with pytest.raises(CorruptCheckpointError, match="truncated.pth"):
        store.get("truncated.pth")
    assert not (user / "PWNED").exists()
    assert store.loaded_names() == []


def _spy_moves(model, moves):
    """Record where the store sends a model, without moving it (only a CPU is guaranteed here)."""
    real_to = model.to

    def to(*args, **kwargs):
        device = kwargs.get("device", args[0] if args else None)
        moves.append(torch.device(device).type if device is not None else None)
        return model

    model.to = to
    return real_to


def test_offload_moves_to_the_device_for_a_use_and_back(tiny_sam, dirs):
    store = _store_with_models(tiny_sam, dirs, ["a.pth"])
    store.set_placement(Placement(device=torch.device("cuda"), offload_to_cpu=True))
    loaded = store.get("a.pth")
    assert loaded.model.pixel_mean.device.type == "cpu"  # rests on the CPU
    moves = []
    _spy_moves(loaded.model, moves)
    with store.use("a.pth") as in_use:
        assert in_use is loaded
        assert moves == ["cuda"]
    assert moves == ["cuda", "cpu"]

    with pytest.raises(RuntimeError, match="boom"):
        with store.use("a.pth"):
            raise RuntimeError("boom")
    assert moves == ["cuda", "cpu", "cuda", "cpu"]


def test_without_offload_use_does_not_move_the_model(tiny_sam, dirs):
    store = _store_with_models(tiny_sam, dirs, ["a.pth"])
    moves = []
    _spy_moves(store.get("a.pth").model, moves)
    with store.use("a.pth"):
        pass
    assert moves == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_offload_on_a_real_gpu(tiny_sam, dirs):
    store = _store_with_models(tiny_sam, dirs, ["a.pth"])
    torch.cuda.synchronize()
    allocated_before = torch.cuda.memory_allocated()
    store.set_placement(Placement(device=torch.device("cuda"), offload_to_cpu=True))
    loaded = store.get("a.pth")
    assert next(loaded.model.parameters()).is_cuda is False
    with store.use("a.pth") as in_use:
        assert next(in_use.model.parameters()).is_cuda
    assert next(loaded.model.parameters()).is_cuda is False
    store.set_placement(Placement(device=torch.device("cuda")))
    assert next(loaded.model.parameters()).is_cuda
    assert torch.cuda.memory_allocated() > allocated_before
    del loaded
    store.unload()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == allocated_before


def test_set_placement_moves_loaded_models(tiny_sam, dirs):
    store = _store_with_models(tiny_sam, dirs, ["a.pth"])
    loaded = store.get("a.pth")
    store.set_placement(Placement(device=torch.device("cpu"), dtype=torch.float16))
    assert next(loaded.model.image_encoder.parameters()).dtype == torch.float16
    assert next(loaded.model.mask_decoder.parameters()).dtype == torch.float32  # decoders stay float32
    store.set_placement(Placement(device=torch.device("meta")))
    assert loaded.model.pixel_mean.device.type == "meta"
    assert next(loaded.model.parameters()).device.type == "meta"
    store.unload()
    # A model loaded after the switch lands on the new placement directly.
    assert next(store.get("a.pth").model.parameters()).device.type == "meta"


def test_concurrent_gets_load_once(tiny_sam, dirs, monkeypatch):
    store = _store_with_models(tiny_sam, dirs, ["a.pth"])
    loads = []
    real_load = store._load
    monkeypatch.setattr(store, "_load", lambda *args: loads.append(args[0]) or real_load(*args))
    results = []
    threads = [threading.Thread(target=lambda: results.append(store.get("a.pth"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1
    assert all(result is results[0] for result in results)
