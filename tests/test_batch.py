"""Batch: resume after an interrupt, bad files recorded without stopping, naming conventions,
sources never touched, the command line and the API route's folder restrictions."""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.api_fixtures import api_engine, api_model_dir, png_bytes, sample_image  # noqa: F401


def digest_tree(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def make_folder(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shapes = [(64, 80), (72, 64), (64, 64)]
    for index in range(count):
        h, w = shapes[index % len(shapes)]
        (folder / f"img{index:02d}.png").write_bytes(png_bytes(sample_image(h, w, seed=index)))
    return folder


def options(inputs, output, **kwargs):
    from sd_webui_sam.batch import BatchOptions

    base = dict(inputs=[Path(p) for p in inputs], output_dir=Path(output), model="tiny_sam.pth",
                points=[(20.0, 20.0)], outputs=("mask", "cutout", "blend", "coco"))
    base.update(kwargs)
    return BatchOptions(**base)


def expected_reference_outputs(sources, candidates=3):
    names = set()
    for source in sources:
        for index in range(candidates):
            for suffix in ("mask", "output", "blend"):
                names.add(f"{Path(source).stem}_{index}_{suffix}.png")
    return names


def test_interrupt_then_resume_writes_every_output_exactly_once(api_engine, tmp_path):
    from sd_webui_sam.batch import run_batch

    source_dir = make_folder(tmp_path / "in", 5)
    before = digest_tree(source_dir)
    out = tmp_path / "out"
    stop = threading.Event()
    seen = []

    def progress(step):
        seen.append(step.status)
        if step.index == 2:
            stop.set()

    first = run_batch(api_engine, options([source_dir], out), interrupt=stop, progress=progress)
    assert first.interrupted and first.done == 2 and not first.failed
    assert digest_tree(source_dir) == before
    second = run_batch(api_engine, options([source_dir], out))
    assert not second.interrupted and second.skipped == 2 and second.done == 3 and not second.failed
    assert digest_tree(source_dir) == before  # sources byte-identical
    written = {p.name for p in out.iterdir() if p.suffix == ".png"}
    assert written == expected_reference_outputs(sorted(p.name for p in source_dir.iterdir()))
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    coco = json.loads((out / "annotations.json").read_text())
    assert sorted(i["file_name"] for i in coco["images"]) == sorted(p.name for p in source_dir.iterdir())
    assert len(coco["annotations"]) == 5 and len({a["id"] for a in coco["annotations"]}) == 5
    # every mask written matches what the engine answers for that image
    from sd_webui_sam.predictor import Prompts

    image = np.asarray(Image.open(source_dir / "img03.png").convert("RGB"))
    expected = api_engine.segment("tiny_sam.pth", image, Prompts(points=[(20.0, 20.0)], labels=[1]))
    for index in range(3):
        mask = np.asarray(Image.open(out / f"img03_{index}_mask.png")) > 127
        assert np.array_equal(mask, expected.masks[:, index].any(axis=0))
    third = run_batch(api_engine, options([source_dir], out))
    assert third.skipped == 5 and third.done == 0 and third.outputs_written == 0


def test_bad_files_are_reported_and_the_batch_goes_on(api_engine, tmp_path):
    from sd_webui_sam.batch import run_batch

    folder = make_folder(tmp_path / "in", 2)
    (folder / "corrupt.png").write_bytes(png_bytes(sample_image(64, 64))[:150])
    (folder / "fake.jpg").write_bytes(b"this is not a jpeg at all")
    (folder / "notes.txt").write_text("hello")
    deep = (np.arange(64 * 80, dtype=np.uint16).reshape(64, 80) * 13).astype(np.uint16)
    Image.fromarray(deep, mode="I;16").save(folder / "deep16.png")
    assert Image.open(folder / "deep16.png").mode.startswith("I")
    out = tmp_path / "out"
    report = run_batch(api_engine, options([folder], out, outputs=("mask",)))
    failed = {Path(f["source"]).name for f in report.failed}
    assert failed == {"corrupt.png", "fake.jpg"}
    assert all(f["error"] for f in report.failed)
    assert [Path(p).name for p in report.ignored] == ["notes.txt"]
    assert report.done == 3 and report.total == 5
    assert (out / "deep16_0_mask.png").is_file()
    saved = json.loads((out / "batch_report.json").read_text())
    assert {Path(f["source"]).name for f in saved["failed"]} == failed


def test_inpaint_naming_and_per_object(api_engine, tmp_path):
    from sd_webui_sam.batch import run_batch

    folder = make_folder(tmp_path / "in", 2)
    out = tmp_path / "out"
    report = run_batch(api_engine, options([folder], out, naming="inpaint", outputs=("mask", "cutout"),
                                           points=[], boxes=[(5, 5, 40, 40), (30, 20, 60, 60)]))
    assert report.done == 2
    for name in ("img00", "img01"):
        mask = Image.open(out / "masks" / f"{name}.png")
        assert mask.size == Image.open(folder / f"{name}.png").size
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
        assert Image.open(out / "cutouts" / f"{name}.png").mode == "RGBA"
    per_object = run_batch(api_engine, options([folder], tmp_path / "obj", outputs=("mask",), multimask=False,
                                               points=[], boxes=[(5, 5, 40, 40), (30, 20, 60, 60)], per_object=True))
    assert per_object.done == 2
    assert sorted(p.name for p in (tmp_path / "obj").glob("img00*")) == ["img00_0_obj0_mask.png", "img00_0_obj1_mask.png"]


def test_an_output_folder_that_is_an_input_folder_is_refused(api_engine, tmp_path):
    # issue #19 item 4: a real input named like an output (a_0_mask.png) was overwritten
    from sd_webui_sam.batch import run_batch
    from sd_webui_sam.errors import InvalidPromptError

    folder = make_folder(tmp_path / "in", 1)
    (folder / "img00_0_mask.png").write_bytes(png_bytes(sample_image(64, 80, seed=9)))
    before = digest_tree(folder)
    with pytest.raises(InvalidPromptError, match="separate folder"):
        run_batch(api_engine, options([folder], folder, outputs=("mask",), overwrite=True))
    assert digest_tree(folder) == before
    # a sub-folder of the input folder is fine, and nothing in it is taken as input
    inside = folder / "sam_outputs"
    first = run_batch(api_engine, options([folder], inside, outputs=("mask",), recursive=True))
    second = run_batch(api_engine, options([folder], inside, outputs=("mask",), recursive=True, overwrite=True))
    assert first.total == second.total == 2 and second.done == 2
    assert {k: v for k, v in digest_tree(folder).items() if not k.startswith("sam_outputs/")} == before


def test_a_file_this_tool_did_not_write_is_never_overwritten(api_engine, tmp_path):
    # issue #19 items 4 and 5: whatever its name, and the report says what was written and kept
    from sd_webui_sam.batch import run_batch

    folder = make_folder(tmp_path / "in", 2)
    out = tmp_path / "out"
    out.mkdir()
    foreign = png_bytes(sample_image(64, 80, seed=11))
    (out / "img00_0_mask.png").write_bytes(foreign)
    report = run_batch(api_engine, options([folder], out, outputs=("mask",), overwrite=True))
    assert (out / "img00_0_mask.png").read_bytes() == foreign
    files = {Path(f.source).name: f for f in report.files}
    assert files["img00.png"].kept == files["img00.png"].not_ours == ["img00_0_mask.png"]
    assert "img00_0_mask.png" not in files["img00.png"].written
    assert sorted(files["img01.png"].written) == ["img01_0_mask.png", "img01_1_mask.png", "img01_2_mask.png"]
    assert report.outputs_written == 5 and report.outputs_kept == 1 and report.done == 2
    # a second run without overwrite writes nothing and says so, file by file
    (out / ".sam-batch-state.jsonl").unlink()   # not "finished": each source is processed again
    again = run_batch(api_engine, options([folder], out, outputs=("mask",)))
    assert again.done == 0 and again.kept == 2 and again.skipped == 0
    assert again.outputs_written == 0 and again.outputs_kept == 6
    assert all(f.status == "kept" and not f.written for f in again.files)
    assert "0 done, 2 kept" in again.summary() and "0 files written, 6 kept" in again.summary()
    saved = json.loads((out / "batch_report.json").read_text())
    assert {f["status"] for f in saved["files"]} == {"kept"}
    # overwrite replaces our own outputs, never the foreign one
    third = run_batch(api_engine, options([folder], out, outputs=("mask",), overwrite=True))
    assert third.outputs_written == 5 and (out / "img00_0_mask.png").read_bytes() == foreign


def test_ctrl_c_stops_cleanly(api_engine, tmp_path):
    from sd_webui_sam.batch import run_batch

    folder = make_folder(tmp_path / "in", 3)

    def progress(step):
        raise KeyboardInterrupt

    report = run_batch(api_engine, options([folder], tmp_path / "out", outputs=("mask",)), progress=progress)
    assert report.interrupted and report.done == 1
    assert (tmp_path / "out" / "batch_report.json").is_file()
    assert not [p for p in (tmp_path / "out").rglob("*.tmp")]


def test_command_line(api_model_dir, tmp_path, capsys):
    from sd_webui_sam.batch import main

    folder = make_folder(tmp_path / "in", 2)
    code = main([str(folder), "-o", str(tmp_path / "out"), "--model-dir", str(api_model_dir), "-m", "tiny_sam.pth",
                 "--point", "20,20", "--point", "5,5,0", "--single", "--outputs", "mask,coco", "--device", "cpu"])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["img00_0_mask.png", "img01_0_mask.png"]
    assert "2 done" in capsys.readouterr().out
    assert main([str(folder), "-o", str(tmp_path / "o2"), "--model-dir", str(api_model_dir)]) == 2  # no prompt mode


def test_api_batch_only_inside_roots(api_engine, tmp_path):
    import httpx
    from fastapi import FastAPI

    from sd_webui_sam.api import ApiSettings, mount_api
    from tests.fixtures.api_fixtures import ServerThread

    root = tmp_path / "root"
    folder = make_folder(root / "in", 2)
    app = FastAPI()
    mount_api(app, api_engine, settings=ApiSettings(batch_roots=(root,)))
    with ServerThread(app) as running, httpx.Client(base_url=running.url, timeout=120, trust_env=False) as client:
        check_api_batch(client, root, folder, tmp_path)


def check_api_batch(client, root, folder, tmp_path):
    body = {"inputs": [str(folder)], "output_dir": str(root / "out"), "model": "tiny_sam.pth", "points": [[20, 20]],
            "outputs": ["mask"], "multimask": False}
    answer = client.post("/sam/v2/batch", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["done"] == 2 and (root / "out" / "img00_0_mask.png").is_file()
    outside = client.post("/sam/v2/batch", json={**body, "output_dir": str(tmp_path / "elsewhere")})
    assert outside.status_code == 403 and not (tmp_path / "elsewhere").exists()
    escape = client.post("/sam/v2/batch", json={**body, "inputs": [str(root / ".." / "root" / ".." )]})
    assert escape.status_code == 403


EVERYTHING = {"points_per_side": 3, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 0.9}


def test_segment_everything_per_object_and_coco(api_engine, tmp_path):
    from sd_webui_sam import rle
    from sd_webui_sam.autosam.generator import AutoSamConfig, generate_masks_with_engine
    from sd_webui_sam.batch import run_batch
    from sd_webui_sam.images import load_image

    source_dir = make_folder(tmp_path / "in", 2)
    out = tmp_path / "out"
    report = run_batch(api_engine, options([source_dir], out, points=[], everything=True, per_object=True,
                                           multimask=False, autosam=EVERYTHING))
    assert report.done == 2 and not report.failed
    coco = json.loads((out / "annotations.json").read_text())
    for image_id, name in enumerate(["img00", "img01"], start=1):
        image = load_image(source_dir / f"{name}.png")
        records = generate_masks_with_engine(api_engine, "tiny_sam.pth", image, AutoSamConfig.from_mapping(EVERYTHING))
        assert records, "the permissive settings should find masks"
        masks = sorted((r.mask() for r in records), key=lambda m: -int(m.sum()))
        # one file per object, largest first, each exactly the generator's mask
        for k, expected in enumerate(masks):
            written = np.asarray(Image.open(out / f"{name}_0_obj{k}_mask.png")) > 0
            assert np.array_equal(written, expected)
        assert not (out / f"{name}_0_obj{len(masks)}_mask.png").exists()
        annotations = [a for a in coco["annotations"] if a["image_id"] == image_id]
        assert len(annotations) == len(masks)
        assert [a["area"] for a in annotations] == [int(m.sum()) for m in masks]
        assert np.array_equal(rle.decode(annotations[0]["segmentation"]), masks[0])


def test_segment_everything_merged_and_bad_settings(api_engine, tmp_path):
    from sd_webui_sam.batch import run_batch
    from sd_webui_sam.errors import SamUserError

    source_dir = make_folder(tmp_path / "in", 1)
    out = tmp_path / "out"
    report = run_batch(api_engine, options([source_dir], out, points=[], everything=True, multimask=False,
                                           naming="inpaint", outputs=("mask",), autosam=EVERYTHING))
    assert report.done == 1
    merged = np.asarray(Image.open(out / "masks" / "img00.png")) > 0
    assert merged.any()
    with pytest.raises(SamUserError, match="points_per_side"):
        run_batch(api_engine, options([source_dir], tmp_path / "o2", points=[], everything=True,
                                      autosam={"points_per_side": 0}))
