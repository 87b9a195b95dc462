"""AutoSAM features end to end, with segment-everything replaced by known masks."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from sd_webui_sam.autosam import pipelines, semantic
from sd_webui_sam.autosam.generator import MaskRecord
from sd_webui_sam.autosam.segmenters import UploadedMapSegmenter
from sd_webui_sam.errors import SamUserError
from sd_webui_sam.settings import EngineSettings

#: The folder pipelines read the engine's image-size limit; the generation itself is faked.
SETTINGS_ONLY = SimpleNamespace(settings=EngineSettings())


def record(mask: np.ndarray) -> MaskRecord:
    ys, xs = np.nonzero(mask)
    return MaskRecord(segmentation=mask, area=int(mask.sum()),
                      bbox=(int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())),
                      predicted_iou=0.9, stability_score=0.95, point_coords=(float(xs[0]), float(ys[0])),
                      crop_box=(0, 0, mask.shape[1], mask.shape[0]))


@pytest.fixture()
def fake_generation(monkeypatch):
    """Every image gets three masks: its left half, its right half and a square in the left half."""
    calls = []

    def generate(engine, model_name, image, config, control=None):
        calls.append(image.shape)
        height, width = image.shape[:2]
        left = np.zeros((height, width), bool)
        left[:, : width // 2] = True
        square = np.zeros((height, width), bool)
        square[2:6, 2:6] = True
        return [record(left), record(~left), record(square)]

    monkeypatch.setattr(pipelines, "generate_masks_with_engine", generate)
    return calls


def test_category_mask_from_an_uploaded_map_at_image_resolution(fake_generation):
    image = np.zeros((20, 30, 3), np.uint8)
    # a coarse ADE20K map (half size) that calls a bit of the right half "bed"
    coarse = np.zeros((10, 15), np.int32)
    coarse[:, :8] = 7
    segmenter = UploadedMapSegmenter(semantic.colourise(coarse, semantic.dataset("ade20k")), "ade20k")
    result = pipelines.category_mask(None, "m.pth", image, segmenter, 512, "bed")
    assert result.mask.shape == (20, 30) and result.class_ids == [7]
    # SAM's left-half segment snapped the class border to x = 15
    assert result.mask[:, :15].all() and not result.mask[:, 15:].any()
    with pytest.raises(SamUserError):
        pipelines.category_mask(None, "m.pth", image, segmenter, 512, "not-a-class")
    assert len(fake_generation) == 1, "a bad category fails before the model runs"


def test_layout_folder_writes_one_folder_per_image(fake_generation, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    for name in ("a.png", "b.jpg"):
        Image.fromarray(np.full((12, 16, 3), 90, np.uint8)).save(source / name)
    (source / "notes.txt").write_text("not an image")
    report = pipelines.layout_folder(SETTINGS_ONLY, "m.pth", source, tmp_path / "out")
    assert [p.name for p in report.done] == ["a", "b"] and not report.errors
    assert sorted(p.name for p in (tmp_path / "out" / "a").iterdir()) == [
        "a.psd", "segment_001.png", "segment_002.png", "segment_003.png"]


def test_category_mask_folder_names_masks_like_the_images_and_never_overwrites(fake_generation, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    Image.fromarray(np.full((12, 16, 3), 50, np.uint8)).save(source / "photo.png")
    full_bed = semantic.colourise(np.full((12, 16), 7), semantic.dataset("ade20k"))
    segmenter = UploadedMapSegmenter(full_bed, "ade20k")
    report = pipelines.category_mask_folder(SETTINGS_ONLY, "m.pth", source, tmp_path / "out", segmenter, 512, "7")
    assert not report.errors
    mask = np.asarray(Image.open(tmp_path / "out" / "masks" / "photo.png"))
    assert mask.shape == (12, 16) and (mask == 255).all()
    again = pipelines.category_mask_folder(SETTINGS_ONLY, "m.pth", source, tmp_path / "out", segmenter, 512, "7")
    assert again.errors and "already exists" in again.errors[0]


def test_records_as_json_are_coco_rle():
    from pycocotools import mask as coco_mask

    mask = np.zeros((6, 7), bool)
    mask[1:4, 2:5] = True
    item = pipelines.records_as_json([record(mask)])[0]
    assert item["area"] == 9 and item["bbox"] == [2, 1, 2, 2] and item["point_coords"] == [[2.0, 1.0]]
    decoded = coco_mask.decode({"size": item["segmentation"]["size"], "counts": item["segmentation"]["counts"].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), mask)
