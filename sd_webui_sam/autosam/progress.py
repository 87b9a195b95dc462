"""Progress, stopping and time estimates for segment everything.

A generation's work is counted in crops encoded and point batches decoded; the generator reports
both after each step through a :class:`JobControl`, which also carries the interrupt it checks
between point batches. The ETA comes from these counters and the seconds they took (this run's
own encoder and decoder speed), never from a clock-only guess.

:class:`SpeedRecord` keeps the last measured speed per model for the session (the Auto SAM tab
owns one), so the expected time of the next run can be shown before it starts; ``calibrate``
measures it once with one encode (kept in the embedding cache for the run itself) and one
point batch.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch

from sd_webui_sam.autosam.generator_helpers import crop_boxes, layer_point_grids
from sd_webui_sam.errors import JobStopped

__all__ = ["CPU_POINTS_PER_SIDE", "GenerationClock", "GenerationInterrupted", "GenerationProgress", "JobControl", "Speed",
           "SpeedRecord", "WorkPlan", "calibrate", "default_points_per_side", "format_seconds", "work_plan"]

#: Points per side the panel starts with on a CPU: 16x16 = 256 prompts instead of 1024 (about 4x faster).
CPU_POINTS_PER_SIDE = 16
ACCELERATOR_POINTS_PER_SIDE = 32
CACHED_ENCODE_S = 0.01


class GenerationInterrupted(JobStopped):
    """Stop was pressed (or the host's Interrupt) while segment everything ran."""


def default_points_per_side(device: torch.device) -> int:
    """The panel's default grid: fewer points on the CPU, where each point batch is slow."""
    return CPU_POINTS_PER_SIDE if torch.device(device).type == "cpu" else ACCELERATOR_POINTS_PER_SIDE


def format_seconds(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@dataclass(frozen=True)
class WorkPlan:
    """What one generation will do: crops to encode and point batches to decode."""

    crops: int
    points: int
    batches: int


def work_plan(config, image_shape: Tuple[int, int], device: torch.device) -> WorkPlan:
    """What the generator does with an (AutoSamConfig) ``config`` on a picture of (H, W) on
    ``device``, without running anything."""
    crops = crop_boxes(tuple(image_shape[:2]), int(config.crop_n_layers), float(config.crop_overlap_ratio))
    if config.point_grids is not None:
        grids = [np.asarray(grid) for grid in config.point_grids]
    else:
        grids = layer_point_grids(int(config.points_per_side), int(config.crop_n_layers),
                                  int(config.crop_n_points_downscale_factor))
    sizes = [len(grids[layer]) for _, layer in crops]
    batch = max(1, int(config.effective_decode_batch(torch.device(device))))
    return WorkPlan(crops=len(crops), points=sum(sizes), batches=sum(math.ceil(size / batch) for size in sizes))


@dataclass(frozen=True)
class GenerationProgress:
    """One step of a generation, with the fraction done and the estimated seconds left."""

    crops_done: int
    crops: int
    batches_done: int
    batches: int
    elapsed_s: float
    eta_s: Optional[float]           # None until both an encode and a point batch were timed
    encode_s: float = 0.0            # seconds spent so far encoding crops
    decode_s: float = 0.0            # and decoding point batches
    points_done: int = 0

    @property
    def fraction(self) -> float:
        if self.eta_s is not None and self.elapsed_s + self.eta_s > 0:
            return min(1.0, self.elapsed_s / (self.elapsed_s + self.eta_s))
        total = self.crops + self.batches
        return (self.crops_done + self.batches_done) / total if total else 1.0

    def describe(self) -> str:
        text = f"point batch {self.batches_done}/{self.batches}"
        if self.crops > 1:
            text = f"crop {min(self.crops_done, self.crops)}/{self.crops}, " + text
        if self.eta_s is not None:
            text += f", about {format_seconds(self.eta_s)} left"
        return text


@dataclass
class JobControl:
    """How a long job reports and is stopped: ``progress(step)`` after each step, ``interrupt()``
    checked between steps (a True answer raises GenerationInterrupted)."""

    progress: Optional[Callable[[GenerationProgress], None]] = None
    interrupt: Optional[Callable[[], bool]] = None

    def check(self) -> None:
        if self.interrupt is not None and self.interrupt():
            raise GenerationInterrupted("Stopped: segment everything was interrupted before it finished; nothing was written.")

    def report(self, step: GenerationProgress) -> None:
        if self.progress is not None:
            self.progress(step)


class GenerationClock:
    """The counters of one generation, turned into GenerationProgress steps."""

    def __init__(self, plan: WorkPlan, control: Optional[JobControl]) -> None:
        self.plan = plan
        self.control = control or JobControl()
        self.started = time.perf_counter()
        self.crops_done = 0
        self.batches_done = 0
        self.points_done = 0
        self.encode_s = 0.0
        self.decode_s = 0.0

    def encoded(self, seconds: float) -> None:
        self.crops_done += 1
        self.encode_s += seconds
        self._step()

    def decoded(self, seconds: float, points: int) -> None:
        self.batches_done += 1
        self.points_done += points
        self.decode_s += seconds
        self._step()

    def _step(self) -> None:
        eta = None
        if self.crops_done and self.batches_done:
            eta = ((self.plan.crops - self.crops_done) * self.encode_s / self.crops_done
                   + (self.plan.batches - self.batches_done) * self.decode_s / self.batches_done)
        self.control.report(GenerationProgress(self.crops_done, self.plan.crops, self.batches_done, self.plan.batches,
                                               time.perf_counter() - self.started, eta, self.encode_s, self.decode_s,
                                               self.points_done))
        self.control.check()


@dataclass(frozen=True)
class Speed:
    """Measured seconds per crop encode and per decoded point, on one model and device."""

    encode_s: float
    decode_s_per_point: float

    def seconds(self, plan: WorkPlan, whole_image_cached: bool = False) -> float:
        encodes = plan.crops - (1 if whole_image_cached else 0)
        return encodes * self.encode_s + plan.points * self.decode_s_per_point


@dataclass
class SpeedRecord:
    """The last measured speed of each model in this session (one per Auto SAM tab)."""

    speeds: Dict[str, Speed] = field(default_factory=dict)

    def learn(self, model_name: str, step: GenerationProgress) -> None:
        """Keep the speed of a run (finished or stopped) from its last progress step."""
        if step.points_done:
            encode = step.encode_s / step.crops_done if step.crops_done else 0.0
            self.keep(model_name, Speed(encode, step.decode_s / step.points_done))

    def keep(self, model_name: str, speed: Speed) -> None:
        """An encode under 10 ms came from the embedding cache and says nothing about the next
        picture: the encoder speed measured before stays."""
        known = self.speeds.get(model_name)
        if speed.encode_s < CACHED_ENCODE_S and known is not None:
            speed = Speed(known.encode_s, speed.decode_s_per_point)
        self.speeds[model_name] = speed

    def estimate(self, model_name: Optional[str], plan: WorkPlan) -> Optional[float]:
        speed = self.speeds.get(model_name or "")
        return None if speed is None else speed.seconds(plan)


def calibrate(predictor, image: np.ndarray, decode_batch: int) -> Speed:
    """Encode ``image`` (the embedding stays cached for the run) and decode one batch of grid points."""
    clock = time.perf_counter()
    encoded = predictor.encode(image)
    encode_s = time.perf_counter() - clock
    features = encoded.features
    device = next(iter(features.values())).device
    in_h, in_w = encoded.input_size
    count = max(1, int(decode_batch))
    coords = torch.rand(count, 1, 2, device=device) * torch.tensor([in_w, in_h], device=device, dtype=torch.float32)
    labels = torch.ones(count, 1, dtype=torch.int64, device=device)
    clock = time.perf_counter()
    with torch.no_grad():
        predictor.model.decode(features, point_coords=coords, point_labels=labels, boxes=None, mask_input=None,
                               multimask_output=True, options={})
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return Speed(encode_s, (time.perf_counter() - clock) / count)
