"""The optional torch.compile of the encoder (EngineSettings.compile_encoder, the WebUI option
sam_compile_encoder, the app's --compile-encoder): used only where it works (CUDA with Triton),
cached per input shape, and a compile failure falls back to eager once and is remembered.

No GPU here: the availability check is forced and torch.compile replaced by a fake where the
compiled branch is under test.
"""
from __future__ import annotations

import logging
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sd_webui_sam import compiled_encoder, devices
from sd_webui_sam.app import build_parser, make_engine
from sd_webui_sam.compat.options import OPTIONS, engine_settings
from sd_webui_sam.engine import Engine
from sd_webui_sam.modeling import build_sam, forced_attention
from sd_webui_sam.prompts import Prompts
from sd_webui_sam.settings import MODEL_DIR_ENV, EngineSettings
from tools.fixtures.sam_checkpoints import TINY, randomise_


@pytest.fixture(autouse=True)
def _no_env_model_dir(monkeypatch):
    monkeypatch.delenv(MODEL_DIR_ENV, raising=False)


@pytest.fixture(scope="module")
def model_dir(tiny_sam, tmp_path_factory):
    folder = tmp_path_factory.mktemp("compile_models")
    shutil.copy(tiny_sam[0], folder / "tiny_sam.pth")
    return folder


def _image() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 255, size=(96, 128, 3), dtype=np.uint8)


PROMPTS = Prompts(points=[(60.0, 40.0)], labels=[1])


def test_setting_on_without_cuda_runs_eager_and_says_why(model_dir, monkeypatch):
    def no_compile(*args, **kwargs):
        raise AssertionError("torch.compile must not run on the CPU")

    monkeypatch.setattr(torch, "compile", no_compile)
    compiled = Engine(EngineSettings(user_model_dir=model_dir, device="cpu", compile_encoder=True))
    plain = Engine(EngineSettings(user_model_dir=model_dir, device="cpu"))
    assert compiled.stats()["encoder_compile"] == []  # nothing loaded yet
    ours = compiled.segment("tiny_sam.pth", _image(), PROMPTS)
    expected = plain.segment("tiny_sam.pth", _image(), PROMPTS)
    np.testing.assert_array_equal(ours.masks, expected.masks)
    np.testing.assert_array_equal(ours.scores, expected.scores)
    assert compiled.stats()["encoder_compile"] == [
        "tiny_sam.pth: eager: compiling the encoder needs a CUDA device (running on cpu)"]
    assert plain.stats()["encoder_compile"] == []


@pytest.mark.parametrize("device, triton, expected", [
    ("cpu", True, "needs a CUDA device (running on cpu)"),
    ("mps", True, "needs a CUDA device (running on mps)"),
    ("cuda", False, "needs Triton"),
    ("cuda:0", True, None),
])
def test_compile_is_used_only_on_cuda_with_triton(device, triton, expected, monkeypatch):
    real_find_spec = devices.importlib.util.find_spec
    monkeypatch.setattr(devices.importlib.util, "find_spec",
                        lambda name: (object() if triton else None) if name == "triton" else real_find_spec(name))
    reason = devices.encoder_compile_unavailable(torch.device(device))
    if expected is None:
        assert reason is None
    else:
        assert expected in reason


class FakeCompile:
    """Stands in for torch.compile: counts compiles and calls of what it compiled."""

    def __init__(self, fail_with: Exception | None = None):
        self.compiles = []
        self.calls = 0
        self.fail_with = fail_with

    def __call__(self, function, *, dynamic):
        self.compiles.append(dynamic)

        def compiled(pixels):
            self.calls += 1
            if self.fail_with is not None:
                raise self.fail_with
            return function(pixels)

        return compiled


@pytest.fixture
def tiny_model():
    model = build_sam({
        "encoder_embed_dim": TINY.embed_dim, "encoder_depth": TINY.depth, "encoder_num_heads": TINY.num_heads,
        "encoder_global_attn_indexes": tuple(TINY.global_attn_indexes), "image_size": 256,
    })
    return randomise_(model, seed=1)


@pytest.fixture
def compile_available(monkeypatch):
    monkeypatch.setattr(devices, "encoder_compile_unavailable", lambda device: None)


def _pixels(batch: int = 1, side: int = 256) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(batch))


def test_compiled_encoder_is_used_and_cached_per_shape(tiny_model, compile_available):
    with torch.inference_mode():
        expected_one = tiny_model.encode_image(_pixels(1))["image_embeddings"]
        expected_two = tiny_model.encode_image(_pixels(2))["image_embeddings"]
        fake = FakeCompile()
        runner = compiled_encoder.install(tiny_model, "tiny", compile_function=fake)
        assert compiled_encoder.install(tiny_model, "tiny", compile_function=fake) is runner  # once per model
        first = tiny_model.encode_image(_pixels(1))["image_embeddings"]
        again = tiny_model.encode_image(_pixels(1))["image_embeddings"]
        assert (len(fake.compiles), fake.calls) == (1, 2)
        batch = tiny_model.encode_image(_pixels(2))["image_embeddings"]
    assert fake.compiles == [False, False]  # dynamic=False: one compile per input shape
    assert fake.calls == 3
    assert [key[0] for key in runner.compiled_shapes()] == [(1, 3, 256, 256), (2, 3, 256, 256)]
    assert compiled_encoder.status_of(tiny_model) == "compiled (2 input shapes)"
    torch.testing.assert_close(first, expected_one, rtol=0, atol=0)
    torch.testing.assert_close(again, expected_one, rtol=0, atol=0)
    torch.testing.assert_close(batch, expected_two, rtol=0, atol=0)


def test_the_fused_encoder_traces_with_torch_compile(tiny_model, compile_available):
    """Real dynamo and AOT autograd (the "aot_eager" backend: inductor's tracing without its code
    generation, which needs Triton on CUDA), through the fused attention CUDA uses."""
    def aot_eager(function, *, dynamic):
        return torch.compile(function, backend="aot_eager", dynamic=dynamic)

    torch._dynamo.reset()
    with torch.inference_mode(), forced_attention(tiny_model, devices.ATTENTION_FUSED):
        expected = tiny_model.encode_image(_pixels(1))["image_embeddings"]
        compiled_encoder.install(tiny_model, "tiny", compile_function=aot_eager)
        features = tiny_model.encode_image(_pixels(1))
    assert compiled_encoder.status_of(tiny_model) == "compiled (1 input shape)"
    torch.testing.assert_close(features["image_embeddings"], expected, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


def test_compile_failure_falls_back_to_eager_once_and_is_remembered(tiny_model, compile_available, caplog):
    with torch.inference_mode():
        expected = tiny_model.encode_image(_pixels(1))["image_embeddings"]
        fake = FakeCompile(fail_with=RuntimeError("inductor: triton kernel failed to build\nlong traceback"))
        compiled_encoder.install(tiny_model, "tiny", compile_function=fake)
        with caplog.at_level(logging.INFO, logger=compiled_encoder.__name__):
            first = tiny_model.encode_image(_pixels(1))["image_embeddings"]
            second = tiny_model.encode_image(_pixels(1))["image_embeddings"]
            tiny_model.encode_image(_pixels(2))
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    torch.testing.assert_close(second, expected, rtol=0, atol=0)
    assert (len(fake.compiles), fake.calls) == (1, 1)  # never tried again, not even for a new shape
    status = compiled_encoder.status_of(tiny_model)
    assert status == "eager: torch.compile failed (RuntimeError: inductor: triton kernel failed to build)"
    assert [record.getMessage() for record in caplog.records] == [
        "tiny: torch.compile failed (RuntimeError: inductor: triton kernel failed to build); "
        "the encoder runs eager from now on"]


def test_out_of_memory_inside_the_compiled_encoder_is_not_a_compile_failure(tiny_model, compile_available):
    fake = FakeCompile(fail_with=torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    compiled_encoder.install(tiny_model, "tiny", compile_function=fake)
    with torch.inference_mode(), pytest.raises(torch.cuda.OutOfMemoryError):
        tiny_model.encode_image(_pixels(1))
    assert compiled_encoder.status_of(tiny_model) == "not used yet"
    fake.fail_with = None
    with torch.inference_mode():
        tiny_model.encode_image(_pixels(1))
    assert compiled_encoder.status_of(tiny_model) == "compiled (1 input shape)"


def test_state_dict_is_untouched_by_the_runner(tiny_model):
    keys = list(tiny_model.state_dict())
    compiled_encoder.install(tiny_model, "tiny", compile_function=FakeCompile())
    assert list(tiny_model.state_dict()) == keys


def test_app_flag_and_webui_option_turn_it_on(tmp_path):
    assert build_parser().parse_args([]).compile_encoder is False
    args = build_parser().parse_args(["--compile-encoder"])
    assert args.compile_encoder is True
    assert make_engine(str(tmp_path), "cpu", compile_encoder=args.compile_encoder).settings.compile_encoder is True
    assert make_engine(str(tmp_path), "cpu").settings.compile_encoder is False

    keys = [spec.key for spec in OPTIONS]
    assert keys.index("sam_compile_encoder") == keys.index("sam_precision") + 1  # shown with the device settings
    cmd_opts = SimpleNamespace()
    on = engine_settings(SimpleNamespace(data={"sam_compile_encoder": True}), cmd_opts, None, None)
    off = engine_settings(SimpleNamespace(data={}), cmd_opts, None, None)
    assert (on.compile_encoder, off.compile_encoder) == (True, False)


@pytest.mark.skipif(devices.encoder_compile_unavailable(torch.device("cuda")) is not None or not torch.cuda.is_available(),
                    reason="needs a CUDA device and Triton")
def test_on_cuda_the_engine_compiles_the_encoder(model_dir):
    compiled = Engine(EngineSettings(user_model_dir=model_dir, device="cuda", compile_encoder=True))
    plain = Engine(EngineSettings(user_model_dir=model_dir, device="cuda"))
    ours = compiled.predictor("tiny_sam.pth").encode(_image()).features["image_embeddings"]
    expected = plain.predictor("tiny_sam.pth").encode(_image()).features["image_embeddings"]
    assert compiled.stats()["encoder_compile"] == ["tiny_sam.pth: compiled (1 input shape)"]
    torch.testing.assert_close(ours, expected, rtol=1e-3, atol=1e-3)
