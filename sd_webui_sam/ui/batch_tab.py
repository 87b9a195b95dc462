"""The panel's "Batch" tab: the same run_batch the command line and /sam/v2/batch use.

``run_from_ui`` turns the tab's values into BatchOptions and a report; ``build`` makes the
components. Stopping: the tab's Stop button (both the WebUI and the standalone app) and, in the
WebUI, the host's Interrupt turning on during the run (``PanelOptions.host_interrupted``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from sd_webui_sam.batch import BatchOptions, PromptsChangedError, free_folder, run_batch
from sd_webui_sam.errors import InvalidPromptError
from sd_webui_sam.ui.autosam_tab import CONFIG_FIELDS, config_from_values
from sd_webui_sam.ui import handlers
from sd_webui_sam.ui.elements import elem
from sd_webui_sam.ui.jobs import StopSignal, guarded_with_progress

__all__ = ["NAMING_CHOICES", "OUTPUT_CHOICES", "PROMPT_KINDS", "StopSignal", "build", "build_options", "new_folder_for",
           "parse_inputs", "report_text", "run_from_ui"]

PROMPT_KINDS = ("Text prompt (GroundingDINO)", "Fixed points / boxes", "Segment everything (AutoSAM)")
OUTPUT_CHOICES = {"Mask": "mask", "Cut-out (transparent PNG)": "cutout", "Blend": "blend", "COCO JSON": "coco"}
NAMING_CHOICES = {"Reference ({name}_{i}_mask.png)": "reference",
                  "A1111 batch inpaint (masks/{name}.png)": "inpaint"}


def _numbers(text: str, width: Sequence[int], what: str) -> List[List[float]]:
    rows = []
    for line in (text or "").replace(";", "\n").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            values = [float(v) for v in line.replace(",", " ").split()]
        except ValueError:
            raise InvalidPromptError(f"{what} {line!r}: write numbers separated by commas, one per line.") from None
        if len(values) not in width:
            raise InvalidPromptError(f"{what} {line!r}: expected {' or '.join(map(str, width))} numbers.")
        rows.append(values)
    return rows


def parse_inputs(text: str) -> List[Path]:
    paths = [Path(line.strip().strip('"')).expanduser() for line in (text or "").splitlines() if line.strip()]
    if not paths:
        raise InvalidPromptError("Enter an input folder (or image files, one per line).")
    return paths


def build_options(model_name, inputs_text, recursive, output_dir, kind, text, dino_model, box_threshold, points_text,
                  boxes_text, per_object, multimask, outputs, naming, expand, invert, overwrite, autosam_values=()):
    if not model_name:
        raise InvalidPromptError("Choose a SAM model at the top of the panel first.")
    if not output_dir or not str(output_dir).strip():
        raise InvalidPromptError("Enter an output folder (it is created if missing).")
    chosen_outputs = tuple(OUTPUT_CHOICES.get(o, o) for o in (outputs or []))
    options: Dict[str, Any] = dict(
        inputs=parse_inputs(inputs_text), output_dir=Path(str(output_dir).strip()).expanduser(), model=model_name,
        recursive=bool(recursive), per_object=bool(per_object), multimask=bool(multimask), outputs=chosen_outputs,
        naming=NAMING_CHOICES.get(naming, naming or "reference"), expand=int(expand or 0), invert=bool(invert),
        overwrite=bool(overwrite),
    )
    if kind == PROMPT_KINDS[0]:
        options.update(text=text or "", dino_model=dino_model or None, box_threshold=float(box_threshold or 0.3))
    elif kind == PROMPT_KINDS[1]:
        points = _numbers(points_text, (2, 3), "Point")
        options.update(points=[(p[0], p[1]) for p in points], labels=[int(p[2]) if len(p) == 3 else 1 for p in points],
                       boxes=[tuple(b) for b in _numbers(boxes_text, (4,), "Box")])
        if not options["points"] and not options["boxes"]:
            raise InvalidPromptError("Enter fixed points (x, y[, label]) or boxes (x1, y1, x2, y2), one per line.")
    elif kind == PROMPT_KINDS[2]:
        config = config_from_values(autosam_values)
        options.update(everything=True, multimask=False,
                       autosam={spec.name: getattr(config, spec.name) for spec in CONFIG_FIELDS})
    else:
        raise InvalidPromptError(f"Choose a prompt kind: {', '.join(PROMPT_KINDS)}.")
    return BatchOptions(**options)


def new_folder_for(output_dir: str) -> str:
    """The output folder to offer when the chosen one holds outputs of other prompts."""
    return str(free_folder(Path(str(output_dir).strip()).expanduser().resolve()))


def report_text(report) -> str:
    lines = [report.summary(), f"Outputs in {report.output_dir} ({report.outputs_written} files written)."]
    if report.coco:
        lines.append(f"COCO annotations: {report.coco}")
    for failure in report.failed:
        lines.append(f"failed: {failure['source']}: {failure['error']}")
    if report.ignored:
        lines.append(f"{len(report.ignored)} non-image file(s) ignored.")
    if report.report:
        lines.append(f"Report: {report.report}")
    return "\n".join(lines)


def run_from_ui(engine, values: Sequence[Any], *, interrupt=None, progress: Optional[Callable[[int, int, str], None]] = None,
                gpu_lock=None) -> str:
    """``values`` in build_options' order; returns the report for the panel."""
    options = build_options(*values)

    def step(update) -> None:
        if progress is not None:
            progress(update.index, update.total, Path(update.source).name if update.source else update.status)

    report = run_batch(engine, options, interrupt=interrupt, progress=step, gpu_lock=gpu_lock)
    return report_text(report)


def build(panel: Any, *, autosam_config: Sequence[Any] = ()) -> Dict[str, Any]:
    import gradio as gr  # only when the tab is built: its option parsing and run_from_ui run without gradio

    from sd_webui_sam.compat import gradio_compat as grc  # imports gradio: likewise

    prefix = f"{panel.options.prefix}_batch"
    engine = panel.options.engine
    signal = StopSignal(panel.options.host_interrupted)
    inputs_box = gr.Textbox(label="Input folder, or image files (one per line)", lines=2,
                            elem_id=elem(prefix, "inputs"))
    with gr.Row():
        recursive = gr.Checkbox(label="Include sub-folders", value=False, elem_id=elem(prefix, "recursive"))
        output_dir = gr.Textbox(label="Output folder", elem_id=elem(prefix, "output"))
    kind = gr.Radio(label="Prompt", choices=list(PROMPT_KINDS), value=PROMPT_KINDS[0], elem_id=elem(prefix, "kind"))
    with gr.Row():
        text = gr.Textbox(label="Text prompt", placeholder="dog . cat", elem_id=elem(prefix, "text"))
        dino_model = gr.Textbox(label="GroundingDINO model (empty: the first found)", elem_id=elem(prefix, "dino_model"))
        box_threshold = gr.Slider(0, 1, value=0.3, step=0.001, label="Box threshold", elem_id=elem(prefix, "box_threshold"))
    with gr.Row():
        points = gr.Textbox(label="Fixed points: x, y[, label 1/0] per line", lines=2, elem_id=elem(prefix, "points"))
        boxes = gr.Textbox(label="Fixed boxes: x1, y1, x2, y2 per line", lines=2, elem_id=elem(prefix, "boxes"))
    gr.Markdown("Segment everything uses the AutoSAM settings of the Auto SAM tab.")
    with gr.Row():
        per_object = gr.Checkbox(label="One mask per object (off: merged)", value=False, elem_id=elem(prefix, "per_object"))
        multimask = gr.Checkbox(label="3 candidates per image", value=True, elem_id=elem(prefix, "multimask"))
        invert = gr.Checkbox(label="Save background instead", value=False, elem_id=elem(prefix, "invert"))
        expand = gr.Slider(-64, 64, value=0, step=1, label="Expand (+) / shrink (-), px", elem_id=elem(prefix, "expand"))
    with gr.Row():
        outputs = gr.CheckboxGroup(label="Outputs", choices=list(OUTPUT_CHOICES), value=list(OUTPUT_CHOICES)[:3],
                                   elem_id=elem(prefix, "outputs"))
        naming = gr.Radio(label="File names", choices=list(NAMING_CHOICES), value=list(NAMING_CHOICES)[0],
                          elem_id=elem(prefix, "naming"))
        overwrite = gr.Checkbox(label="Overwrite existing outputs", value=False, elem_id=elem(prefix, "overwrite"))
    with gr.Row():
        start = gr.Button("Start batch", variant="primary", elem_id=elem(prefix, "start"))
        stop = gr.Button("Stop", elem_id=elem(prefix, "stop"))
    result = gr.Textbox(label="Batch report", lines=6, interactive=False, elem_id=elem(prefix, "report"))
    # Shown when the output folder holds outputs of other prompts: the two ways on.
    with gr.Row(visible=False, elem_id=elem(prefix, "conflict")) as conflict:
        overwrite_now = gr.Button("Overwrite them and start", elem_id=elem(prefix, "conflict_overwrite"))
        new_folder_now = gr.Button("Use a new folder and start", elem_id=elem(prefix, "conflict_new_folder"))

    controls = [panel.model, inputs_box, recursive, output_dir, kind, text, dino_model, box_threshold, points, boxes,
                per_object, multimask, outputs, naming, expand, invert, overwrite, *autosam_config]

    # gradio finds a Progress parameter only among the positional ones: it comes first, the inputs follow.
    def start_batch(progress=gr.Progress(), *values):
        def show(index: int, total: int, name: str) -> None:
            if total:
                progress(index / total, desc=f"{index}/{total} {name}")

        try:
            report = run_from_ui(engine(), (*values[:17], tuple(values[17:])), interrupt=signal.start(), progress=show)
        except PromptsChangedError as error:
            return str(error), grc.update(visible=True)
        return report, grc.update(visible=False)

    guarded_start = guarded_with_progress(start_batch, lambda message: (message, grc.update(visible=False)))
    grc.listen(start.click, guarded_start, controls, [result, conflict])
    overwriting = grc.listen(overwrite_now.click, lambda: True, [], [overwrite], queue=False)
    moving = grc.listen(new_folder_now.click, handlers.guarded(new_folder_for, lambda message: grc.update()),
                        [output_dir], [output_dir], queue=False)
    for chosen in (overwriting, moving):
        grc.listen(chosen.then, guarded_start, controls, [result, conflict])
    # Off the queue, so it answers while the batch still holds the queue's worker.
    grc.listen(stop.click, lambda: signal.stop(), [], [], queue=False)
    return {"inputs": inputs_box, "recursive": recursive, "output": output_dir, "kind": kind, "text": text,
            "points": points, "boxes": boxes, "per_object": per_object, "multimask": multimask, "outputs": outputs,
            "naming": naming, "overwrite": overwrite, "start": start, "stop": stop, "report": result, "signal": signal,
            "conflict": conflict, "conflict_overwrite": overwrite_now, "conflict_new_folder": new_folder_now}
