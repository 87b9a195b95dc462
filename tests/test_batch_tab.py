"""The Batch tab: its values become run_batch options (text, fixed prompts, segment everything), the
report reaches the panel, Stop and the WebUI's Interrupt stop between files, nothing is overwritten."""
from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sd_webui_sam.compat.interrupt import webui_interrupted
from sd_webui_sam.errors import SamUserError
from sd_webui_sam.ui import batch_tab as bt
from tests.fixtures.api_fixtures import png_bytes, sample_image
from tests.fixtures.text_prompt_fixtures import gdino_folder, tiny_text_engine

EVERYTHING = [3, 64, 0.0, 0.0, 1.0, 0.9, 0, 0.7, 512 / 1500, 1, 0]


@pytest.fixture(scope="module")
def engine(tiny_sam, tmp_path_factory):
    models, vocab = gdino_folder(tmp_path_factory.mktemp("batch_tab_gdino"))
    return tiny_text_engine(tiny_sam[0].parent, models, vocab)


@pytest.fixture(scope="module")
def model(tiny_sam):
    return tiny_sam[0].name


def folder(path: Path, count: int = 2) -> Path:
    path.mkdir(parents=True)
    for index in range(count):
        (path / f"img{index}.png").write_bytes(png_bytes(sample_image(48, 64, seed=index)))
    return path


def values(model, inputs, output, kind, *, text="", points="", boxes="", per_object=False, multimask=True,
           outputs=("Mask",), naming=None, overwrite=False, recursive=False):
    return [model, inputs, recursive, str(output), kind, text, "", 0.0, points, boxes, per_object, multimask,
            list(outputs), naming or list(bt.NAMING_CHOICES)[0], 0, False, overwrite]


def test_fixed_points_write_masks_and_report(engine, model, tmp_path):
    source = folder(tmp_path / "in")
    out = tmp_path / "out"
    report = bt.run_from_ui(engine, values(model, str(source), out, bt.PROMPT_KINDS[1], points="20, 20\n30,30,0"))
    assert report.startswith("2 done") and str(out) in report
    assert sorted(p.name for p in out.glob("*_mask.png")) == [f"img{i}_{c}_mask.png" for i in range(2) for c in range(3)]
    # a second run with the same prompts keeps everything (overwrite is off) and says so
    again = bt.run_from_ui(engine, values(model, str(source), out, bt.PROMPT_KINDS[1], points="20, 20\n30,30,0"))
    assert "2 skipped" in again


def test_a_rerun_with_other_prompts_says_so_and_offers_overwrite_or_a_new_folder(engine, model, tmp_path):
    from sd_webui_sam.batch import PromptsChangedError

    source = folder(tmp_path / "in")
    out = tmp_path / "out"
    bt.run_from_ui(engine, values(model, str(source), out, bt.PROMPT_KINDS[1], points="20, 20"))
    first = (out / "img0_0_mask.png").read_bytes()
    moved = values(model, str(source), out, bt.PROMPT_KINDS[1], points="40, 10")
    with pytest.raises(PromptsChangedError, match="2 image\\(s\\).*other prompts.*Overwrite.*new output folder") as caught:
        bt.run_from_ui(engine, moved)
    assert (out / "img0_0_mask.png").read_bytes() == first  # nothing was touched
    assert caught.value.new_folder == out.resolve().with_name("out-2")
    assert bt.new_folder_for(str(out)) == str(out.resolve().with_name("out-2"))

    elsewhere = bt.run_from_ui(engine, values(model, str(source), bt.new_folder_for(str(out)), bt.PROMPT_KINDS[1],
                                              points="40, 10"))
    assert elsewhere.startswith("2 done")
    replaced = bt.run_from_ui(engine, values(model, str(source), out, bt.PROMPT_KINDS[1], points="40, 10",
                                             overwrite=True))
    assert replaced.startswith("2 done") and (out / "img0_0_mask.png").read_bytes() != first
    # the folder now belongs to the new prompts: rerunning them resumes, the old ones are refused in turn
    assert "2 skipped" in bt.run_from_ui(engine, moved)
    with pytest.raises(PromptsChangedError):
        bt.run_from_ui(engine, values(model, str(source), out, bt.PROMPT_KINDS[1], points="20, 20"))


def test_text_prompt_with_the_tiny_groundingdino_inpaint_naming(engine, model, tmp_path):
    source = folder(tmp_path / "in", 1)
    out = tmp_path / "out"
    report = bt.run_from_ui(engine, values(model, str(source / "img0.png"), out, bt.PROMPT_KINDS[0], text="hand",
                                           naming=list(bt.NAMING_CHOICES)[1], outputs=("Mask", "COCO JSON")))
    assert "1 done" in report and "COCO" in report, report
    mask = np.asarray(Image.open(out / "masks" / "img0.png"))
    assert mask.shape == (48, 64)


def test_segment_everything_per_object(engine, model, tmp_path):
    source = folder(tmp_path / "in", 1)
    out = tmp_path / "out"
    report = bt.run_from_ui(engine, values(model, str(source), out, bt.PROMPT_KINDS[2], per_object=True) + [EVERYTHING])
    assert report.startswith("1 done"), report
    objects = sorted(out.glob("img0_0_obj*_mask.png"))
    assert objects, "per-object masks from the generator"


def test_user_errors(engine, model, tmp_path):
    with pytest.raises(SamUserError, match="input folder"):
        bt.run_from_ui(engine, values(model, " ", tmp_path / "o", bt.PROMPT_KINDS[1], points="1,1"))
    with pytest.raises(SamUserError, match="fixed points"):
        bt.run_from_ui(engine, values(model, str(tmp_path), tmp_path / "o", bt.PROMPT_KINDS[1]))
    with pytest.raises(SamUserError, match="Point"):
        bt.run_from_ui(engine, values(model, str(tmp_path), tmp_path / "o", bt.PROMPT_KINDS[1], points="1,x"))


def test_stop_and_host_interrupt_stop_between_files(engine, model, tmp_path):
    source = folder(tmp_path / "in", 3)
    signal = bt.StopSignal()

    def stop_after_first(index, total, name):
        signal.stop()

    report = bt.run_from_ui(engine, values(model, str(source), tmp_path / "a", bt.PROMPT_KINDS[1], points="5,5"),
                            interrupt=signal.start(), progress=stop_after_first)
    assert "1 done" in report and "interrupted" in report

    state = types.SimpleNamespace(interrupted=True)
    modules = {"modules.shared": types.SimpleNamespace(state=state)}
    host = bt.StopSignal(lambda: webui_interrupted(modules))
    interrupt = host.start()
    assert not interrupt(), "a flag left on by an earlier generation does not stop a new batch"
    state.interrupted = False
    fresh = host.start()
    state.interrupted = True
    assert fresh()
    assert webui_interrupted({}) is False


@pytest.mark.parametrize("sd_controls", [False, True])
def test_tab_builds(engine, sd_controls):
    import gradio as gr

    from sd_webui_sam.ui.panel import PanelOptions, build_panel

    with gr.Blocks():
        panel = build_panel(PanelOptions(prefix="b", engine=lambda: engine, sd_controls=sd_controls))
    parts = panel.extra["batch"]
    assert parts["overwrite"].value is False and parts["kind"].value == bt.PROMPT_KINDS[0]
    assert isinstance(parts["signal"], bt.StopSignal)
    assert parts["conflict"].visible is False  # shown only when the output folder holds other prompts' outputs
