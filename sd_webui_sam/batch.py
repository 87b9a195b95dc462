"""Batch segmentation of a folder or a list of files: one implementation for the command line
(``python -m sd_webui_sam batch``), the ``/sam/v2/batch`` route and the panel's Batch tab.

Guarantees: a source file is never written; each output is written atomically (temporary
file + rename); an output that exists is kept unless ``overwrite``; a file that cannot be read
or segmented is recorded in the report and the batch goes on; an interrupt (callable or
Event) or Ctrl-C stops between files, after the pending writes, so a later run resumes where
this one stopped. Reading the next images and writing outputs overlap with inference.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import sys
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from PIL import Image

from sd_webui_sam import matting, render, rle
from sd_webui_sam import masks as mask_ops
from sd_webui_sam.autosam.generator import AutoSamConfig, generate_masks_with_engine
from sd_webui_sam.devices import PRECISION_CHOICES
from sd_webui_sam.embedding_cache import EncodedImage
from sd_webui_sam.engine import Engine
from sd_webui_sam.errors import InvalidPromptError, SamUserError
from sd_webui_sam.matting import check_alpha_mode
from sd_webui_sam.images import load_image
from sd_webui_sam.predictor import ForeignEmbeddingsError, Prediction
from sd_webui_sam.prompts import Prompts, check_boxes, check_caption, check_labels, check_points
from sd_webui_sam.settings import EngineSettings
from sd_webui_sam.text_prompt import find_boxes, most_confident

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
OUTPUT_KINDS = ("mask", "cutout", "blend", "coco")
NAMINGS = ("reference", "inpaint")
STATE_FILE = ".sam-batch-state.jsonl"
#: Every output file this tool wrote into the folder (one relative path a line). A file that
#: exists and is not listed was not written by us and is never replaced, whatever its name.
MANIFEST_FILE = ".sam-batch-manifest.txt"
REPORT_FILE = "batch_report.json"
COCO_FILE = "annotations.json"
#: reference naming: what each output kind is called ({stem}_{idx}_{suffix}.png)
_REFERENCE_SUFFIX = {"mask": "mask", "cutout": "output", "blend": "blend"}
_INPAINT_FOLDER = {"mask": "masks", "cutout": "cutouts", "blend": "blends"}

Interrupt = Union[None, Callable[[], bool], threading.Event]
#: The BatchOptions that decide what the masks are (the prompts, the model and the mask settings);
#: a finished source records their fingerprint, and a rerun with others does not silently keep it.
PROMPT_FIELDS = ("model", "text", "dino_model", "box_threshold", "text_threshold", "points", "labels", "boxes",
                 "everything", "autosam", "multimask", "per_object", "expand", "invert", "alpha", "alpha_band")


@dataclass
class BatchOptions:
    inputs: Sequence[Path]
    output_dir: Path
    model: str
    recursive: bool = False
    #: exactly one prompt mode: text (GroundingDINO), fixed points/boxes, or everything (AutoSAM)
    text: Optional[str] = None
    dino_model: Optional[str] = None
    box_threshold: float = 0.3
    text_threshold: float = 0.25
    points: Sequence[Tuple[float, float]] = ()
    labels: Sequence[int] = ()
    boxes: Sequence[Tuple[float, float, float, float]] = ()
    everything: bool = False
    multimask: bool = True
    per_object: bool = False
    outputs: Sequence[str] = ("mask", "cutout", "blend")
    naming: str = "reference"
    expand: int = 0
    invert: bool = False
    #: cut-out edges: "hard" (the mask) or "soft" (sd_webui_sam.matting; band 0 = automatic)
    alpha: str = "hard"
    alpha_band: float = 0
    overwrite: bool = False
    max_pixels: Optional[int] = None
    io_workers: int = 2
    #: AutoSAM generator settings for ``everything`` (AutoSamConfig field names; {} = defaults)
    autosam: Optional[Dict[str, Any]] = None


@dataclass
class FileResult:
    """What happened to one source, output by output (paths relative to the output folder)."""

    source: str
    status: str  # "done" (something written) | "kept" (every output existed) | "skipped" | "failed" | "no_objects"
    written: List[str] = field(default_factory=list)
    #: existed and were left alone: ours from an earlier run (without overwrite), or not ours at all
    kept: List[str] = field(default_factory=list)
    #: of ``kept``, the files this tool did not write (never overwritten, even with overwrite)
    not_ours: List[str] = field(default_factory=list)
    error: Optional[str] = None


@dataclass
class BatchProgress:
    index: int  # files handled so far, this one included
    total: int
    source: str
    status: str


@dataclass
class BatchReport:
    output_dir: str
    total: int = 0
    done: int = 0  # sources with at least one output written
    kept: int = 0  # sources processed whose outputs all existed already (nothing written)
    skipped: int = 0  # sources not processed: an earlier run finished them
    no_objects: int = 0
    failed: List[Dict[str, str]] = field(default_factory=list)
    ignored: List[str] = field(default_factory=list)
    outputs_written: int = 0
    outputs_kept: int = 0
    files: List[FileResult] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0
    coco: Optional[str] = None
    report: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        text = (f"{self.done} done, {self.kept} kept (outputs exist), {self.skipped} skipped (finished earlier), "
                f"{self.no_objects} without objects, {len(self.failed)} failed, of {self.total} images in "
                f"{self.seconds:.1f} s; {self.outputs_written} files written, {self.outputs_kept} kept")
        return text + (" - interrupted; run again to resume." if self.interrupted else ".")


# ------------------------------------------------------------------------------------ files


@dataclass(frozen=True)
class Source:
    path: Path
    relative: Path  # relative to its input folder (just the name for a listed file)


def _is_interrupted(interrupt: Interrupt) -> bool:
    if interrupt is None:
        return False
    if isinstance(interrupt, threading.Event):
        return interrupt.is_set()
    return bool(interrupt())


def collect_sources(inputs: Sequence[Path], output_dir: Path, recursive: bool) -> Tuple[List[Source], List[str]]:
    """(images to process, sorted; files ignored because they are not images by name)."""
    output_dir = Path(output_dir).resolve()
    input_dirs = {Path(p).resolve() for p in inputs if Path(p).is_dir()}
    sources: List[Source] = []
    ignored: List[str] = []
    seen = set()

    if output_dir in input_dirs:
        # telling outputs from inputs by their names would let a source named like an output
        # (a_0_mask.png) be taken for one; a separate folder makes the question moot
        raise InvalidPromptError(
            f"The output folder {output_dir} is also an input folder; write the outputs to a separate folder "
            f"(a sub-folder such as {output_dir / 'sam_outputs'} is fine)."
        )

    def is_our_output(path: Path) -> bool:
        # a separate output folder inside an input folder: nothing there is input
        return output_dir == path.parent or output_dir in path.parents

    for item in inputs:
        item = Path(item).expanduser()
        if item.is_dir():
            walker = item.rglob("*") if recursive else item.glob("*")
            for path in sorted(walker):
                if not path.is_file() or path.name.startswith("."):
                    continue
                resolved = path.resolve()
                if resolved in seen or is_our_output(resolved):
                    continue
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    if path.name not in (STATE_FILE, REPORT_FILE, COCO_FILE):
                        ignored.append(str(path))
                    continue
                seen.add(resolved)
                sources.append(Source(resolved, path.relative_to(item)))
        elif item.is_file():
            resolved = item.resolve()
            if resolved not in seen:
                seen.add(resolved)
                sources.append(Source(resolved, Path(item.name)))
        else:
            raise InvalidPromptError(f"Input {str(item)!r} is neither a folder nor a file.")
    return sources, ignored


def _output_stems(sources: Sequence[Source]) -> Dict[Path, Path]:
    """Each source's output stem (relative folder + stem); 'a.png' and 'a.jpg' become a and a_jpg."""
    counts: Dict[Path, int] = {}
    for source in sources:
        key = source.relative.with_suffix("")
        counts[key] = counts.get(key, 0) + 1
    stems = {}
    for source in sources:
        key = source.relative.with_suffix("")
        if counts[key] > 1:
            key = key.with_name(f"{key.name}_{source.relative.suffix.lstrip('.').lower()}")
        stems[source.path] = key
    return stems


def output_path(output_dir: Path, stem: Path, kind: str, naming: str, candidate: int, obj: Optional[int]) -> Path:
    if naming == "inpaint":
        return output_dir / _INPAINT_FOLDER[kind] / stem.parent / f"{stem.name}.png"
    object_part = f"_obj{obj}" if obj is not None else ""
    return output_dir / stem.parent / f"{stem.name}_{candidate}{object_part}_{_REFERENCE_SUFFIX[kind]}.png"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def atomic_write_png(path: Path, image: Any) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


class _Manifest:
    """The output files this tool wrote into one output folder (append-only, one path a line)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._written = set()
        if path.is_file():
            self._written = set(path.read_text(encoding="utf-8", errors="replace").splitlines())
        self._lock = threading.Lock()

    def wrote(self, relative: str) -> bool:
        with self._lock:
            return relative in self._written

    def add(self, relative: str) -> None:
        with self._lock:
            if relative in self._written:
                return
            self._written.add(relative)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(relative + "\n")
                handle.flush()
                os.fsync(handle.fileno())


class SharedManifest(_Manifest):
    """The manifest of a folder that several processes write into at once (batch_ray's workers):
    a name this process has not seen is looked up in the file again, since another process
    (perhaps one that died mid-image) may have listed it since."""

    def wrote(self, relative: str) -> bool:
        if super().wrote(relative):
            return True
        if self.path.is_file():
            with self._lock:
                self._written |= set(self.path.read_text(encoding="utf-8", errors="replace").splitlines())
        return super().wrote(relative)


class _State:
    """Which sources are finished, with their outputs and COCO annotations (append-only JSON lines)."""

    def __init__(self, path: Path, prompts: Optional[str] = None) -> None:
        self.path = path
        self.prompts = prompts  # stamped on every entry recorded (prompt_fingerprint)
        self.entries: Dict[str, Dict[str, Any]] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    entry = json.loads(line)
                    self.entries[str(entry["source"])] = entry

    def finished(self, source: Path, output_dir: Path) -> bool:
        entry = self.entries.get(str(source))
        return entry is not None and all((output_dir / name).is_file() for name in entry.get("outputs", []))

    def record(self, entry: Dict[str, Any]) -> None:
        if self.prompts is not None:
            entry = {**entry, "prompts": self.prompts}
        self.entries[entry["source"]] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


class PromptsChangedError(InvalidPromptError):
    """Outputs in the folder were made with other prompts or settings, and overwrite is off."""

    http_status = 409

    def __init__(self, message: str, new_folder: Path) -> None:
        super().__init__(message)
        self.new_folder = new_folder


def _canonical(value: Any) -> Any:
    """Numbers as floats and sequences as lists, so the CLI's 0.0 and the panel's 0 are one prompt."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, dict):
        return {str(key): _canonical(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_canonical(item) for item in value]
    return str(value)


def prompt_fingerprint(options: BatchOptions) -> str:
    """A short hash of PROMPT_FIELDS: equal prompts give equal fingerprints, in any process and
    from any front end (no labels means every point is positive; no AutoSAM settings, the defaults)."""
    chosen = {name: getattr(options, name) for name in PROMPT_FIELDS}
    chosen["labels"] = list(options.labels) or [1] * len(options.points)
    chosen["autosam"] = options.autosam or {}
    text = json.dumps(_canonical(chosen), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def free_folder(folder: Path) -> Path:
    """``folder-2``, ``folder-3``, ... the first that does not exist."""
    number = 2
    while folder.with_name(f"{folder.name}-{number}").exists():
        number += 1
    return folder.with_name(f"{folder.name}-{number}")


def _state_for(options: BatchOptions, output_dir: Path) -> "_State":
    """The folder's state, stamping this run's prompt fingerprint on what it records; outputs of
    other prompts (unless ``overwrite``) stop the run with a PromptsChangedError that says so."""
    fingerprint = prompt_fingerprint(options)
    state = _State(output_dir / STATE_FILE, prompts=fingerprint)
    # entries from before fingerprints were recorded have none: nothing to compare them with
    other = [e for e in state.entries.values() if e.get("prompts") not in (None, fingerprint)]
    if other and not options.overwrite:
        new_folder = free_folder(output_dir)
        raise PromptsChangedError(
            f"{len(other)} image(s) in {output_dir} were segmented with other prompts or settings; keeping their "
            f"outputs would mix two runs. Tick 'Overwrite existing outputs' to replace them, or use a new output "
            f"folder such as {new_folder}.", new_folder)
    return state


# ------------------------------------ the batch: its steps (batch_ray's too) and run_batch


def validate_options(options: BatchOptions) -> None:
    modes = [options.text is not None, bool(options.points or options.boxes), options.everything]
    if sum(modes) != 1:
        raise InvalidPromptError("Choose one prompt mode: a text prompt, fixed points/boxes, or 'segment everything'.")
    if options.text is not None:
        check_caption(options.text)
    unknown = [kind for kind in options.outputs if kind not in OUTPUT_KINDS]
    if unknown or not options.outputs:
        raise InvalidPromptError(f"Outputs must be some of {', '.join(OUTPUT_KINDS)}; got {list(options.outputs)}.")
    if options.naming not in NAMINGS:
        raise InvalidPromptError(f"Naming must be one of {', '.join(NAMINGS)}.")
    if options.naming == "inpaint" and options.per_object:
        raise InvalidPromptError("The inpaint naming gives one mask per image; turn per-object off or use reference naming.")
    check_alpha_mode(options.alpha)
    check_labels(options.labels, len(options.points))
    if options.everything:
        AutoSamConfig.from_mapping(options.autosam or {})  # bad settings fail before any image is read


@dataclass
class BatchPlan:
    """What a run does before any image is read: the sources, their output stems, which an
    earlier run finished, and the report so far (skipped files already in it)."""

    options: BatchOptions
    output_dir: Path
    sources: List[Source]
    stems: Dict[Path, Path]
    todo: List[Source]
    state: "_State"
    report: BatchReport


def plan_batch(options: BatchOptions) -> BatchPlan:
    """Validate, list the sources and set aside those an earlier run finished."""
    validate_options(options)
    output_dir = Path(options.output_dir).expanduser().resolve()
    sources, ignored = collect_sources(options.inputs, output_dir, options.recursive)
    stems = _output_stems(sources)
    output_dir.mkdir(parents=True, exist_ok=True)
    state = _state_for(options, output_dir)
    todo = [s for s in sources if options.overwrite or not state.finished(stems[s.path], output_dir)]
    report = BatchReport(output_dir=str(output_dir), total=len(sources), ignored=ignored,
                         skipped=len(sources) - len(todo))
    queued = set(todo)
    report.files.extend(FileResult(str(s.path), "skipped") for s in sources if s not in queued)
    return BatchPlan(options, output_dir, sources, stems, todo, state, report)


def process_file(engine: Engine, options: BatchOptions, image_source: Any, source: Source, stem: Path, output_dir: Path,
                 source_paths: Any, manifest: _Manifest) -> Tuple[FileResult, Optional[Dict[str, Any]]]:
    """One source from its bytes (or path) to its written outputs, in this process: (its result,
    the state entry to record; None when it failed). Every write has finished on return."""
    return process_group(engine, options, [(image_source, source, stem)], output_dir, source_paths, manifest)[0]


def process_group(engine: Engine, options: BatchOptions, items: Sequence[Tuple[Any, Source, Path]], output_dir: Path,
                  source_paths: Any, manifest: _Manifest) -> List[Tuple[FileResult, Optional[Dict[str, Any]]]]:
    """:func:`process_file` for several sources ((bytes or path, source, output stem) each), in
    their order; those that load are encoded together (:func:`prepare_group`). A source that
    fails is reported failed and the others go on. Every write has finished on return."""
    images: List[Any] = []
    for image_source, source, _ in items:
        try:
            images.append(load_image(image_source, max_pixels=_max_pixels(engine, options)))
        except (SamUserError, OSError, ValueError) as error:
            images.append(error)
    lock = contextlib.nullcontext()
    prepared = prepare_group(engine, options, lock, images)
    answers = []
    with ThreadPoolExecutor(max_workers=max(1, options.io_workers), thread_name_prefix="sam-batch-write") as writer:
        for (_, source, stem), image, (encoded, planned) in zip(items, images, prepared):
            try:
                if isinstance(image, Exception):
                    raise image
                segmented = _process(engine, options, lock, image, source, stem, output_dir, source_paths, writer,
                                     manifest, encoded=encoded, planned=planned)
            except (SamUserError, OSError, ValueError) as error:
                segmented = (_failed(source, error), None, [])
            answers.append(segmented)
    return [_settled(*answer) for answer in answers]


#: A group member's ready work: (its embeddings or None, its prompts (_prompts_for) or None)
Prepared = Tuple[Optional[EncodedImage], Optional[Tuple[Prompts, List[Any], int]]]


def prepare_group(engine: Engine, options: BatchOptions, lock: ContextManager,
                  images: Sequence[Any]) -> List[Prepared]:
    """Encode a group's images in as few encoder passes as the engine's batch size allows
    (``images``: decoded images, or the exception that loading one raised).

    Text prompts are found first, and only images with something to segment are encoded. A
    failure here costs nothing but the sharing: the image's prompts are found again, and it is
    encoded on its own, in :func:`_process`, which reports its error as that image's. A group of
    one is left to _process entirely.
    """
    prepared: List[Prepared] = [(None, None)] * len(images)
    if len(images) <= 1:
        return prepared
    planned: List[Any] = [None] * len(images)
    wanted = []
    for index, image in enumerate(images):
        if isinstance(image, Exception):
            continue
        if not options.everything:
            try:
                planned[index] = _prompts_for(options, image, engine, lock)
            except (SamUserError, OSError, ValueError):
                continue
            prompts = planned[index][0]
            if not prompts.boxes and not prompts.points:
                continue
        wanted.append(index)
    encoded: List[Optional[EncodedImage]] = [None] * len(wanted)
    if len(wanted) > 1:
        try:
            with lock:
                encoded = list(engine.predictor(options.model).encode_many([images[index] for index in wanted]))
        except (SamUserError, OSError, ValueError):
            pass
    embeddings = dict(zip(wanted, encoded))
    return [(embeddings.get(index), planned[index]) for index in range(len(images))]


def group_size(engine: Engine, options: BatchOptions) -> int:
    """Sources encoded together: the engine's encoder batch size for the model."""
    return max(1, int(engine.encode_batch_size(options.model)))


def _max_pixels(engine: Engine, options: BatchOptions) -> int:
    return options.max_pixels or engine.settings.max_image_pixels


def _failed(source: Source, error: Exception) -> FileResult:
    """A source that could not be read or segmented; a user error says itself, others their type."""
    text = str(error) if isinstance(error, SamUserError) else f"{type(error).__name__}: {error}"
    return FileResult(str(source.path), "failed", error=text)


def _settled(result: FileResult, entry: Optional[Dict[str, Any]],
             futures: List[Future]) -> Tuple[FileResult, Optional[Dict[str, Any]]]:
    """A source whose writes have all finished: (its result, the state entry; None when a write failed)."""
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        result.status, result.error = "failed", f"writing outputs failed: {errors[0]}"
        return result, None
    return result, entry


def record_file(plan: BatchPlan, result: FileResult, entry: Optional[Dict[str, Any]]) -> None:
    """Count one processed source into the report and, unless it failed, the state file."""
    report = plan.report
    if result.status == "failed":
        report.failed.append({"source": result.source, "error": result.error or "failed"})
    else:
        plan.state.record(entry)
        report.outputs_written += len(result.written)
        report.outputs_kept += len(result.kept)
        report.done += result.status == "done"
        report.kept += result.status == "kept"
        report.no_objects += result.status == "no_objects"
    report.files.append(result)


def finish_batch(plan: BatchPlan, started: float) -> BatchReport:
    """Write the COCO file (every finished source, in source order) and the JSON report."""
    report = plan.report
    report.seconds = round(time.perf_counter() - started, 3)
    if "coco" in plan.options.outputs:
        report.coco = str(_write_coco(plan.output_dir, plan.sources, plan.stems, plan.state, plan.options))
    report.report = str(plan.output_dir / REPORT_FILE)
    atomic_write_bytes(plan.output_dir / REPORT_FILE, json.dumps(report.to_dict(), indent=2).encode("utf-8"))
    return report


def run_batch(engine: Engine, options: BatchOptions, *, interrupt: Interrupt = None,
              progress: Optional[Callable[[BatchProgress], None]] = None,
              gpu_lock: Optional[ContextManager] = None) -> BatchReport:
    """Segment every image of ``options.inputs``; see the module docstring for the guarantees.
    The steps are batch_ray's; here reading runs ahead and writing behind, in threads."""
    started = time.perf_counter()
    plan = plan_batch(options)
    report, todo, output_dir = plan.report, plan.todo, plan.output_dir
    source_paths = {s.path for s in plan.sources}
    manifest = _Manifest(output_dir / MANIFEST_FILE)
    max_pixels = _max_pixels(engine, options)
    lock = gpu_lock if gpu_lock is not None else contextlib.nullcontext()
    handled = report.skipped
    if progress is not None and report.skipped:
        progress(BatchProgress(handled, len(plan.sources), "", "skipped"))

    reader = ThreadPoolExecutor(max_workers=max(1, options.io_workers), thread_name_prefix="sam-batch-read")
    writer = ThreadPoolExecutor(max_workers=max(1, options.io_workers), thread_name_prefix="sam-batch-write")
    # decoded images held at once: the group being segmented and the next few being read
    size = group_size(engine, options)
    lookahead = max(2, options.io_workers)
    reads: Dict[int, Future] = {}
    pending: List[Tuple[FileResult, Optional[Dict[str, Any]], List[Future]]] = []

    def read(index: int) -> None:
        if index < len(todo) and index not in reads:
            reads[index] = reader.submit(load_image, todo[index].path, max_pixels=max_pixels)

    def loaded(index: int) -> Any:
        """The decoded image, or what reading it raised."""
        try:
            return reads.pop(index).result()
        except (SamUserError, OSError, ValueError) as error:
            return error

    def settle(wait: bool) -> None:
        """Record sources whose writes have all finished (all, if ``wait``), in source order: the
        state file and the report read the same however the writer threads interleave."""
        while pending and (wait or all(f.done() for f in pending[0][2])):
            record_file(plan, *_settled(*pending.pop(0)))

    try:
        for start in range(0, len(todo), size):
            if _is_interrupted(interrupt):
                report.interrupted = True
                break
            group = range(start, min(start + size, len(todo)))
            for index in range(start, group.stop + lookahead):
                read(index)
            images = [loaded(index) for index in group]
            prepared = prepare_group(engine, options, lock, images)
            for index, image, (encoded, planned) in zip(group, images, prepared):
                if index > start and _is_interrupted(interrupt):
                    report.interrupted = True
                    break
                source = todo[index]
                try:
                    if isinstance(image, Exception):
                        raise image
                    result, entry, futures = _process(engine, options, lock, image, source, plan.stems[source.path],
                                                      output_dir, source_paths, writer, manifest,
                                                      encoded=encoded, planned=planned)
                    pending.append((result, entry, futures))
                except (SamUserError, OSError, ValueError) as error:
                    result = _failed(source, error)
                    pending.append((result, None, []))  # recorded in its turn, with nothing to wait for
                status = result.status  # as segmented; a write that fails later is reported as failed
                settle(wait=False)
                handled += 1
                if progress is not None:
                    progress(BatchProgress(handled, len(plan.sources), str(source.path), status))
            del images, prepared  # a group's pictures and embeddings go before the next group's come
            if report.interrupted:
                break
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        for future in reads.values():
            future.cancel()
        reader.shutdown(wait=True)
        writer.shutdown(wait=True)
        settle(wait=True)
        finish_batch(plan, started)
    return report


def _prompts_for(options: BatchOptions, image: np.ndarray, engine: Engine, lock: ContextManager):
    """(prompts, the detections they came from, how many detections 'max objects' left out)."""
    shape = image.shape[:2]
    if options.text is not None:
        with lock:
            detections = find_boxes(engine, image, options.text, detector=options.dino_model,
                                    box_threshold=options.box_threshold, text_threshold=options.text_threshold)
        detections, dropped = most_confident(detections, engine.settings.max_objects)
        return Prompts(boxes=[d.box for d in detections]), detections, dropped
    points = check_points(list(options.points), shape)
    labels = check_labels(options.labels, len(points))
    return Prompts(points=points, labels=labels, boxes=check_boxes(list(options.boxes), shape)), [], 0


def _finish_mask(mask: np.ndarray, options: BatchOptions) -> np.ndarray:
    # like the reference, inversion comes first, so a positive amount grows the background
    return mask_ops.postprocess(mask, expand=options.expand, invert=options.invert)


def _process(engine: Engine, options: BatchOptions, lock, image, source: Source, stem: Path, output_dir: Path,
             source_paths, writer: ThreadPoolExecutor, manifest: _Manifest, *,
             encoded: Optional[EncodedImage] = None,
             planned: Optional[Tuple[Prompts, List[Any], int]] = None) -> Tuple[FileResult, Dict[str, Any], List[Future]]:
    """Segment one decoded image and queue its writes: (its result so far, its state entry, the
    writes); the result is final once the writes have finished (``_settled``). ``encoded``: the
    image's embeddings, when its group was encoded together; ``planned``: its ``_prompts_for``."""
    entry: Dict[str, Any] = {"source": stem.as_posix(), "outputs": [], "annotations": [], "size": list(image.shape[:2]),
                             "file": source.relative.as_posix()}
    if options.everything:
        prediction = _everything(engine, options, image, lock, encoded)
        detections: List[Any] = []
        boxes: List[Any] = []
        if len(prediction.masks) == 0:
            entry["objects"] = 0
            return FileResult(str(source.path), "no_objects"), entry, []
    else:
        prompts, detections, dropped = planned if planned is not None else _prompts_for(options, image, engine, lock)
        if dropped:
            entry["objects_left_out"] = dropped  # the least confident, past the 'max objects' setting
        if not prompts.boxes and not prompts.points:
            entry["objects"] = 0
            return FileResult(str(source.path), "no_objects"), entry, []
        with lock:
            prediction = _segment(engine, options, image, encoded, prompts)
        boxes = list(prompts.boxes)
    masks = np.asarray(prediction.masks, dtype=bool)  # (K, C, H, W)
    scores = np.asarray(prediction.scores, dtype=np.float32)
    entry["objects"] = int(masks.shape[0])
    if options.per_object:
        groups = [(k, masks[k], scores[k]) for k in range(masks.shape[0])]
    else:
        merged = prediction.merged()
        groups = [(None, merged.masks[0], merged.scores[0])]
    jobs: List[Tuple[Path, Callable[[], Any]]] = []
    for obj, candidates, candidate_scores in groups:
        order = [int(candidate_scores.argmax())] if options.naming == "inpaint" else range(candidates.shape[0])
        for candidate in order:
            raw = candidates[candidate]
            final = _finish_mask(raw, options)
            index = 0 if options.naming == "inpaint" else candidate
            if "mask" in options.outputs:
                jobs.append((output_path(output_dir, stem, "mask", options.naming, index, obj),
                             lambda m=final: _mask_image(m)))
            if "cutout" in options.outputs:
                jobs.append((output_path(output_dir, stem, "cutout", options.naming, index, obj),
                             lambda m=final: matting.cutout(image, m, options.alpha, options.alpha_band)))
            if "blend" in options.outputs:
                shown = boxes if obj is None else boxes[obj:obj + 1]
                jobs.append((output_path(output_dir, stem, "blend", options.naming, index, obj),
                             lambda m=raw, b=shown: render.reference_blend(image, m, b)))
        if "coco" in options.outputs and options.everything and obj is None:
            # segment everything: one annotation per object even when the image files are merged
            for k in range(masks.shape[0]):
                entry["annotations"].append(_annotation(_finish_mask(masks[k, 0], options), float(scores[k, 0]), None,
                                                        detections))
        elif "coco" in options.outputs:
            best = int(candidate_scores.argmax())
            entry["annotations"].append(_annotation(_finish_mask(candidates[best], options),
                                                    float(candidate_scores[best]), obj, detections))
    futures = []
    result = FileResult(str(source.path), "done")
    for path, make in jobs:
        if path.resolve() in source_paths:
            raise SamUserError(f"Output {path} would replace a source image; choose another output folder.")
        relative = path.relative_to(output_dir).as_posix()
        entry["outputs"].append(relative)
        if os.path.lexists(path):
            ours = manifest.wrote(relative)
            if not ours or not options.overwrite:
                result.kept.append(relative)
                if not ours:
                    result.not_ours.append(relative)
                continue
        # listed before the write: a crash mid-write leaves a listed file that is ours or absent
        manifest.add(relative)
        result.written.append(relative)
        # rendering (cut-out, blend) happens in the writer thread too, overlapping inference
        futures.append(writer.submit(lambda target=path, render_image=make: atomic_write_png(target, render_image())))
    if result.kept and not result.written:
        result.status = "kept"
    elif not jobs and entry["objects"] == 0:
        result.status = "no_objects"
    return result, entry, futures


def _segment(engine: Engine, options: BatchOptions, image: np.ndarray, encoded: Optional[EncodedImage],
             prompts: Prompts) -> Prediction:
    """The image's prediction, from its group's embeddings when there are some."""
    if encoded is not None:
        try:
            return engine.segment(options.model, encoded, prompts, multimask_output=options.multimask)
        except ForeignEmbeddingsError:
            pass  # the model was reloaded or moved since the group was encoded: encode this image again
    return engine.segment(options.model, image, prompts, multimask_output=options.multimask)


def _everything(engine: Engine, options: BatchOptions, image: np.ndarray, lock: ContextManager,
                encoded: Optional[EncodedImage] = None) -> Prediction:
    """AutoSAM's masks as one object each, (K, 1, H, W) with their predicted IoU (K, 1), largest
    first; no boxes, and no logits (AutoSAM keeps none)."""
    config = AutoSamConfig.from_mapping(options.autosam or {})
    with lock:
        records = generate_masks_with_engine(engine, options.model, image, config, encoded=encoded)
    records = sorted(records, key=lambda r: -int(r.area))
    if not records:
        masks = np.zeros((0, 1) + image.shape[:2], dtype=bool)
        scores = np.zeros((0, 1), dtype=np.float32)
    else:
        masks = np.stack([record.mask() for record in records])[:, None]
        scores = np.array([[record.predicted_iou] for record in records], dtype=np.float32)
    return Prediction(masks=masks, scores=scores, low_res_logits=np.zeros((len(masks), 1, 0, 0), dtype=np.float32),
                      object_boxes=[None] * len(masks))


def _mask_image(mask: np.ndarray) -> Image.Image:
    return Image.fromarray(mask.astype(np.uint8) * 255)


def _annotation(mask, score, obj, detections) -> Dict[str, Any]:
    encoded = rle.encode(mask)
    box = mask_ops.mask_to_box(mask)
    annotation = {
        "segmentation": encoded,
        "area": int(mask.sum()),
        "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]] if box else [0, 0, 0, 0],
        "score": round(score, 6),
        "iscrowd": 0,
    }
    if obj is not None and obj < len(detections):
        annotation["phrase"] = detections[obj].phrase
    return annotation


def _write_coco(output_dir: Path, sources, stems, state: _State, options: BatchOptions) -> Path:
    category = options.text.strip() if options.text else ("segment" if options.everything else "object")
    coco: Dict[str, Any] = {"images": [], "annotations": [], "categories": [{"id": 1, "name": category}]}
    for image_id, source in enumerate(sources, start=1):
        entry = state.entries.get(stems[source.path].as_posix())
        if entry is None:
            continue
        height, width = entry["size"]
        coco["images"].append({"id": image_id, "file_name": entry.get("file", source.relative.as_posix()),
                               "height": height, "width": width})
        for annotation in entry.get("annotations", []):
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                        "category_id": 1, **annotation})
    path = output_dir / COCO_FILE
    atomic_write_bytes(path, json.dumps(coco).encode("utf-8"))
    return path


# ---------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sd_webui_sam batch",
                                     description="Segment every image of folders or files with SAM.")
    parser.add_argument("inputs", nargs="+", type=Path, help="folders and/or image files")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("-m", "--model", help="SAM checkpoint file name (default: the first found)")
    parser.add_argument("--model-dir", type=Path, help="folder with SAM checkpoints")
    parser.add_argument("-r", "--recursive", action="store_true", help="descend into sub-folders")
    parser.add_argument("--text", help="GroundingDINO prompt, e.g. 'dog . cat' (one prompt mode only)")
    parser.add_argument("--point", action="append", metavar="X,Y[,LABEL]", help="a fixed point (repeatable)")
    parser.add_argument("--box", action="append", metavar="X1,Y1,X2,Y2", help="a fixed box (repeatable)")
    parser.add_argument("--everything", action="store_true", help="segment everything (AutoSAM)")
    parser.add_argument("--points-per-side", type=int, help="AutoSAM grid density for --everything (default 32)")
    parser.add_argument("--dino-model", help="GroundingDINO model name")
    parser.add_argument("--box-threshold", type=float, default=0.3)
    parser.add_argument("--text-threshold", type=float, default=0.25)
    parser.add_argument("--single", action="store_true", help="one candidate per image instead of 3")
    parser.add_argument("--per-object", action="store_true", help="one mask per object instead of merged")
    parser.add_argument("--outputs", default="mask,cutout,blend", help="comma list of mask,cutout,blend,coco")
    parser.add_argument("--naming", choices=NAMINGS, default="reference",
                        help="reference: {stem}_{idx}_mask.png; inpaint: masks/{stem}.png for A1111 batch inpaint")
    parser.add_argument("--expand", type=int, default=0, help="grow (+) or shrink (-) masks by pixels")
    parser.add_argument("--invert", action="store_true", help="save the background instead")
    parser.add_argument("--soft-edges", action="store_true",
                        help="cut-outs with an alpha matte (hair, fur, glass) instead of the hard mask")
    parser.add_argument("--edge-band", type=float, default=0,
                        help="soft edges: band width in pixels on each side of the edge (default 0: automatic)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=list(PRECISION_CHOICES),
                        help="the image encoders' precision (default auto: bf16/fp16 on an NVIDIA GPU, fp32 on the CPU)")
    parser.add_argument("--encode-batch", type=int, default=0, metavar="N",
                        help="images encoded together (default 0: 1 on the CPU, up to 8 on a GPU; "
                             "halved by itself when memory runs out)")
    return parser


def _numbers(text: str, count: Tuple[int, ...], what: str) -> List[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise SystemExit(f"{what} {text!r}: expected comma-separated numbers") from None
    if len(values) not in count:
        raise SystemExit(f"{what} {text!r}: expected {' or '.join(map(str, count))} numbers")
    return values


def main(argv: Optional[Sequence[str]] = None, *, engine: Optional[Engine] = None,
         runner: Optional[Callable[..., BatchReport]] = None, parser: Optional[argparse.ArgumentParser] = None) -> int:
    """``runner(engine, options, progress=...)`` replaces ``run_batch`` (batch_ray passes its own,
    with ``parser``: this one plus its options)."""
    args = (parser or build_parser()).parse_args(argv)
    if engine is None:
        if args.encode_batch < 0:
            raise SystemExit("--encode-batch must be 0 (automatic) or more")
        engine = Engine(EngineSettings(user_model_dir=args.model_dir, device=args.device, precision=args.precision,
                                       encode_batch_size=args.encode_batch))
    points, labels = [], []
    for text in args.point or []:
        values = _numbers(text, (2, 3), "--point")
        points.append((values[0], values[1]))
        labels.append(int(values[2]) if len(values) == 3 else 1)
    boxes = [tuple(_numbers(text, (4,), "--box")) for text in args.box or []]
    try:
        options = BatchOptions(
            inputs=args.inputs, output_dir=args.output, model=engine.resolve_model(args.model),
            recursive=args.recursive, text=args.text, dino_model=args.dino_model, box_threshold=args.box_threshold,
            text_threshold=args.text_threshold, points=points, labels=labels, boxes=boxes,
            everything=args.everything, multimask=not args.single, per_object=args.per_object,
            outputs=tuple(k.strip() for k in args.outputs.split(",") if k.strip()), naming=args.naming,
            expand=args.expand, invert=args.invert, overwrite=args.overwrite,
            alpha="soft" if args.soft_edges else "hard", alpha_band=args.edge_band,
            autosam={"points_per_side": args.points_per_side} if args.points_per_side else None,
        )
        validate_options(options)
        bar = None
        try:
            from tqdm import tqdm  # optional: a progress bar only where it is installed

            bar = tqdm(total=None, unit="img")
        except ImportError:
            pass

        def show(step: BatchProgress) -> None:
            if bar is not None:
                bar.total = step.total
                bar.n = step.index
                bar.set_postfix_str(Path(step.source).name if step.source else step.status)
                bar.refresh()

        try:
            report = (runner or run_batch)(engine, options, progress=show)
        finally:
            if bar is not None:
                bar.close()
    except SamUserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    for failure in report.failed:
        print(f"  failed: {failure['source']}: {failure['error']}", file=sys.stderr)
    # flushed now: a library that ends the process hard at exit (Ray does) must not lose the summary
    print(f"report: {report.report}", flush=True)
    sys.stderr.flush()
    return 130 if report.interrupted else (1 if report.failed else 0)
