"""The batch of :mod:`sd_webui_sam.batch` on a Ray cluster: ``python -m sd_webui_sam batch ... --ray [ADDRESS]``.

Ray is an optional extra (requirements/ray.txt); nothing the WebUI or the standalone app loads
imports this module. The work per image is batch.py's own (:func:`batch.process_file`): the
same outputs, names, atomic writes, manifest and state file. What Ray adds:

- **Reading.** Ray Data reads the sources' bytes (``read_binary_files``, one file a block, so a
  block that has to be retried is one image), from local paths or any filesystem pyarrow knows.
- **Segmenting.** A pool of actors (``map_batches`` with an actor class), one engine each, so a
  model is loaded once per actor; by default one actor per GPU, or one per CPU without GPUs.
- **Exactly once.** The driver alone decides what is to do (the state file, as ``run_batch``)
  and alone records what was done (state, COCO, report), in source order, so the summary and
  the COCO file are those of a single-process run. Workers list an output in the folder's
  manifest before writing it and write it atomically, so an output that exists is whole and
  known to be ours; a retried image keeps what a dead worker already wrote.
- **Failures.** An image that fails on its own (unreadable, too large) comes back as a failed
  result from the worker and never raises. A worker that dies is replaced by Ray and its image
  retried up to ``max_retries`` times; an image whose retries are spent is reported failed and
  the run goes on (Ray Data's ``max_errored_blocks``). Temporary files that a killed worker
  left are removed when the run ends.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from sd_webui_sam.batch import (MANIFEST_FILE, BatchOptions, BatchPlan, BatchProgress, BatchReport, FileResult,
                                Interrupt, SharedManifest, Source, build_parser, finish_batch, plan_batch,
                                _is_interrupted, process_file, record_file)
from sd_webui_sam.batch import main as batch_main
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

    def __init__(self, settings: EngineSettings, options: BatchOptions, output_dir: str, stems: Dict[str, str],
                 source_paths: frozenset) -> None:
        self.engine = Engine(settings)
        self.options = options
        self.output_dir = Path(output_dir)
        self.stems = stems
        self.source_paths = source_paths
        self.manifest = SharedManifest(self.output_dir / MANIFEST_FILE)

    def __call__(self, batch: Dict[str, Any]) -> Dict[str, List[str]]:
        rows = []
        for path, data in zip(batch["path"], batch["bytes"]):
            source_path = Path(_local_path(str(path)))
            relative, stem = self.stems[str(source_path)]
            source = Source(source_path, Path(relative))
            result, entry = process_file(self.engine, self.options, bytes(data), source, Path(stem), self.output_dir,
                                         self.source_paths, self.manifest)
            rows.append(json.dumps({"source": str(source_path), "result": asdict(result), "entry": entry,
                                    "pid": os.getpid()}))
        return {"row": rows}


def _local_path(path: str) -> str:
    """Ray Data's path for a local file (it may carry a local:// scheme) as the driver wrote it."""
    return path[len("local://"):] if path.startswith("local://") else path


# ------------------------------------------------------------------------------ the cluster


class _Cluster:
    """Connected to the cluster for the run: the caller's connection if it has one (kept open),
    else a new one (closed at the end). A local cluster binds 127.0.0.1 and has no dashboard."""

    def __init__(self, ray_options: RayOptions) -> None:
        self.ray_options = ray_options
        self.owned = False

    def __enter__(self) -> Any:
        if self.ray_options.address == LOCAL or _on_loopback(self.ray_options.address):
            # Ray swaps a 127.0.0.1 address for this machine's network address unless told that
            # the cluster is local only (read when ray is imported): a loopback cluster stays there
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        try:
            import ray  # optional: only a --ray run needs it
        except ImportError:
            raise SamUserError("Ray is not installed; install it with: pip install -r requirements/ray.txt") from None
        if not ray.is_initialized():
            # the workers import our packages from a copy Ray ships to every node (nothing to install there)
            code = {"py_modules": [str(_ROOT / package) for package in _PACKAGES],
                    "excludes": ["__pycache__", "*.pyc"]}
            common = dict(include_dashboard=False, log_to_driver=False, configure_logging=False, runtime_env=code)
            if self.ray_options.address == LOCAL:
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                ray.init(_node_ip_address="127.0.0.1", num_cpus=self.ray_options.num_cpus,
                         object_store_memory=self.ray_options.object_store_bytes, **common)
            elif _on_loopback(self.ray_options.address):
                # a cluster on this machine's loopback: this driver is on that node, by that address
                ray.init(address=self.ray_options.address, _node_ip_address="127.0.0.1", **common)
            else:
                ray.init(address=self.ray_options.address, **common)
            self.owned = True
        return ray

    def __exit__(self, *exc: Any) -> None:
        if self.owned:
            import ray  # optional, see __enter__

            ray.shutdown()


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


# -------------------------------------------------------------------------------- the run


def run_batch_ray(options: BatchOptions, settings: EngineSettings, ray_options: RayOptions = RayOptions(), *,
                  interrupt: Interrupt = None, progress: Optional[Callable[[BatchProgress], None]] = None,
                  on_result: Optional[Callable[[Dict[str, Any]], None]] = None) -> BatchReport:
    """The batch of ``run_batch`` on a Ray cluster; see the module docstring. ``on_result`` sees
    each worker's answer (source, result, worker pid) as it arrives."""
    started = time.perf_counter()
    plan = plan_batch(options)
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
    try:
        if plan.todo:
            with _Cluster(ray_options) as ray:
                for answer in _segment(ray, plan, settings, ray_options):
                    if on_result is not None:
                        on_result(answer)
                    if answer["source"] in answered:
                        continue  # a retried block's duplicate answer: the first one counts
                    result = FileResult(**answer["result"])
                    answered[answer["source"]] = (result, answer["entry"])
                    handled += 1
                    counts["failed" if result.status == "failed" else "done"] += 1
                    tell("")
                    if _is_interrupted(interrupt):
                        report.interrupted = True
                        break
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        _remove_temporaries(plan.output_dir)
        _record_in_source_order(plan, answered)
        finish_batch(plan, started)
    return report


def _segment(ray: Any, plan: BatchPlan, settings: EngineSettings, ray_options: RayOptions) -> Iterator[Dict[str, Any]]:
    """Each todo source's answer, in the order they finish; sources whose retries were spent
    (their block errored and was dropped) are answered failed at the end."""
    context = ray.data.DataContext.get_current()
    context.max_errored_blocks = -1  # an image whose worker kept dying must not end the run
    context.enable_progress_bars = False  # the driver shows its own
    context.issue_detectors_config.detectors = []  # its memory hints are about Ray's reading, not ours
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # one line per stage otherwise
    actors, gpus_each, cpus_each = pool_size(ray.cluster_resources(), ray_options)
    stems = {str(s.path): (s.relative.as_posix(), plan.stems[s.path].as_posix()) for s in plan.todo}
    source_paths = frozenset(s.path for s in plan.sources)
    paths = [str(s.path) for s in plan.todo]
    # reading takes no CPU from the actors; as many readers as actors keep them fed (each reader
    # is a worker process of its own)
    dataset = ray.data.read_binary_files(paths, include_paths=True, override_num_blocks=len(paths),
                                         ray_remote_args={"num_cpus": 0}, concurrency=actors)
    segmented = dataset.map_batches(
        SegmentWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus_each,
        num_gpus=gpus_each or None,
        fn_constructor_args=(settings, plan.options, str(plan.output_dir), stems, source_paths),
        max_restarts=-1, max_task_retries=ray_options.max_retries)
    seen = set()
    for row in segmented.iter_rows():
        answer = json.loads(row["row"])
        seen.add(answer["source"])
        yield answer
    for path in paths:
        if path not in seen:
            error = (f"its worker died {ray_options.max_retries + 1} times while segmenting it "
                     f"(out of memory? see the Ray logs)")
            yield {"source": path, "result": asdict(FileResult(path, "failed", error=error)), "entry": None, "pid": None}


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


def build_ray_parser() -> argparse.ArgumentParser:
    """batch's parser plus the Ray options."""
    parser = build_parser()
    group = parser.add_argument_group("Ray cluster")
    group.add_argument("--ray", nargs="?", const=LOCAL, metavar="ADDRESS",
                       help="run on a Ray cluster: 'auto', HOST:PORT or ray://HOST:PORT; without a value, "
                            "a cluster started for this run on 127.0.0.1")
    group.add_argument("--ray-actors", type=int, help="segmenting actors (default: one per GPU, else one per CPU)")
    group.add_argument("--ray-gpus-per-actor", type=float, help="GPUs each actor holds (default 1 with GPUs, else 0)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_ray_parser()
    args = parser.parse_args(argv)
    ray_options = RayOptions(address=args.ray or LOCAL, actors=args.ray_actors, gpus_per_actor=args.ray_gpus_per_actor)

    stop = threading.Event()

    def runner(engine: Any, options: BatchOptions, progress: Callable[[BatchProgress], None]) -> BatchReport:
        return run_batch_ray(options, engine.settings, ray_options, interrupt=stop, progress=progress)

    def stop_after_this_image(signum: int, frame: Any) -> None:
        # a KeyboardInterrupt raised inside Ray's client code can end the process without our
        # report, so the first Ctrl-C (or a scheduler's SIGTERM) stops at the next answer
        if stop.is_set():
            raise KeyboardInterrupt  # the second one: now
        stop.set()
        print("\nstopping after the images in progress (Ctrl-C again to stop now)", file=sys.stderr)

    signal.signal(signal.SIGINT, stop_after_this_image)
    signal.signal(signal.SIGTERM, stop_after_this_image)
    return batch_main(argv, runner=runner, parser=parser)


if __name__ == "__main__":
    sys.exit(main())
