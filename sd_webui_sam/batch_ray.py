"""The batch of :mod:`sd_webui_sam.batch` on a Ray cluster: ``python -m sd_webui_sam batch ... --ray [ADDRESS]``.

Ray is an optional extra (requirements/ray.txt); nothing the WebUI or the standalone app loads
imports this module. The work per image is batch.py's own (:func:`batch.process_group`): the
same outputs, names, atomic writes, manifest and state file. What Ray adds:

- **Reading.** Ray Data reads the sources' bytes (``read_binary_files``, one file a block), from
  local paths or any filesystem pyarrow knows.
- **Where.** Inputs and the output folder are local paths or URIs (``s3://``, ``gs://``,
  ``file://``..., whatever ``pyarrow.fs.FileSystem.from_uri`` opens). When every one is local
  (``file://`` included) the run is the local one, unchanged. An output folder elsewhere is an
  :class:`OutputStore`: actors render an image's outputs into a scratch folder of their node and
  put each one whole; the driver keeps the state file in a local staging folder and puts it,
  the manifest, the COCO file and the report back when the run ends (or is stopped).
- **Segmenting.** A pool of actors (``map_batches`` with an actor class), one engine each, so a
  model is loaded once per actor; by default one actor per GPU, or one per CPU without GPUs.
  An actor call takes a group of images (:func:`group_size`: the encoder batch size; one
  without GPUs) and encodes them together (:func:`batch.process_group`).
- **Exactly once.** The driver alone decides what is to do (the state file, as ``run_batch``)
  and alone records what was done (state, COCO, report), in source order, so the summary and
  the COCO file are those of a single-process run. Workers list an output in the folder's
  manifest before writing it and write it atomically, so an output that exists is whole and
  known to be ours; a retried image keeps what a dead worker already wrote.
- **Failures.** An image that fails on its own (unreadable, too large) comes back as a failed
  result from the worker and never raises. A worker that dies is replaced by Ray and its image
  retried up to ``max_retries`` times; an image whose retries are spent is reported failed and
  the run goes on (Ray Data's ``max_errored_blocks``). A group whose retries are spent is run
  again one image at a time, so only the image that kills its worker is reported failed. Temporary files that a killed worker
  left are removed when the run ends.
- **Stopping.** Ctrl-C (or SIGTERM) stops the run at any point (:class:`StopOnSignal`): while the
  driver waits for the pool (its actors still starting and loading models, or segmenting) at
  once; while it connects, as soon as ``ray.init`` returns. The images answered are recorded, the
  report written (interrupted, with what was done, zero included), Ray Data's executor stopped
  and then Ray shut down (in that order: see :func:`_stop_stream`), and a rerun does only the rest.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from sd_webui_sam.batch import (COCO_FILE, IMAGE_SUFFIXES, MANIFEST_FILE, REPORT_FILE, STATE_FILE, BatchOptions,
                                BatchPlan, BatchProgress, BatchReport, FileResult, Interrupt, SharedManifest, Source,
                                _Manifest, _State, _is_interrupted, _output_stems, _state_for, build_parser,
                                finish_batch, plan_batch, process_file, process_group, prompt_fingerprint,
                                record_file,
                                validate_options)
from sd_webui_sam.batch import main as batch_main
from sd_webui_sam.devices import MAX_ENCODE_BATCH
from sd_webui_sam.engine import Engine
from sd_webui_sam.errors import SamUserError
from sd_webui_sam.settings import EngineSettings

#: the name atomic_write_bytes gives its temporary file: .{name}.{8 hex}.tmp
_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")
#: the packages an actor imports (the engine's model families live in all three)
_PACKAGES = ("sd_webui_sam", "sam_hq", "sam2_image", "local_groundingdino")
_ROOT = Path(__file__).resolve().parents[1]
LOCAL = "local"  # --ray without an address: a cluster started for the run on 127.0.0.1


@dataclass
class RayOptions:
    #: "auto" (the cluster this machine belongs to), "HOST:PORT" / "ray://HOST:PORT", or LOCAL
    address: str = LOCAL
    actors: Optional[int] = None  # None: one per GPU (gpus_per_actor each), else one per CPU
    gpus_per_actor: Optional[float] = None  # None: 1 when the cluster has GPUs, else 0
    #: retries of one image after its worker died (a worker that dies on every try of one image
    #: does not hold up the run for ever)
    max_retries: int = 3
    #: for the LOCAL cluster only (None: Ray's defaults, all CPUs and GPUs of this machine)
    num_cpus: Optional[int] = None
    object_store_bytes: Optional[int] = None


class SegmentWorker:
    """A Ray Data actor: one engine (its models load once), any number of images."""

    def __init__(self, settings: EngineSettings, options: BatchOptions, output_dir: str,
                 sources: Dict[str, Tuple[str, str, str]], source_paths: frozenset,
                 store: Optional["OutputStore"] = None) -> None:
        self.engine = Engine(settings)
        self.options = options
        self.output_dir = Path(output_dir)
        #: the path Ray Data reads -> (the source as reported, its relative path, its output stem)
        self.sources = sources
        self.source_paths = source_paths
        self.store = store
        self.manifest = SharedManifest(self.output_dir / MANIFEST_FILE) if store is None else None

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, List[str]]:
        """The images Ray hands over at once (up to the group size) are encoded together."""
        items = []
        for path, data in zip(batch["path"], batch["bytes"]):
            shown, relative, stem = self.sources[_local_path(str(path))]
            items.append((bytes(data), Source(shown, Path(relative)), Path(stem)))
        if self.store is None:
            answers = self._segment(items, self.output_dir, self.source_paths, self.manifest)
        else:
            answers = self._segment_into_store(items)
        return {"row": [json.dumps({"source": str(source.path), "result": asdict(result), "entry": entry,
                                    "pid": os.getpid()})
                        for (_, source, _), (result, entry) in zip(items, answers)]}

    def _segment(self, items: List[Tuple[bytes, Source, Path]], output_dir: Path, source_paths: frozenset,
                 manifest: _Manifest) -> List[Tuple[FileResult, Optional[Dict]]]:
        if len(items) == 1:
            data, source, stem = items[0]
            return [process_file(self.engine, self.options, data, source, stem, output_dir, source_paths, manifest)]
        return process_group(self.engine, self.options, items, output_dir, source_paths, manifest)

    def _segment_into_store(self, items: List[Tuple[bytes, Source, Path]]) -> List[Tuple[FileResult, Optional[Dict]]]:
        """batch's outputs rendered into a scratch folder of this node, then put into the store."""
        with tempfile.TemporaryDirectory(prefix="sam-batch-") as scratch:
            answers = self._segment(items, Path(scratch), frozenset(), _Manifest(Path(scratch) / MANIFEST_FILE))
            published = []
            for result, entry in answers:
                if entry is not None:
                    try:
                        self.store.publish(Path(scratch), result, self.options.overwrite)
                    except OSError as error:
                        result.status, result.error = "failed", f"writing outputs failed: {_first_line(error)}"
                        entry = None
                published.append((result, entry))
        return published


def _local_path(path: str) -> str:
    """Ray Data's path for a local file (it may carry a local:// scheme) as the driver wrote it."""
    return path[len("local://"):] if path.startswith("local://") else path


# ---------------------------------------------------------------------- paths and URIs

#: scheme://... : a URI for pyarrow (a Windows drive, C:\\..., is a path)
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
#: filesystems whose move (rename) is atomic: their outputs are written to a temporary name first
_ATOMIC_MOVE = ("local", "hdfs")


def _pyarrow_fs() -> Any:
    try:
        from pyarrow import fs  # optional (requirements/ray.txt), like Ray itself
    except ImportError:
        raise SamUserError("pyarrow is not installed; install it with: pip install -r requirements/ray.txt") from None
    return fs


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass(frozen=True)
class Location:
    """An input or the output folder: a local path (filesystem None), or a path on a pyarrow filesystem."""

    shown: str  # in messages and reports: the path, or the URI without credentials or options
    filesystem: Any
    path: str


def locate(text: Any) -> Location:
    """A local path as it is; a URI through ``pyarrow.fs.FileSystem.from_uri`` (``file://`` is local)."""
    text = str(text)
    if not _URI.match(text):
        return Location(text, None, text)
    shown = re.sub(r"^([^:]+://)[^@/]*@", r"\1", text).split("?", 1)[0]
    try:
        filesystem, path = _pyarrow_fs().FileSystem.from_uri(text)
    except (ValueError, OSError, NotImplementedError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise SamUserError(f"Cannot open {shown}: {_first_line(error)}") from None
    if filesystem.type_name == "local":
        return Location(path, None, path)
    return Location(shown.rstrip("/"), filesystem, path.rstrip("/"))


def _moves_atomically(filesystem: Any) -> bool:
    while filesystem.type_name == "subtree":
        filesystem = filesystem.base_fs
    return filesystem.type_name in _ATOMIC_MOVE


class OutputStore:
    """The output folder on a filesystem that is not this machine's (an object store, HDFS...).

    The same rules as a local folder: an output that exists is kept unless it is ours and
    ``overwrite``; an output is listed as ours before it is written. Object stores cannot
    append, so the manifest is ``.sam-batch-manifest.txt`` plus one small object per output
    listed since (``.sam-batch-manifest.d/``), which the driver folds into the file at the end."""

    PARTS = MANIFEST_FILE.replace(".txt", ".d")

    def __init__(self, location: Location) -> None:
        self.filesystem = location.filesystem
        self.root = location.path
        self.shown = location.shown
        self._listed: Optional[Set[str]] = None  # the manifest file's names, read once

    def _full(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def exists(self, relative: str) -> bool:
        return self.filesystem.get_file_info(self._full(relative)).type != _pyarrow_fs().FileType.NotFound

    def read(self, relative: str) -> Optional[bytes]:
        try:
            with self.filesystem.open_input_stream(self._full(relative)) as stream:
                return stream.read()
        except FileNotFoundError:
            return None

    def put(self, relative: str, data: bytes) -> None:
        target = self._full(relative)
        if not _moves_atomically(self.filesystem):
            # one put: an object store shows an object only once its upload is complete, whole,
            # and its "move" is a copy and a delete, no more atomic than that; so no temporary name
            with self.filesystem.open_output_stream(target) as stream:
                stream.write(data)
            return
        parent, name = target.rsplit("/", 1)
        self.filesystem.create_dir(parent, recursive=True)
        temporary = f"{parent}/.{name}.{uuid.uuid4().hex[:8]}.tmp"  # as batch.atomic_write_bytes names it
        with self.filesystem.open_output_stream(temporary) as stream:
            stream.write(data)
        self.filesystem.move(temporary, target)

    def files(self, under: str = "") -> Dict[str, Any]:
        """Every file below the folder (or below ``under`` in it): relative name -> FileInfo."""
        fs = _pyarrow_fs()
        base = self._full(under) if under else self.root
        infos = self.filesystem.get_file_info(fs.FileSelector(base, recursive=True, allow_not_found=True))
        return {info.path[len(self.root) + 1:]: info for info in infos if info.type == fs.FileType.File}

    # the manifest

    def _part(self, relative: str) -> str:
        return f"{self.PARTS}/{hashlib.sha1(relative.encode('utf-8')).hexdigest()[:24]}.txt"

    def ours(self, relative: str) -> bool:
        if self._listed is None:
            self._listed = set((self.read(MANIFEST_FILE) or b"").decode("utf-8", "replace").splitlines())
        return relative in self._listed or self.exists(self._part(relative))

    def publish(self, scratch: Path, result: FileResult, overwrite: bool) -> None:
        """Put the outputs ``process_file`` wrote into ``scratch``, under batch's rules for what exists."""
        written = []
        for relative in result.written:
            if self.exists(relative):
                ours = self.ours(relative)
                if not ours or not overwrite:
                    result.kept.append(relative)
                    if not ours:
                        result.not_ours.append(relative)
                    continue
            self.put(self._part(relative), relative.encode("utf-8"))  # listed before it is written
            self.put(relative, (scratch / relative).read_bytes())
            written.append(relative)
        result.written = written
        if result.kept and not written:
            result.status = "kept"

    def fold_manifest(self) -> None:
        names = set((self.read(MANIFEST_FILE) or b"").decode("utf-8", "replace").splitlines())
        parts = self.files(self.PARTS)
        for relative in parts:
            names.add((self.read(relative) or b"").decode("utf-8", "replace").strip())
        names.discard("")
        self.put(MANIFEST_FILE, "".join(f"{name}\n" for name in sorted(names)).encode("utf-8"))
        for relative in parts:  # only those folded in: a late worker's part stays for the next run
            self.filesystem.delete_file(self._full(relative))

    def finish(self, plan: BatchPlan) -> None:
        """The driver's end of a run: the manifest, state, COCO file and report, put into the store."""
        self.fold_manifest()
        state = plan.output_dir / STATE_FILE
        if state.is_file():
            self.put(STATE_FILE, state.read_bytes())
        report = plan.report
        if report.coco:
            self.put(COCO_FILE, Path(report.coco).read_bytes())
            report.coco = f"{self.shown}/{COCO_FILE}"
        report.report = f"{self.shown}/{REPORT_FILE}"
        self.put(REPORT_FILE, json.dumps(report.to_dict(), indent=2).encode("utf-8"))


@dataclass
class _Where:
    """Where a run reads and writes: Ray Data's filesystem for the inputs (None: local), the path
    it reads for each source, and the output store (None: a local output folder)."""

    filesystem: Any
    read_paths: Dict[str, str]
    store: Optional[OutputStore]


def plan_run(options: BatchOptions, staging: Path) -> Tuple[BatchPlan, _Where]:
    """batch's plan when every input and the output are local (the local run, unchanged), else
    the same plan made through pyarrow; ``staging`` holds a remote output's state file meanwhile."""
    inputs = [locate(item) for item in options.inputs]
    output = locate(options.output_dir)
    if output.filesystem is None and all(item.filesystem is None for item in inputs):
        plan = plan_batch(replace(options, inputs=[Path(item.path) for item in inputs], output_dir=Path(output.path)))
        return plan, _Where(None, {str(s.path): str(s.path) for s in plan.sources}, None)
    validate_options(options)
    filesystem = _one_filesystem(inputs)
    sources, ignored, read_paths = _list_sources(inputs, filesystem, output, options.recursive)
    stems = _output_stems(sources)
    if output.filesystem is None:
        store = None
        output_dir = Path(output.path).expanduser().resolve()
        output_dir.mkdir(parents=True, exist_ok=True)
        state = _state_for(options, output_dir)  # refuses outputs of other prompts, as run_batch does

        def finished(stem: str) -> bool:
            return state.finished(Path(stem), output_dir)
    else:
        store = OutputStore(output)
        output_dir = staging
        try:
            saved, existing = store.read(STATE_FILE), store.files()
        except OSError as error:
            raise SamUserError(f"Cannot read the output folder {output.shown}: {_first_line(error)}") from None
        if saved is not None:
            (staging / STATE_FILE).write_bytes(saved)
        # the prompts are recorded; comparing them with a store's earlier run is not done yet
        state = _State(staging / STATE_FILE, prompts=prompt_fingerprint(options))

        def finished(stem: str) -> bool:
            entry = state.entries.get(stem)
            return entry is not None and all(name in existing for name in entry.get("outputs", []))
    todo = [s for s in sources if options.overwrite or not finished(stems[s.path].as_posix())]
    report = BatchReport(output_dir=output.shown if store else str(output_dir), total=len(sources),
                         ignored=ignored, skipped=len(sources) - len(todo))
    queued = set(todo)
    report.files.extend(FileResult(str(s.path), "skipped") for s in sources if s not in queued)
    plan = BatchPlan(options, output_dir, sources, stems, todo, state, report)
    return plan, _Where(filesystem, read_paths, store)


def _one_filesystem(inputs: List[Location]) -> Any:
    """The filesystem of every input (Ray Data reads through one); LocalFileSystem for local paths."""
    fs = _pyarrow_fs()
    systems = [item.filesystem or fs.LocalFileSystem() for item in inputs]
    if any(not system.equals(systems[0]) for system in systems[1:]):
        raise SamUserError("All inputs must be on one filesystem (local paths, or URIs of one store).")
    return systems[0]


def _list_sources(inputs: List[Location], filesystem: Any, output: Location,
                  recursive: bool) -> Tuple[List[Source], List[str], Dict[str, str]]:
    """batch.collect_sources through pyarrow: (sources, sorted; non-images ignored; source -> path to read)."""
    fs = _pyarrow_fs()
    same_store = output.filesystem is not None and output.filesystem.equals(filesystem)
    sources: List[Source] = []
    ignored: List[str] = []
    read_paths: Dict[str, str] = {}
    for item in inputs:
        path = item.path if item.filesystem is not None else str(Path(item.path).expanduser().resolve())
        try:
            info = filesystem.get_file_info(path)
            if info.type == fs.FileType.Directory:
                if same_store and output.path == path:
                    raise SamUserError(f"The output folder {output.shown} is also an input folder; write the "
                                       f"outputs to a separate folder.")
                found = filesystem.get_file_info(fs.FileSelector(path, recursive=recursive))
                listed = sorted((f.path[len(path) + 1:], f.path) for f in found if f.type == fs.FileType.File)
            elif info.type == fs.FileType.File:
                listed = [(info.base_name, path)]
            else:
                raise SamUserError(f"Input {item.shown!r} is neither a folder nor a file.")
        except OSError as error:
            raise SamUserError(f"Cannot read {item.shown}: {_first_line(error)}") from None
        for relative, full in listed:
            name = relative.rsplit("/", 1)[-1]
            if name.startswith(".") or (same_store and full.startswith(output.path + "/")):
                continue
            shown = f"{item.shown}/{relative}" if info.type == fs.FileType.Directory else item.shown
            if item.filesystem is None:
                shown = full
            if shown in read_paths:
                continue
            if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
                if name not in (STATE_FILE, REPORT_FILE, COCO_FILE):
                    ignored.append(shown)
                continue
            read_paths[shown] = full
            sources.append(Source(shown, Path(relative)))
    return sources, ignored, read_paths


# ------------------------------------------------------------------------------ the cluster


class _Cluster:
    """Connected to the cluster for the run: the caller's connection if it has one (kept open),
    else a new one (closed at the end). A local cluster binds 127.0.0.1 and has no dashboard."""

    def __init__(self, ray_options: RayOptions) -> None:
        self.ray_options = ray_options
        self.owned = False
        self.ray: Any = None

    def connect(self) -> Any:
        if self.ray_options.address == LOCAL or _on_loopback(self.ray_options.address):
            # Ray swaps a 127.0.0.1 address for this machine's network address unless told that
            # the cluster is local only (read when ray is imported): a loopback cluster stays there
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        try:
            import ray  # optional: only a --ray run needs it
        except ImportError:
            raise SamUserError("Ray is not installed; install it with: pip install -r requirements/ray.txt") from None
        self.ray = ray
        if not ray.is_initialized():
            # the workers import our packages from a copy Ray ships to every node (nothing to install there)
            code = {"py_modules": [str(_ROOT / package) for package in _PACKAGES],
                    "excludes": ["__pycache__", "*.pyc"]}
            common = dict(include_dashboard=False, log_to_driver=False, configure_logging=False, runtime_env=code)
            self.owned = True  # from here on: a connection half made by an interrupted init is closed too
            if self.ray_options.address == LOCAL:
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                ray.init(_node_ip_address="127.0.0.1", num_cpus=self.ray_options.num_cpus,
                         object_store_memory=self.ray_options.object_store_bytes, **common)
            elif _on_loopback(self.ray_options.address):
                # a cluster on this machine's loopback: this driver is on that node, by that address
                ray.init(address=self.ray_options.address, _node_ip_address="127.0.0.1", **common)
            else:
                ray.init(address=self.ray_options.address, **common)
        return ray

    def close(self) -> None:
        """Disconnect (a LOCAL cluster stops); the job's actors and tasks end with the connection."""
        if self.owned:
            self.owned = False
            self.ray.shutdown()


def _on_loopback(address: str) -> bool:
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    return host == "localhost" or host == "::1" or host.startswith("127.")


def pool_size(resources: Dict[str, float], ray_options: RayOptions) -> tuple:
    """(actors, GPUs per actor, CPUs per actor) for the cluster's resources."""
    gpus = float(resources.get("GPU", 0))
    cpus = float(resources.get("CPU", 1))
    per_gpu = ray_options.gpus_per_actor if ray_options.gpus_per_actor is not None else (1.0 if gpus else 0.0)
    if ray_options.actors is not None:
        actors = ray_options.actors
    elif per_gpu > 0:
        actors = max(1, int(gpus / per_gpu))
    else:
        actors = max(1, int(cpus))
    if actors < 1:
        raise SamUserError("--ray-actors must be at least 1.")
    if per_gpu > 0 and per_gpu * actors > gpus:
        raise SamUserError(f"{actors} actors with {per_gpu:g} GPUs each need {per_gpu * actors:g} GPUs; "
                           f"the cluster has {gpus:g}.")
    # without GPUs the CPUs are shared out between the actors (torch's threads follow); reading needs none
    cpus_each = 1.0 if per_gpu > 0 else cpus / actors
    return actors, per_gpu, cpus_each


# ----------------------------------------------------------------------------- stopping


class StopOnSignal:
    """Ctrl-C (SIGINT) and SIGTERM for a driver: ``stop`` is set, and the run ends interrupted.

    How a signal acts depends on what the driver is doing (``run_batch_ray`` sets the ``mode``):

    - ``RAISE``: the driver only waits for the cluster (the pool starting its actors, loading
      models, segmenting). KeyboardInterrupt there and then: Ray Data shuts its executor down on
      it, so a stop never waits for the first image of a pool that is still warming up.
    - ``PATIENT``: connecting (``ray.init``) or disconnecting. A KeyboardInterrupt inside Ray's
      set-up leaves a half-made connection, so the first signal only sets ``stop`` (read as soon
      as ``ray.init`` returns); a second one raises, for a cluster that does not answer.
    - ``FLAG`` (otherwise: setting up, recording, writing the report): ``stop`` only, so the
      report is always written.
    """

    RAISE, PATIENT, FLAG = "raise", "patient", "flag"
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._mode = self.FLAG
        self._previous: Dict[int, Any] = {}

    def install(self) -> None:
        """Handle SIGINT and SIGTERM (again after ``ray.init``, which puts its own SIGTERM handler in)."""
        for number in self.SIGNALS:
            previous = signal.signal(number, self._on_signal)
            self._previous.setdefault(number, previous)

    def uninstall(self) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous.clear()

    @contextlib.contextmanager
    def mode(self, mode: str) -> Iterator[None]:
        previous, self._mode = self._mode, mode
        try:
            yield
        finally:
            self._mode = previous

    def _on_signal(self, signum: int, frame: Any) -> None:
        repeated = self.stop.is_set()
        self.stop.set()
        if self._mode == self.RAISE or (repeated and self._mode == self.PATIENT):
            _say("\ninterrupted: stopping now\n" if repeated else
                 "\ninterrupted: stopping; the report lists what was done, and the same command finishes the rest\n")
            raise KeyboardInterrupt
        if not repeated:
            _say("\ninterrupted: stopping as soon as this step is over; the report lists what was done\n")


def _say(text: str) -> None:
    """A line on stderr from a signal handler: os.write, since a print could land inside a print
    that the signal interrupted (a buffered stderr then raises 'reentrant call')."""
    with contextlib.suppress(OSError):
        os.write(2, text.encode("utf-8", "replace"))


def _mode(signals: Optional[StopOnSignal], mode: str) -> Any:
    return signals.mode(mode) if signals is not None else contextlib.nullcontext()


# -------------------------------------------------------------------------------- the run


def run_batch_ray(options: BatchOptions, settings: EngineSettings, ray_options: RayOptions = RayOptions(), *,
                  interrupt: Interrupt = None, progress: Optional[Callable[[BatchProgress], None]] = None,
                  on_result: Optional[Callable[[Dict[str, Any]], None]] = None,
                  signals: Optional[StopOnSignal] = None,
                  on_phase: Optional[Callable[[str], None]] = None) -> BatchReport:
    """The batch of ``run_batch`` on a Ray cluster; see the module docstring. ``on_result`` sees
    each worker's answer (source, result, worker pid) as it arrives; ``on_phase`` a line as the
    run connects, starts its pool, has its first image and stops (each begins with a word of
    ``PHASES``); ``signals`` (the command line's) are told what the driver is doing, so that a
    stop is prompt and safe."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sam-batch-staging-") as staging:
        plan, where = plan_run(options, Path(staging))
        return _run(plan, where, settings, ray_options, started, interrupt, progress, on_result, signals,
                    on_phase or (lambda line: None))


#: the first word of each line ``on_phase`` gets, in order
PHASES = ("connecting", "starting", "running", "stopping")


def _run(plan: BatchPlan, where: _Where, settings: EngineSettings, ray_options: RayOptions, started: float,
         interrupt: Interrupt, progress: Optional[Callable[[BatchProgress], None]],
         on_result: Optional[Callable[[Dict[str, Any]], None]], signals: Optional[StopOnSignal],
         on_phase: Callable[[str], None]) -> BatchReport:
    if where.store is None:
        _remove_temporaries(plan.output_dir)  # left by a run whose worker was killed mid-write
    report = plan.report
    handled = report.skipped
    counts = {"done": 0, "failed": 0}
    total = len(plan.sources)

    def tell(source: str) -> None:
        if progress is not None:
            rate = (handled - report.skipped) / max(time.perf_counter() - started, 1e-6)
            status = (f"{counts['done']} done, {counts['failed']} failed, {report.skipped} skipped, "
                      f"{rate:.2f} img/s")
            progress(BatchProgress(handled, total, source, status))

    if report.skipped:
        tell("")
    answered: Dict[str, tuple] = {}
    cluster = _Cluster(ray_options)
    stopped_by_signal = False
    try:
        if plan.todo and not _is_interrupted(interrupt):
            where_to = "a cluster of its own on 127.0.0.1" if ray_options.address == LOCAL else ray_options.address
            on_phase(f"connecting to Ray ({where_to})")
            with _mode(signals, StopOnSignal.PATIENT):
                ray = cluster.connect()
            if signals is not None:
                signals.install()  # ray.init replaced our SIGTERM handler with one that exits at once
            with _mode(signals, StopOnSignal.RAISE):
                if _is_interrupted(interrupt):  # stopped while connecting: no pool is started
                    raise KeyboardInterrupt
                answers = _segment(ray, plan, where, settings, ray_options, on_phase)
                try:
                    for answer in answers:
                        if _is_interrupted(interrupt):
                            break  # a stop whose KeyboardInterrupt was swallowed (raised inside a __del__)
                        if on_result is not None:
                            on_result(answer)
                        if answer["source"] in answered:
                            continue  # a retried block's duplicate answer: the first one counts
                        result = FileResult(**answer["result"])
                        answered[answer["source"]] = (result, answer["entry"])
                        if len(answered) == 1:
                            on_phase(f"running: the first image is done ({Path(answer['source']).name})")
                        handled += 1
                        counts["failed" if result.status == "failed" else "done"] += 1
                        tell("")
                        if _is_interrupted(interrupt):
                            break
                finally:
                    answers.close()  # each pass stops its executor (and the pool) before Ray is shut down
    except KeyboardInterrupt:
        stopped_by_signal = True
    finally:
        with _mode(signals, StopOnSignal.FLAG):
            # everything answered is recorded even when a stop came after the last answer
            report.interrupted = len(answered) < len(plan.todo) and (stopped_by_signal or _is_interrupted(interrupt))
            if report.interrupted:
                on_phase(f"stopping: {len(answered)} of {len(plan.todo)} images answered; writing the report")
            try:
                _record_in_source_order(plan, answered)
                finish_batch(plan, started)
                if where.store is not None:
                    try:
                        where.store.finish(plan)
                    except OSError as error:
                        raise SamUserError(f"Cannot write the report into {where.store.shown}: "
                                           f"{_first_line(error)}") from None
            finally:
                with _mode(signals, StopOnSignal.PATIENT):
                    _disconnect(cluster)
                if where.store is None:
                    _remove_temporaries(plan.output_dir)  # after the job's workers were told to end
    return report


def _disconnect(cluster: _Cluster) -> None:
    """Shut Ray down after the report is written: a failure (or a second Ctrl-C) here is told, not raised."""
    try:
        cluster.close()
    except KeyboardInterrupt:
        _say("Ray was left to shut itself down as the process ends\n")
    except Exception as error:  # any: the run is over and recorded, and its exit status stays
        logging.getLogger(__name__).warning("Ray did not shut down cleanly: %s", _first_line(error))


def group_size(settings: EngineSettings, gpus_each: float) -> int:
    """Images one actor call takes (and encodes together): the settings' encoder batch size, else
    the accelerator default with GPUs and one without (as devices.default_encode_batch; the
    driver need not have the actors' device)."""
    if settings.encode_batch_size:
        return max(1, int(settings.encode_batch_size))
    return MAX_ENCODE_BATCH if gpus_each else 1


def _segment(ray: Any, plan: BatchPlan, where: _Where, settings: EngineSettings,
             ray_options: RayOptions, on_phase: Callable[[str], None]) -> Iterator[Dict[str, Any]]:
    """Each todo source's answer, in the order they finish; sources whose retries were spent
    (their block errored and was dropped) are answered failed at the end.

    Sources go to the actors in groups (:func:`group_size`). A group whose worker kept dying is
    tried again one image at a time, so that only the image that kills its worker fails."""
    context = ray.data.DataContext.get_current()
    context.max_errored_blocks = -1  # an image whose worker kept dying must not end the run
    context.enable_progress_bars = False  # the driver shows its own
    context.issue_detectors_config.detectors = []  # its memory hints are about Ray's reading, not ours
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # one line per stage otherwise
    pool = pool_size(ray.cluster_resources(), ray_options)
    group = group_size(settings, pool[1])
    seen = set()
    # In groups first; then, if any group's worker kept dying, what is left one image at a time.
    for pass_group in (group, 1) if group > 1 else (group,):
        left = [source for source in plan.todo if str(source.path) not in seen]
        if not left:
            break
        # closing(): a stop closes this generator, and each pass must stop its stream then, not
        # when (or if) the garbage collector gets to it (see _segment_pass)
        with contextlib.closing(_segment_pass(ray, plan, where, settings, ray_options, pool, left, pass_group,
                                              on_phase)) as answers:
            for answer in answers:
                seen.add(answer["source"])
                yield answer
    for source in plan.todo:
        if str(source.path) not in seen:
            error = (f"its worker died {ray_options.max_retries + 1} times while segmenting it "
                     f"(out of memory? see the Ray logs)")
            yield {"source": str(source.path), "result": asdict(FileResult(str(source.path), "failed", error=error)),
                   "entry": None, "pid": None}


def _segment_pass(ray: Any, plan: BatchPlan, where: _Where, settings: EngineSettings, ray_options: RayOptions,
                  pool: tuple, todo: List[Source], group: int,
                  on_phase: Callable[[str], None]) -> Iterator[Dict[str, Any]]:
    """The answers of one Ray Data run over ``todo``, ``group`` images per actor call."""
    actors, gpus_each, cpus_each = pool
    sources = {where.read_paths[str(s.path)]: (str(s.path), s.relative.as_posix(), plan.stems[s.path].as_posix())
               for s in todo}
    source_paths = frozenset(s.path for s in plan.sources) if where.filesystem is None else frozenset()
    paths = list(sources)
    # reading takes no CPU from the actors; as many readers as actors keep them fed (each reader
    # is a worker process of its own)
    dataset = ray.data.read_binary_files(paths, filesystem=where.filesystem, include_paths=True,
                                         override_num_blocks=len(paths), ray_remote_args={"num_cpus": 0},
                                         concurrency=actors)
    segmented = dataset.map_batches(
        SegmentWorker, batch_size=group, compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus_each,
        num_gpus=gpus_each or None,
        fn_constructor_args=(settings, plan.options, str(plan.output_dir), sources, source_paths, where.store),
        max_restarts=-1, max_task_retries=ray_options.max_retries)
    on_phase(f"starting {actors} segmenting actor{'s' if actors > 1 else ''} for {len(paths)} images "
             f"(each loads the model before its first image)")
    try:
        for row in segmented.iter_rows():
            yield json.loads(row["row"])
    finally:
        _stop_stream(segmented)


def _stop_stream(dataset: Any) -> None:
    """Stop the Ray Data executor behind ``dataset``'s rows now, and wait until it has stopped.

    A stream left before its end (a stop) keeps its executor and reader threads running until
    the dataset is garbage-collected, and Ray ends a process whose thread calls into it after
    ``ray.shutdown`` with ``_exit(1)`` ("The core worker has already been shutdown"): exit 1
    instead of 130, and the summary still in stdout's buffer lost. Ray Data has no public call
    for this; ``Dataset._current_executor`` is what its own blocking calls shut down (Ray 2.52).
    """
    executor = getattr(dataset, "_current_executor", None)
    if executor is None:
        return
    try:
        executor.shutdown(force=True)
    except Exception as error:  # any: the run is over either way; Ray's own shutdown follows
        logging.getLogger(__name__).warning("Ray Data's executor did not stop cleanly: %s", _first_line(error))


def _record_in_source_order(plan: BatchPlan, answered: Dict[str, tuple]) -> None:
    for source in plan.todo:
        if str(source.path) in answered:
            record_file(plan, *answered[str(source.path)])


def _remove_temporaries(output_dir: Path) -> None:
    """Temporary files of atomic writes whose writer was killed (the finished file never is one)."""
    for path in output_dir.rglob(".*.tmp"):
        if _TEMPORARY.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- command line


def exit_process(code: int) -> None:
    """End a driver process with ``code``, its output flushed, without the interpreter's
    finalisation: Ray objects freed then (by Ray Data's threads or the collector) can call into
    Ray's shut-down core worker, which ends the process with status 1 instead, so a Ctrl-C's 130
    or a failure's 1 would not be the run's own. Everything of the run is written by now."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be told
            pass
    os._exit(code)


def build_ray_parser() -> argparse.ArgumentParser:
    """batch's parser plus the Ray options."""
    parser = build_parser()
    for action in parser._actions:  # argparse keeps no other handle on an added argument
        if action.dest in ("inputs", "output"):
            action.type = str  # a URI as typed: a Path would fold s3://bucket into s3:/bucket
            action.help += "; or a URI pyarrow opens (s3://bucket/prefix, gs://..., file:///...)"
    group = parser.add_argument_group("Ray cluster")
    group.add_argument("--ray", nargs="?", const=LOCAL, metavar="ADDRESS",
                       help="run on a Ray cluster: 'auto', HOST:PORT or ray://HOST:PORT; without a value, "
                            "a cluster started for this run on 127.0.0.1")
    group.add_argument("--ray-actors", type=int, help="segmenting actors (default: one per GPU, else one per CPU)")
    group.add_argument("--ray-gpus-per-actor", type=float, help="GPUs each actor holds (default 1 with GPUs, else 0)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    signals = StopOnSignal()
    signals.install()  # first: a Ctrl-C while the batch is set up stops it too (with a report)
    try:
        parser = build_ray_parser()
        args = parser.parse_args(argv)
        ray_options = RayOptions(address=args.ray or LOCAL, actors=args.ray_actors,
                                 gpus_per_actor=args.ray_gpus_per_actor)

        def runner(engine: Any, options: BatchOptions, progress: Callable[[BatchProgress], None]) -> BatchReport:
            return run_batch_ray(options, engine.settings, ray_options, interrupt=signals.stop, progress=progress,
                                 signals=signals, on_phase=lambda line: print(f"\nray: {line}", file=sys.stderr))

        return batch_main(argv, runner=runner, parser=parser)
    finally:
        signals.uninstall()


if __name__ == "__main__":
    exit_process(main())
