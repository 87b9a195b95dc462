"""Several images per image-encoder pass (Predictor.encode_many) and batch mode's groups: the same
embeddings and masks as one image at a time, cache hits not encoded again, out of memory halving
the batch size (and the smaller size kept), and a bad file in a group reported while the rest of
the group is written."""
from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from sd_webui_sam import batch, checkpoints, devices, model_registry
from sd_webui_sam.autosam.generator import AutoSamConfig, generate_masks
from sd_webui_sam.batch import BatchOptions, run_batch
from sd_webui_sam.devices import Placement
from sd_webui_sam.embedding_cache import EmbeddingCache
from sd_webui_sam.engine import Engine
from sd_webui_sam.predictor import STRETCH, Predictor, Prompts
from sd_webui_sam.settings import EngineSettings
from tests.fixtures.api_fixtures import FixedDetector, png_bytes, sample_image, use_fixed_detector
from tools.fixtures.hq_checkpoints import HQ_VIT_B_REDUCED, build_reference_hq_sam, build_reference_hq_tiny, save_state_dict
from tools.fixtures.sam2_checkpoints import write_tiny_sam2

CPU = Placement(device=torch.device("cpu"))
#: Pictures of other sizes and aspects, so each is resized, padded or stretched differently
#: before they are stacked into one batch.
SHAPES = ((96, 128), (150, 60), (64, 64), (33, 200), (120, 90))


def load_model(path: Path) -> torch.nn.Module:
    state = checkpoints.load_state_dict(path)
    spec = model_registry.identify({name: tuple(tensor.shape) for name, tensor in state.items()})
    return model_registry.build_model(spec, state).eval()


def write_checkpoint(family: str, folder: Path, tiny_sam) -> Path:
    if family == "sam":
        return tiny_sam[0]
    if family == "sam2":
        torch.manual_seed(0)
        return write_tiny_sam2(folder / "sam2.1_hiera_tiny_reduced.pt")
    if family == "hq_vit":
        return save_state_dict(build_reference_hq_sam(HQ_VIT_B_REDUCED, seed=2).state_dict(), folder / "hq_vit.pth")
    return save_state_dict(build_reference_hq_tiny(seed=5).state_dict(), folder / "hq_tiny.pth")


@pytest.fixture(scope="module", params=["sam", "sam2", "hq_vit", "hq_tinyvit"])
def model(request, tiny_sam, tmp_path_factory):
    return load_model(write_checkpoint(request.param, tmp_path_factory.mktemp(request.param), tiny_sam))


def pictures():
    return [sample_image(height, width, seed=index) for index, (height, width) in enumerate(SHAPES)]


def clicks(image: np.ndarray) -> Prompts:
    height, width = image.shape[:2]
    return Prompts(points=[(width * 0.45, height * 0.5), (width * 0.1, height * 0.1)], labels=[1, 0],
                   boxes=[(width * 0.2, height * 0.2, width * 0.8, height * 0.9)])


class CountingEncoder:
    """Counts a model's encoder passes and the images in each (``install`` wraps its
    encode_image and encode_images); fails with CUDA's out-of-memory error for a batch larger
    than ``fits``."""

    def __init__(self, model: torch.nn.Module, fits: int = 10**6) -> None:
        self.model = model
        self.fits = fits
        self.batches = []
        self.inner = (model.encode_image, model.encode_images)
        self._inside = False

    def install(self) -> "CountingEncoder":
        self.model.encode_image = lambda pixels: self._pass(self.inner[0], pixels)
        self.model.encode_images = lambda pixels: self._pass(self.inner[1], pixels)
        return self

    def remove(self) -> None:
        del self.model.encode_image, self.model.encode_images

    def _pass(self, encode, pixels):
        if self._inside:  # encode_images built on encode_image: one pass
            return encode(pixels)
        self.batches.append(int(pixels.shape[0]))
        if pixels.shape[0] > self.fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self._inside = True
        try:
            return encode(pixels)
        finally:
            self._inside = False


def test_encode_many_equals_encode_one_at_a_time(model):
    images = pictures()
    alone = Predictor(model, CPU, EmbeddingCache(max_entries=0))
    together = Predictor(model, CPU, EmbeddingCache(max_entries=0), encode_batch_size=3)
    counter = CountingEncoder(model).install()
    try:
        batched = together.encode_many(images)
    finally:
        counter.remove()
    assert counter.batches == [3, 2]  # five pictures, at most three a pass
    for image, encoded in zip(images, batched):
        single = alone.encode(image)
        assert encoded.original_size == single.original_size
        assert encoded.input_size == single.input_size
        if model.input_geometry == STRETCH:
            assert encoded.input_size == (model.image_size, model.image_size)
        assert set(encoded.features) == set(single.features)
        for name, tensor in single.features.items():
            assert encoded.features[name].shape == tensor.shape
            torch.testing.assert_close(encoded.features[name], tensor, rtol=1e-4, atol=1e-5)
        # each image's entry owns its features: nothing else of the batch kept alive with it
        assert encoded.nbytes == single.nbytes
        assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in encoded.features.values())
        expected = alone.predict(single, clicks(image))
        got = together.predict(encoded, clicks(image))
        assert np.array_equal(got.masks, expected.masks)
        np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-4, atol=1e-5)


def test_cached_images_are_not_encoded_again(tiny_sam):
    model = load_model(tiny_sam[0])
    images = pictures()
    predictor = Predictor(model, CPU, EmbeddingCache(max_entries=16), encode_batch_size=8)
    predictor.encode(images[1])
    predictor.encode(images[3])
    counter = CountingEncoder(model).install()
    # two cached, three not, one of them asked for twice
    batched = predictor.encode_many(images + [images[0].copy()])
    assert counter.batches == [3]
    assert len(batched) == 6
    assert batched[5] is batched[0]
    again = predictor.encode_many(images)
    assert counter.batches == [3]  # everything cached now
    assert [a is b for a, b in zip(again, batched)] == [True] * 5


def test_out_of_memory_halves_the_batch_and_remembers_it(tiny_sam, monkeypatch):
    model = load_model(tiny_sam[0])
    images = pictures()
    released = []
    real_release = devices.release_memory
    monkeypatch.setattr("sd_webui_sam.predictor.release_memory", lambda: (released.append(1), real_release()))
    predictor = Predictor(model, CPU, EmbeddingCache(max_entries=0), encode_batch_size=8)
    counter = CountingEncoder(model, fits=2).install()
    encoded = predictor.encode_many(images)
    assert counter.batches == [5, 2, 2, 1]  # five do not fit; then two at a time
    assert predictor.encode_batch_size == 2
    assert released
    reference = Predictor(model, CPU, EmbeddingCache(max_entries=0))
    counter.remove()
    for image, item in zip(images, encoded):
        torch.testing.assert_close(item.features["image_embeddings"], reference.encode(image).features["image_embeddings"],
                                   rtol=1e-4, atol=1e-5)
    counter.install()
    counter.batches.clear()
    predictor.encode_many(images)
    assert counter.batches == [2, 2, 1]  # the next call starts at the size that worked
    counter.fits = 0
    counter.batches.clear()
    with pytest.raises(torch.cuda.OutOfMemoryError):
        predictor.encode_many(images[:3])  # one image at a time and still out of memory: as encode
    assert counter.batches == [2, 1]
    assert predictor.encode_batch_size == 1


def test_the_default_batch_size_is_one_on_the_cpu_and_more_on_accelerators(tiny_sam):
    assert devices.default_encode_batch(torch.device("cpu")) == 1
    assert devices.default_encode_batch(torch.device("mps")) > 1
    assert Predictor(load_model(tiny_sam[0]), CPU).encode_batch_size == 1


# -- the engine keeps what out of memory taught it ----------------------------------------------


@pytest.fixture
def model_dir(tiny_sam, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "tiny_sam.pth").write_bytes(Path(tiny_sam[0]).read_bytes())
    return folder


def test_the_engine_remembers_a_lowered_batch_size_for_the_model(model_dir):
    engine = Engine(EngineSettings(user_model_dir=model_dir, device="cpu", encode_batch_size=8))
    assert engine.encode_batch_size("tiny_sam.pth") == 8
    with engine.use_predictor("tiny_sam.pth") as predictor:
        counter = CountingEncoder(predictor.model, fits=2).install()
    images = pictures()
    encoded = engine.model("tiny_sam.pth").encode_many(images)
    assert len(encoded) == 5 and counter.batches == [5, 2, 2, 1]
    assert engine.encode_batch_size("tiny_sam.pth") == 2
    counter.batches.clear()
    engine.embeddings.clear()
    engine.model("tiny_sam.pth").encode_many(images)  # a new call, a new predictor: starts at 2
    assert counter.batches == [2, 2, 1]


# -- batch mode: groups encoded together ------------------------------------------------------


def digest_tree(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "batch_report.json"}


def batch_folder(folder: Path) -> Path:
    """Seven pictures of several sizes, the fourth one a truncated PNG."""
    folder.mkdir(parents=True)
    for index in range(7):
        height, width = SHAPES[index % len(SHAPES)]
        data = png_bytes(sample_image(height, width, seed=index))
        (folder / f"img{index:02d}.png").write_bytes(data[:150] if index == 3 else data)
    return folder


class SquaresHaveNothing(FixedDetector):
    """The fixed detections, except none at all in a square picture."""

    def detect(self, image, caption, box_threshold, *args, **kwargs):
        found = super().detect(image, caption, box_threshold, *args, **kwargs)
        return [] if image.shape[0] == image.shape[1] else found


def run(model_dir: Path, inputs: Path, output: Path, group: int, **prompts):
    engine = Engine(EngineSettings(user_model_dir=model_dir, device="cpu", encode_batch_size=group))
    if "text" in prompts:
        use_fixed_detector(engine, SquaresHaveNothing(), output.parent / f"gdino-{group}")
    with engine.use_predictor("tiny_sam.pth") as predictor:
        counter = CountingEncoder(predictor.model).install()
    seen = []
    options = BatchOptions(inputs=[inputs], output_dir=output, model="tiny_sam.pth",
                           outputs=("mask", "cutout", "blend", "coco"), **prompts)
    report = run_batch(engine, options, progress=lambda step: seen.append(Path(step.source).name))
    return report, counter.batches, seen


@pytest.mark.parametrize("prompts", [
    dict(points=[(20.0, 20.0), (40.0, 30.0)], labels=[1, 0], boxes=[(5.0, 5.0, 50.0, 45.0)]),
    dict(everything=True, autosam={"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}),
], ids=["points_and_box", "everything"])
def test_batch_groups_give_the_same_files_and_a_bad_file_fails_alone(model_dir, tmp_path, prompts):
    inputs = batch_folder(tmp_path / "in")
    one, one_batches, one_seen = run(model_dir, inputs, tmp_path / "one", 1, **prompts)
    four, four_batches, four_seen = run(model_dir, inputs, tmp_path / "four", 4, **prompts)
    assert one_batches == [1] * 6
    assert four_batches == [3, 3]  # img00-02 (img03 unreadable), then img04-06
    for report in (one, four):
        assert [Path(f["source"]).name for f in report.failed] == ["img03.png"]
        assert report.done == 6 and report.total == 7 and not report.interrupted
    assert four_seen == one_seen == [f"img{index:02d}.png" for index in range(7)]
    assert digest_tree(tmp_path / "four") == digest_tree(tmp_path / "one")
    assert len(digest_tree(tmp_path / "one")) > 6 * 3


def test_text_prompts_come_first_and_only_pictures_with_objects_are_encoded(model_dir, tmp_path):
    inputs = batch_folder(tmp_path / "in")  # img02 is 64 x 64: nothing found there
    one, one_batches, _ = run(model_dir, inputs, tmp_path / "one", 1, text="blob . stripe", per_object=True)
    four, four_batches, _ = run(model_dir, inputs, tmp_path / "four", 4, text="blob . stripe", per_object=True)
    assert one_batches == [1] * 5
    assert four_batches == [2, 3]  # img00, img01 (img02 empty, img03 unreadable); img04-06
    for report in (one, four):
        assert [Path(f["source"]).name for f in report.failed] == ["img03.png"]
        assert report.no_objects == 1 and report.done == 5
    assert digest_tree(tmp_path / "four") == digest_tree(tmp_path / "one")


def test_stop_in_the_middle_of_a_group_then_resume(model_dir, tmp_path):
    inputs = batch_folder(tmp_path / "in")
    (inputs / "img03.png").write_bytes(png_bytes(sample_image(50, 70, seed=3)))
    engine = Engine(EngineSettings(user_model_dir=model_dir, device="cpu", encode_batch_size=4))
    options = BatchOptions(inputs=[inputs], output_dir=tmp_path / "out", model="tiny_sam.pth",
                           points=[(20.0, 20.0)], outputs=("mask",))
    stop = threading.Event()

    def progress(step):
        if step.index == 2:  # the second file of the first group of four
            stop.set()

    first = run_batch(engine, options, interrupt=stop, progress=progress)
    assert first.interrupted and first.done == 2
    second = run_batch(engine, options)
    assert second.skipped == 2 and second.done == 5 and not second.failed


# -- segment everything: the decoder batch after out of memory -------------------------------


def test_segment_everything_keeps_the_halved_decoder_batch(tiny_sam):
    model = load_model(tiny_sam[0])
    image = sample_image(48, 64, seed=4)
    config = AutoSamConfig(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0, decode_batch_size=16)
    expected = generate_masks(Predictor(model, CPU, EmbeddingCache()), image, config)
    sizes = []
    decode = model.decode

    def flaky(features, *, point_coords, **kwargs):
        sizes.append(len(point_coords))
        if len(point_coords) > 5:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return decode(features, point_coords=point_coords, **kwargs)

    model.decode = flaky
    got = generate_masks(Predictor(model, CPU, EmbeddingCache()), image, config)
    # 36 points: 16 fails, 8 fails, 4 + 4 fit; every later call asks for 4 at most
    assert sizes[:4] == [16, 8, 4, 4] and max(sizes[4:]) == 4 and sum(s for s in sizes if s <= 5) == 36
    assert [(r.bbox, r.area, r.predicted_iou) for r in got] == [(r.bbox, r.area, r.predicted_iou) for r in expected]
    assert all(np.array_equal(a.mask(), b.mask()) for a, b in zip(got, expected))


def test_the_command_line_sets_the_encoder_batch_size(model_dir, tmp_path, monkeypatch):
    engines = []
    monkeypatch.setattr(batch, "Engine", lambda settings: engines.append(Engine(settings)) or engines[-1])
    inputs = batch_folder(tmp_path / "in")
    common = [str(inputs), "--model-dir", str(model_dir), "-m", "tiny_sam.pth", "--point", "20,20", "--outputs", "mask",
              "--device", "cpu"]
    assert batch.main(common + ["-o", str(tmp_path / "one")]) == 1  # img03 failed
    assert batch.main(common + ["-o", str(tmp_path / "three"), "--encode-batch", "3"]) == 1
    assert [engine.encode_batch_size("tiny_sam.pth") for engine in engines] == [1, 3]
    assert digest_tree(tmp_path / "three") == digest_tree(tmp_path / "one")
    with pytest.raises(SystemExit):
        batch.main(common + ["-o", str(tmp_path / "bad"), "--encode-batch", "-1"])
