"""Memory: a loaded model is the checkpoint file's memory map (no second copy, no random init),
identical files share one model and its embeddings, and /sam/v2/unload frees and reports."""
from __future__ import annotations

import gc
import shutil
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from sd_webui_sam import checkpoints
from sd_webui_sam.engine import Engine
from sd_webui_sam.predictor import Prompts
from sd_webui_sam.settings import EngineSettings
from sd_webui_sam.weights import tensor_bytes
from tests.fixtures.text_prompt_fixtures import tiny_shape, write_tiny_gdino, write_tiny_vocab
from tools.fixtures.sam_checkpoints import save_state_dict

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")


def _mapped_ranges(path: Path):
    """(start, end) of every mapping of ``path`` in this process."""
    ranges = []
    target = str(Path(path).resolve())
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip() == target:
                start, end = (int(value, 16) for value in fields[0].split("-"))
                ranges.append((start, end))
    return ranges


def _assert_weights_are_the_file(model: torch.nn.Module, path: Path) -> None:
    ranges = _mapped_ranges(path)
    assert ranges, f"{path.name} is not memory-mapped"
    outside = [name for name, parameter in model.named_parameters()
               if not any(start <= parameter.data_ptr() < end for start, end in ranges)]
    assert not outside, f"parameters copied out of the file: {outside[:5]}"


def _sam_engine(folder: Path, **settings) -> Engine:
    return Engine(EngineSettings(user_model_dir=folder, device="cpu", **settings))


@linux_only
@pytest.mark.parametrize("file_name", ["sam.pth", "sam.safetensors"])
def test_sam_weights_are_the_mapped_file(tiny_sam, tmp_path, file_name):
    path, reference = tiny_sam
    target = tmp_path / file_name
    save_state_dict(torch.load(path, weights_only=True), target)
    loaded = _sam_engine(tmp_path).store.get(file_name)
    _assert_weights_are_the_file(loaded.model, target)
    assert torch.equal(loaded.model.image_encoder.blocks[1].attn.rel_pos_h, reference.image_encoder.blocks[1].attn.rel_pos_h)
    # The computed buffers exist (they are not in the file) and are right.
    assert torch.allclose(loaded.model.pixel_mean.flatten(), reference.pixel_mean.flatten())


@linux_only
@pytest.mark.parametrize("kind", ["sam_hq", "mobile_sam"])
def test_hq_and_mobile_sam_weights_are_the_mapped_file(tmp_path, kind):
    hq = pytest.importorskip("tools.fixtures.hq_checkpoints")
    pytest.importorskip("segment_anything_hq" if kind == "sam_hq" else "mobile_sam")
    reference = hq.build_reference_hq_sam(seed=1) if kind == "sam_hq" else hq.build_reference_mobile_sam(seed=1)
    path = save_state_dict(hq.float_state_dict(reference), tmp_path / f"{kind}.pth")
    engine = _sam_engine(tmp_path)
    loaded = engine.store.get(path.name)
    assert loaded.spec.family == kind
    _assert_weights_are_the_file(loaded.model, path)
    # It works: the encoder runs on the mapped weights and the computed TinyViT/HQ buffers.
    engine.segment(path.name, np.full((40, 50, 3), 90, np.uint8), Prompts(points=[(20.0, 20.0)], labels=[1]))


@linux_only
def test_groundingdino_weights_are_the_mapped_file(tmp_path):
    from local_groundingdino.detector import load_detector
    from sd_webui_sam.devices import Placement

    path = write_tiny_gdino(tmp_path / "gdino", "tiny.pth")
    detector = load_detector(path, Placement(torch.device("cpu")), tokenizer_dir=write_tiny_vocab(tmp_path / "vocab"))
    _assert_weights_are_the_file(detector.model, path)
    assert detector.model.bert.embeddings.word_embeddings.weight.shape[0] == tiny_shape().bert.vocab_size
    assert detector.detect(np.full((64, 80, 3), 120, np.uint8), "dog", box_threshold=0.0, text_threshold=0.0)


def test_no_random_initialisation_touches_real_memory(tiny_sam, tmp_path, monkeypatch):
    """Every init function that runs while loading runs on the meta device (no memory, no time)."""
    shutil.copy(tiny_sam[0], tmp_path / "m.pth")
    touched = []
    for name in ("uniform_", "normal_", "kaiming_uniform_", "trunc_normal_", "zeros_", "ones_", "constant_"):
        real = getattr(torch.nn.init, name)

        def spy(tensor, *args, _real=real, **kwargs):
            if not tensor.is_meta:
                touched.append(tuple(tensor.shape))
            return _real(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.nn.init, name, spy)
    _sam_engine(tmp_path).store.get("m.pth")
    assert touched == []


def test_loading_works_while_the_host_has_swapped_load_state_dict(tiny_sam, tmp_path, monkeypatch):
    """A1111 replaces nn.Module.load_state_dict (with a version that takes no ``assign``) while it
    loads an SD checkpoint in another thread; a SAM model loaded meanwhile must not fail."""
    def hosts_load_state_dict(module, state_dict, strict=True):
        raise AssertionError("the host's load_state_dict must not be needed")

    monkeypatch.setattr(torch.nn.Module, "load_state_dict", hosts_load_state_dict)
    shutil.copy(tiny_sam[0], tmp_path / "m.pth")
    model = _sam_engine(tmp_path).store.get("m.pth").model
    reference = tiny_sam[1].state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, reference[name]), name


def test_a_renamed_copy_shares_the_model_and_its_embeddings(tiny_sam, tmp_path):
    shutil.copy(tiny_sam[0], tmp_path / "a.pth")
    shutil.copy(tiny_sam[0], tmp_path / "renamed copy.pth")
    engine = _sam_engine(tmp_path, model_cache_size=2)
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    prompts = Prompts(points=[(30.0, 20.0)], labels=[1])
    first = engine.segment("a.pth", image, prompts)
    second = engine.segment("renamed copy.pth", image, prompts)
    assert engine.store.get("a.pth") is engine.store.get("renamed copy.pth")
    assert engine.store.loaded_names() == ["a.pth", "renamed copy.pth"]
    stats = engine.embeddings.stats()
    assert (stats["entries"], stats["misses"], stats["hits"]) == (1, 1, 1)  # the encoder ran once
    assert np.array_equal(first.masks, second.masks)
    memory = engine.memory()
    assert [model["names"] for model in memory["models"]] == [["a.pth", "renamed copy.pth"]]


def test_same_size_and_sampled_bytes_but_different_weights_are_two_models(tiny_sam, tmp_path, monkeypatch):
    """The cheap fingerprint only nominates; the full sha256 decides."""
    weights = torch.load(tiny_sam[0], weights_only=True)
    save_state_dict(weights, tmp_path / "a.pth")
    weights["mask_decoder.iou_token.weight"] = weights["mask_decoder.iou_token.weight"] + 1.0
    save_state_dict(weights, tmp_path / "b.pth")
    assert (tmp_path / "a.pth").stat().st_size == (tmp_path / "b.pth").stat().st_size
    monkeypatch.setattr(checkpoints, "sampled_fingerprint", lambda path: "same for every file")
    store = _sam_engine(tmp_path, model_cache_size=2).store
    a, b = store.get("a.pth"), store.get("b.pth")
    assert a is not b
    assert not torch.equal(a.model.mask_decoder.iou_token.weight, b.model.mask_decoder.iou_token.weight)


@pytest.mark.parametrize("replaced_name", ["a.pth", "b.pth"])  # the file the model was loaded from, or its copy
def test_replacing_one_copy_leaves_the_other_on_the_shared_model(tiny_sam, tmp_path, replaced_name):
    shutil.copy(tiny_sam[0], tmp_path / "a.pth")
    shutil.copy(tiny_sam[0], tmp_path / "b.pth")
    kept_name = "b.pth" if replaced_name == "a.pth" else "a.pth"
    store = _sam_engine(tmp_path, model_cache_size=2).store
    shared = store.get("a.pth")
    assert store.get("b.pth") is shared
    weights = torch.load(tiny_sam[0], weights_only=True)
    weights["mask_decoder.iou_token.weight"] = torch.full((1, 256), 5.0)
    (tmp_path / replaced_name).unlink()  # a new file (new inode), as a download or copy would leave it
    torch.save(weights, tmp_path / replaced_name)
    replaced = store.get(replaced_name)
    assert replaced is not shared and store.get(kept_name) is shared
    assert torch.all(replaced.model.mask_decoder.iou_token.weight == 5.0)
    assert shared.names == [kept_name] and shared.model is not None
    assert sorted(store.loaded_names()) == ["a.pth", "b.pth"]


def _gdino_engine(tmp_path: Path, **settings) -> Engine:
    return Engine(EngineSettings(user_model_dir=tmp_path, device="cpu", gdino_user_model_dir=tmp_path / "gdino",
                                 gdino_tokenizer_dir=write_tiny_vocab(tmp_path / "vocab"), gdino_short_side=64,
                                 gdino_max_side=96, **settings))


def test_a_renamed_groundingdino_copy_shares_the_loaded_detector(tmp_path):
    folder = tmp_path / "gdino"
    original = write_tiny_gdino(folder, "tiny.pth", seed=0)
    shutil.copy(original, folder / "renamed copy.pth")
    write_tiny_gdino(folder, "other.pth", seed=1)  # the same size, other weights
    engine = _gdino_engine(tmp_path, gdino_cache_size=2)
    picture = np.full((64, 80, 3), 100, np.uint8)
    first = engine.detect("tiny.pth", picture, "dog", box_threshold=0.0, text_threshold=0.0)
    second = engine.detect("renamed copy.pth", picture, "dog", box_threshold=0.0, text_threshold=0.0)
    assert engine.detectors.detector("tiny.pth") is engine.detectors.detector("renamed copy.pth")
    assert [d.box for d in first] == [d.box for d in second]
    assert [d["names"] for d in engine.memory()["detectors"]] == [["tiny.pth", "renamed copy.pth"]]
    other = engine.detectors.detector("other.pth")
    assert other is not engine.detectors.detector("tiny.pth")
    assert len(engine.memory()["detectors"]) == 2
    # A third distinct model with a cache of two: the least recently used detector leaves; the
    # shared one was used last (under one of its names) and stays with both.
    write_tiny_gdino(folder, "third.pth", seed=2)
    engine.detectors.detector("third.pth")
    assert sorted(engine.detectors.loaded()) == ["renamed copy.pth", "third.pth", "tiny.pth"]


def test_a_replaced_groundingdino_file_is_loaded_anew(tmp_path):
    folder = tmp_path / "gdino"
    write_tiny_gdino(folder, "a.pth", seed=0)
    shutil.copy(folder / "a.pth", folder / "b.pth")
    store = _gdino_engine(tmp_path, gdino_cache_size=2).detectors
    shared = store.detector("a.pth")
    assert store.detector("b.pth") is shared
    (folder / "b.pth").unlink()
    write_tiny_gdino(folder, "b.pth", seed=3)
    replaced = store.detector("b.pth")
    assert replaced is not shared and store.detector("a.pth") is shared
    assert not torch.equal(next(replaced.model.parameters()), next(shared.model.parameters()))


def test_unload_route_frees_everything_and_says_how_much(tiny_sam, tmp_path):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from sd_webui_sam.api import mount_api

    shutil.copy(tiny_sam[0], tmp_path / "tiny.pth")
    engine = _sam_engine(tmp_path)
    app = FastAPI()
    mount_api(app, engine)
    image = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    engine.segment("tiny.pth", image, Prompts(points=[(30.0, 20.0)], labels=[1]))
    model_ref = weakref.ref(engine.store.get("tiny.pth").model)
    expected_model_bytes = sum(t.numel() * t.element_size() for t in [*tiny_sam[1].parameters(), *tiny_sam[1].buffers()])
    embedding_bytes = engine.embeddings.nbytes
    assert embedding_bytes > 0

    with TestClient(app) as client:
        loaded = client.get("/sam/v2/health").json()["loaded"]
        assert [model["names"] for model in loaded["models"]] == [["tiny.pth"]]
        assert loaded["models"][0]["bytes"] == expected_model_bytes
        freed = client.post("/sam/v2/unload").json()["freed"]
        assert [model["names"] for model in freed["models"]] == [["tiny.pth"]]
        assert freed["models"][0]["bytes"] == expected_model_bytes
        assert freed["embeddings"] == {"entries": 1, "bytes": embedding_bytes}
        assert freed["total_bytes"] == expected_model_bytes + embedding_bytes
        gc.collect()
        assert model_ref() is None
        assert engine.store.loaded_names() == [] and len(engine.embeddings) == 0
        after = client.get("/sam/v2/health").json()["loaded"]
        assert after["models"] == [] and after["total_bytes"] == 0
        assert client.post("/sam/v2/unload").json()["freed"]["total_bytes"] == 0  # nothing left: still fine


def test_engine_memory_counts_detectors(tmp_path):
    vocab = write_tiny_vocab(tmp_path / "vocab")
    write_tiny_gdino(tmp_path / "gdino", "tiny_gdino.pth")
    engine = Engine(EngineSettings(user_model_dir=tmp_path, device="cpu", gdino_user_model_dir=tmp_path / "gdino",
                                   gdino_tokenizer_dir=vocab, gdino_short_side=64, gdino_max_side=96))
    engine.detect("tiny_gdino.pth", np.full((64, 80, 3), 100, np.uint8), "dog")
    detectors = engine.memory()["detectors"]
    assert [d["name"] for d in detectors] == ["tiny_gdino.pth"]
    assert detectors[0]["bytes"] == tensor_bytes(engine.detectors.detector("tiny_gdino.pth").model) > 0
    assert engine.unload()["detectors"] == detectors
    assert engine.memory()["detectors"] == [] and engine.detectors.loaded() == []


# ----------------------------------------------------------------------------- peak RSS, fresh process each

def _medium_sam(path: Path) -> Path:
    """SAM with ViT-B's width and 3 blocks (about 130 MB): big enough that a copy would show."""
    from sd_webui_sam.modeling import build_sam

    model = build_sam({"encoder_embed_dim": 768, "encoder_depth": 3, "encoder_num_heads": 12,
                       "encoder_global_attn_indexes": (2,)})
    return save_state_dict(model.state_dict(), path)


def _medium_gdino(path: Path) -> Path:
    """GroundingDINO with bert-base's vocabulary (the bundled tokenizer's) and fewer, narrower layers."""
    from local_groundingdino.model import GroundingDino, GroundingDinoShape
    from local_groundingdino.swin import SwinShape
    from local_groundingdino.text_encoder import BertShape
    from local_groundingdino.transformer import TransformerShape
    from tools.fixtures.gdino_checkpoints import official_layout

    shape = GroundingDinoShape(
        swin=SwinShape(embed_dim=96, depths=(2, 2, 2, 2)),
        bert=BertShape(hidden_size=384, num_layers=2, intermediate_size=1536),
        transformer=TransformerShape(encoder_layers=2, decoder_layers=2),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": official_layout(GroundingDino(shape).state_dict(), decoder_layers=2)}, str(path))
    return path


def _medium_sam2(path: Path) -> Path:
    """SAM 2.1 Hiera-T's image model (about 120 MB) plus the video-only tensors our loader skips."""
    from tools.fixtures.sam2_checkpoints import write_tiny_sam2

    hiera_t = dict(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
                   window_spec=(8, 4, 14, 7), window_pos_embed_bkg_spatial_size=(7, 7))
    return write_tiny_sam2(path, config=hiera_t)


@linux_only
@pytest.mark.parametrize("family", ["sam", "gdino", "sam2"])
def test_peak_memory_while_loading_stays_near_the_file_size(tmp_path, family):
    from tools.bench_memory import measure

    write = {"sam": _medium_sam, "gdino": _medium_gdino, "sam2": _medium_sam2}[family]
    path = write(tmp_path / f"medium_{family}.pth")
    size = path.stat().st_size
    assert size > 80 * 2**20
    figures = measure("ours", family, path, use=False, timeout=300)
    # Building with random init and copying the file in would peak at about 2x the file.
    assert figures["load_peak"] <= 1.3 * size, figures


# ----------------------------------------------------------------------------- beside Stable Diffusion

class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _segment_once(engine: Engine, name: str = "m.pth") -> None:
    engine.segment(name, np.full((40, 50, 3), 90, np.uint8), Prompts(points=[(20.0, 20.0)], labels=[1]))


def _use_once(engine: Engine, name: str = "m.pth") -> None:
    with engine.use_predictor(name):
        pass  # loaded, and used as far as the engine can tell


def test_models_unload_after_the_idle_minutes_counted_from_the_last_use(tiny_sam, tmp_path):
    shutil.copy(tiny_sam[0], tmp_path / "m.pth")
    clock = _Clock()
    engine = Engine(EngineSettings(user_model_dir=tmp_path, device="cpu", unload_after_idle_minutes=2), clock=clock)
    _segment_once(engine)
    clock.now += 100
    _segment_once(engine)  # a use restarts the countdown
    clock.now += 119
    assert not engine.unload_if_idle() and engine.store.loaded_names() == ["m.pth"]
    clock.now += 1
    assert engine.unload_if_idle()
    assert engine.store.loaded_names() == [] and len(engine.embeddings) == 0
    assert engine.memory()["total_bytes"] == 0
    assert not engine.unload_if_idle()  # nothing left to unload: nothing happens


def test_the_idle_unload_runs_by_itself_on_one_thread_and_never_with_zero(tiny_sam, tmp_path):
    shutil.copy(tiny_sam[0], tmp_path / "m.pth")
    never = _sam_engine(tmp_path)
    _use_once(never)
    assert never._idle_watcher is None and never.idle_limit_s == 0
    engine = _sam_engine(tmp_path, unload_after_idle_minutes=0.005)  # 0.3 s
    for _ in range(3):
        _use_once(engine)
    watchers = [thread for thread in threading.enumerate() if thread is engine._idle_watcher]
    assert len(watchers) == 1 and watchers[0].daemon
    deadline = time.monotonic() + 30
    while engine.store.loaded_names() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.store.loaded_names() == []
    _use_once(engine)  # used again: loaded again, and unloaded again by the same thread
    assert engine._idle_watcher is watchers[0]
    deadline = time.monotonic() + 30
    while engine.store.loaded_names() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.store.loaded_names() == [] and engine._idle_watcher.is_alive()
    assert never.store.loaded_names() == ["m.pth"]


def test_move_to_cpu_does_nothing_on_the_cpu(tiny_sam, tmp_path):
    shutil.copy(tiny_sam[0], tmp_path / "m.pth")
    engine = _sam_engine(tmp_path)
    _segment_once(engine)
    assert engine.move_to_cpu() == 0
    assert len(engine.embeddings) == 1 and engine.store.loaded_names() == ["m.pth"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_move_to_cpu_frees_the_gpu_until_the_next_use(tiny_sam, tmp_path):
    shutil.copy(tiny_sam[0], tmp_path / "m.pth")
    vocab = write_tiny_vocab(tmp_path / "vocab")
    write_tiny_gdino(tmp_path / "gdino", "tiny_gdino.pth")
    engine = Engine(EngineSettings(user_model_dir=tmp_path, device="cuda", gdino_user_model_dir=tmp_path / "gdino",
                                   gdino_tokenizer_dir=vocab, gdino_short_side=64, gdino_max_side=96))
    picture = np.full((64, 80, 3), 100, np.uint8)
    before = engine.segment("m.pth", picture, Prompts(points=[(20.0, 20.0)], labels=[1]))
    engine.detect("tiny_gdino.pth", picture, "dog")
    on_gpu = torch.cuda.memory_allocated()
    freed = engine.move_to_cpu()
    assert freed >= engine.memory()["total_bytes"] > 0
    assert torch.cuda.memory_allocated() <= on_gpu - engine.memory()["total_bytes"]
    assert {m["device"] for m in engine.memory()["models"] + engine.memory()["detectors"]} == {"cpu"}
    assert len(engine.embeddings) == 0
    after = engine.segment("m.pth", picture, Prompts(points=[(20.0, 20.0)], labels=[1]))
    assert np.array_equal(before.masks, after.masks)
    assert next(engine.store.get("m.pth").model.parameters()).is_cuda
    assert engine.memory()["models"][0]["device"].startswith("cuda")
    engine.detect("tiny_gdino.pth", picture, "dog")
    assert next(engine.detectors.detector("tiny_gdino.pth").model.parameters()).is_cuda


def _spy_on_move_to_cpu(engine: Engine, monkeypatch) -> list:
    calls = []

    def move_to_cpu():
        calls.append(True)
        return 123 * 2**20

    monkeypatch.setattr(engine, "move_to_cpu", move_to_cpu)
    return calls


def test_a1111_generation_moves_our_models_to_the_cpu_when_short_of_vram(make_webui, monkeypatch):
    from sd_webui_sam.compat.session import host_session

    webui = make_webui()
    from modules import shared  # the stand-in WebUI's, importable once it exists

    calls = _spy_on_move_to_cpu(host_session().engine(), monkeypatch)
    webui.generate_txt2img({})
    assert calls == []  # plenty of VRAM: ours stay where they are
    for flag in ("lowvram", "medvram"):
        monkeypatch.setattr(shared.cmd_opts, flag, True)
        webui.generate_txt2img({})
        monkeypatch.setattr(shared.cmd_opts, flag, False)
    assert calls == [True, True]
    monkeypatch.setattr(shared.cmd_opts, "medvram_sdxl", True)
    webui.generate_txt2img({})  # --medvram-sdxl with an SD 1.5 model: no
    assert calls == [True, True]
    monkeypatch.setitem(shared.opts.data, "sam_move_to_cpu_while_generating", True)
    webui.generate_txt2img({})
    assert calls == [True, True, True]


def test_forge_frees_our_vram_through_its_memory_management(make_webui, monkeypatch):
    import enum
    import types

    from sd_webui_sam.compat.host_memory import FORGE_HOOK_MARK
    from sd_webui_sam.compat.session import host_session

    forge_calls = []
    memory_management = types.SimpleNamespace(
        vram_state=enum.Enum("VRAMState", "NORMAL_VRAM LOW_VRAM").NORMAL_VRAM,
        get_free_memory=lambda device=None: 3 * 2**30,
        free_memory=lambda memory_required, device, keep_loaded=[]: forge_calls.append(memory_required),
    )
    backend = types.ModuleType("backend")
    backend.memory_management = memory_management
    monkeypatch.setitem(sys.modules, "backend", backend)
    monkeypatch.setitem(sys.modules, "backend.memory_management", memory_management)
    webui = make_webui(controlnet="forge")
    webui.load_scripts()  # "Reload UI": the hook is not stacked
    assert getattr(memory_management.free_memory, FORGE_HOOK_MARK)
    assert not getattr(memory_management.free_memory.__wrapped__, FORGE_HOOK_MARK, False)
    calls = _spy_on_move_to_cpu(host_session().engine(), monkeypatch)
    cuda = torch.device("cuda", 0)
    memory_management.free_memory(2 * 2**30, cuda)  # room enough: ours stay
    memory_management.free_memory(5 * 2**30, torch.device("cpu"))  # the CPU: not our concern
    assert calls == [] and forge_calls == [2 * 2**30, 5 * 2**30]
    memory_management.free_memory(4 * 2**30, cuda, keep_loaded=[])  # short: ours leave first
    assert calls == [True] and forge_calls[-1] == 4 * 2**30
    memory_management.vram_state = type(memory_management.vram_state).LOW_VRAM
    memory_management.free_memory(1, cuda)  # Forge's low-VRAM mode: always
    assert calls == [True, True]


def test_the_panel_shows_what_is_loaded_and_frees_it(tiny_sam, tmp_path):
    import gradio as gr

    from sd_webui_sam.ui.panel import PanelOptions, build_panel

    shutil.copy(tiny_sam[0], tmp_path / "m.pth")
    engine = _sam_engine(tmp_path)
    with gr.Blocks() as demo:
        panel = build_panel(PanelOptions(prefix="t_sam", engine=lambda: engine, accordion=False))
    ids = {c.get("props", {}).get("elem_id") for c in demo.get_config_file()["components"]}
    assert {"t_sam_memory", "t_sam_free_memory"} <= ids
    assert "Nothing loaded." in panel.extra["memory_line"].value
    functions = demo.fns.values() if isinstance(demo.fns, dict) else demo.fns  # gradio 4: a dict by id
    by_name = {getattr(f.fn, "__name__", ""): f.fn for f in functions}
    _segment_once(engine)
    line = by_name["refresh_memory_line"]()
    model = engine.memory()["models"][0]
    assert f"{model['label']} {model['bytes'] / 2**20:.0f} MiB (cpu)" in line and "1 image embedding " in line and "in all" in line
    line, status = by_name["free_memory"]()
    assert "Nothing loaded." in line and "Freed" in status and "MiB" in status
    assert engine.store.loaded_names() == []
    line, status = by_name["free_memory"]()
    assert "Nothing was loaded." in status
