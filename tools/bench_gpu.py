"""GPU figures (``./benchmark.sh gpu``): each of ours next to the reference package's fp32 flow,
same random weights, same GPU, same run.

Ours runs its encoders in bf16 (fp16 where the GPU has no bf16) with the fused attention that
CUDA gets by default; the rows through the Engine (click, batch) use the Engine's own precision,
printed with the row. Every figure is the median of a few runs after a warm-up, with
``torch.cuda.synchronize`` around each, and its peak VRAM is ``torch.cuda.max_memory_allocated``
after ``reset_peak_memory_stats`` (weights included: only the model being measured is on the GPU).

Without CUDA it prints one line and measures nothing. ``SAM_BENCH_GPU_SMOKE=1`` runs every row on
the CPU with reduced models instead (tests/test_benchmark_gpu.py): those numbers mean nothing,
they only show that each row runs.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import os
import statistics
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Tuple

import numpy as np
import torch

from sd_webui_sam import devices

SMOKE_ENV = "SAM_BENCH_GPU_SMOKE"
NO_CUDA_LINE = "no CUDA device: GPU figures not measured"
LABEL_WIDTH = 60


@dataclass(frozen=True)
class Scale:
    """Sizes of one run: the real ones on a GPU, reduced ones for the CPU smoke run."""

    device: torch.device
    smoke: bool
    sam_shapes: Tuple[Tuple[str, object], ...]  # (label, tools.fixtures VitShape)
    hq_label: str
    hq_shape: object  # tools.fixtures HqShape
    gdino_image: Tuple[int, int]  # (height, width) after the detector's resize
    gdino_reduced: bool
    everything_points: int
    batch_images: int
    image_size: Tuple[int, int]  # (height, width) of the click, everything and batch pictures
    repeats: int
    warmups: int  # runs before the timed ones (the first CUDA call of a shape picks kernels)


def _scale(smoke: bool) -> Scale:
    from tools.fixtures.hq_checkpoints import HQ_TINY, HqShape
    from tools.fixtures.sam_checkpoints import TINY, VIT_B, VIT_H, VIT_L

    if smoke:
        return Scale(device=torch.device("cpu"), smoke=True,
                     sam_shapes=(("SAM ViT-B", TINY), ("SAM ViT-L", TINY), ("SAM ViT-H", TINY)),
                     hq_label="HQ-SAM ViT-H", hq_shape=HQ_TINY, gdino_image=(256, 320), gdino_reduced=True,
                     everything_points=2, batch_images=2, image_size=(96, 128), repeats=1, warmups=0)
    return Scale(device=torch.device("cuda"), smoke=False,
                 sam_shapes=(("SAM ViT-B", VIT_B), ("SAM ViT-L", VIT_L), ("SAM ViT-H", VIT_H)),
                 hq_label="HQ-SAM ViT-H", hq_shape=HqShape(VIT_H), gdino_image=(800, 1066), gdino_reduced=False,
                 everything_points=32, batch_images=32, image_size=(768, 1024), repeats=5, warmups=1)


def ours_dtype(device: torch.device) -> torch.dtype:
    """What "auto" precision means for the encoders here: bf16, or fp16 on a GPU without bf16. The
    CPU smoke run uses bf16 too, unless the CPU emulates it (no bf16 instructions): fp32 then, since
    it checks that every row runs, and emulated bf16 made it take about 5 minutes instead of 1."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    if device.type == "cpu" and devices.cpu_bf16_slowdown() >= devices.SLOW_BF16_FACTOR:
        return torch.float32
    return torch.bfloat16


# -- measuring ----------------------------------------------------------------------------------


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Figure:
    seconds: float
    peak_bytes: Optional[int]  # None off CUDA


def measure(device: torch.device, run: Callable[[], object], repeats: int, warmups: int = 1) -> Figure:
    """Median seconds of ``repeats`` runs after ``warmups``, and the peak memory allocated meanwhile."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmups):
        run()
    samples = []
    for _ in range(max(1, repeats)):
        _synchronize(device)
        started = time.perf_counter()
        run()
        _synchronize(device)
        samples.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return Figure(statistics.median(samples), peak)


def _peak_text(peak: Optional[int]) -> str:
    return f"peak {peak / 2**20:>8.0f} MiB" if peak is not None else "peak      n/a"


def row(label: str, figure: Figure, note: str = "") -> None:
    print(f"  {label:<{LABEL_WIDTH}} {figure.seconds * 1000:>10.1f} ms  {_peak_text(figure.peak_bytes)}  {note}".rstrip())


def rate_row(label: str, images_per_s: float, peak: Optional[int], note: str = "") -> None:
    print(f"  {label:<{LABEL_WIDTH}} {images_per_s:>10.3f} img/s  {_peak_text(peak)}  {note}".rstrip())


def seconds_row(label: str, figure: Figure, note: str = "") -> None:
    print(f"  {label:<{LABEL_WIDTH}} {figure.seconds:>10.2f} s   {_peak_text(figure.peak_bytes)}  {note}".rstrip())


def ratio_row(label: str, reference: Figure, ours: Optional[Figure]) -> None:
    if ours is not None:  # None: ours failed, and said so
        print(f"  {label:<{LABEL_WIDTH}} {reference.seconds / ours.seconds:>10.2f} x")


@contextlib.contextmanager
def guarded(what: str) -> Iterator[None]:
    """A failing figure prints its error and lets the others run (one GPU run must say everything)."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - reported, then the next figure runs
        print(f"  {what}: FAILED ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})")
        traceback.print_exc()
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# -- models -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def reference_sam(shape) -> torch.nn.Module:
    """segment_anything's Sam with random weights (fp32, CPU). ViT-H serves its encoder, click,
    everything and batch rows: built once (building and randomising it takes a while)."""
    from tools.fixtures.sam_checkpoints import build_reference_sam

    return build_reference_sam(shape, seed=0)


def ours_from(reference: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Our model built from the reference's state dict, as our loader reads a checkpoint file."""
    from sd_webui_sam.model_registry import build_model, identify

    state = {name: tensor.detach().clone() for name, tensor in reference.state_dict().items()}
    spec = identify({name: tuple(tensor.shape) for name, tensor in state.items()})
    return build_model(spec, state).eval().to(device=device, dtype=dtype)


def _pixels(device: torch.device, dtype: torch.dtype, side: int = 1024) -> torch.Tensor:
    return torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)


def encoder_rows(label: str, reference: torch.nn.Module, scale: Scale, image_side: int = 1024) -> None:
    """Ours (encode_image, low precision, fused attention) and the reference's image_encoder in fp32."""
    from sd_webui_sam.devices import ATTENTION_FUSED
    from sd_webui_sam.modeling import forced_attention

    device, dtype = scale.device, ours_dtype(scale.device)
    ours_figure = None
    with guarded(f"{label}: encoder, ours"):
        ours = ours_from(reference, device, dtype)
        pixels = _pixels(device, dtype, image_side)
        # CUDA picks the fused kernel by itself; forcing it keeps the CPU smoke run on that path too.
        with torch.inference_mode(), forced_attention(ours, ATTENTION_FUSED):
            ours_figure = measure(device, lambda: ours.encode_image(pixels), scale.repeats, scale.warmups)
        ours = pixels = None  # only the measured model on the GPU
        row(f"{label}: encoder, ours ({_dtype_name(dtype)}, fused attention)", ours_figure)
    with guarded(f"{label}: encoder, reference"):
        reference.to(device)
        pixels = _pixels(device, torch.float32, image_side)
        with torch.no_grad():
            reference_figure = measure(device, lambda: reference.image_encoder(pixels), scale.repeats, scale.warmups)
        reference.to("cpu")
        pixels = None
        row(f"{label}: encoder, reference (fp32)", reference_figure)
        ratio_row(f"{label}: encoder, reference / ours", reference_figure, ours_figure)


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))


def sam_encoder_rows(scale: Scale) -> None:
    for label, shape in scale.sam_shapes:
        encoder_rows(label, reference_sam(shape), scale)


def mobile_and_hq_encoder_rows(scale: Scale) -> None:
    from tools.fixtures.hq_checkpoints import build_reference_hq_sam, build_reference_mobile_sam

    encoder_rows("MobileSAM", build_reference_mobile_sam(seed=0), scale)
    encoder_rows(scale.hq_label, build_reference_hq_sam(scale.hq_shape, seed=0), scale, scale.hq_shape.image_size)


def gdino_rows(scale: Scale) -> None:
    """GroundingDINO Swin-T, one image and caption through the whole detector (Swin, BERT, the
    fusion encoder and the decoder): ours in low precision, groundingdino-py in fp32."""
    from local_groundingdino.checkpoint import build_model, identify_checkpoint
    from local_groundingdino.tokenizer import WordPieceTokenizer, caption_text, tokenize_caption
    from tools.fixtures.gdino_checkpoints import build_reference_gdino, write_text_encoder_dir

    label = "GroundingDINO Swin-T (tiny BERT)"
    device, dtype = scale.device, ours_dtype(scale.device)
    reduced = dict(num_queries=50, stage3_depth=1, layers=1) if scale.gdino_reduced else {}
    with tempfile.TemporaryDirectory() as temporary:
        text_dir = write_text_encoder_dir(Path(temporary) / "bert")
        reference = build_reference_gdino("swin_t", text_dir, seed=0, **reduced)
        tokens = tokenize_caption(WordPieceTokenizer.from_directory(text_dir), "hand . face .")
        pixels = torch.randn(1, 3, *scale.gdino_image, generator=torch.Generator().manual_seed(0))
        with guarded(f"{label}: ours"):
            state = reference.state_dict()
            ours = build_model(identify_checkpoint({n: tuple(t.shape) for n, t in state.items()}), state)
            ours = ours.eval().to(device=device, dtype=dtype)
            inputs = tokens.model_inputs(device)
            ours_pixels = pixels.to(device=device, dtype=dtype)
            with torch.inference_mode():
                ours_figure = measure(device, lambda: ours(ours_pixels, inputs), scale.repeats, scale.warmups)
            ours = ours_pixels = None  # only the measured model on the GPU
            row(f"{label}: image + caption -> boxes, ours ({_dtype_name(dtype)})", ours_figure)
        with guarded(f"{label}: reference"):
            reference.to(device)
            reference_pixels = pixels.to(device)
            text = caption_text(tokens.phrases)
            with torch.no_grad():
                reference_figure = measure(device, lambda: reference(reference_pixels, captions=[text]),
                                           scale.repeats, scale.warmups)
            reference.to("cpu")
            row(f"{label}: image + caption -> boxes, groundingdino-py (fp32)", reference_figure)
            ratio_row(f"{label}: reference / ours", reference_figure, ours_figure)


def bench_picture(scale: Scale, seed: int = 0) -> np.ndarray:
    height, width = scale.image_size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    image = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), np.full_like(xx, 120)], -1)
    for _ in range(8):
        cx, cy, r = rng.integers(0, width), rng.integers(0, height), rng.integers(4, max(5, width // 5))
        image[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.integers(0, 256, 3)
    return image.astype(np.uint8)


def click_and_everything_rows(scale: Scale) -> None:
    """SAM ViT-H: a warm click (decoder plus the full-resolution masks) and segment everything at
    32x32 points, ours (low precision) against SamPredictor / SamAutomaticMaskGenerator (fp32)."""
    from segment_anything import SamAutomaticMaskGenerator, SamPredictor

    from sd_webui_sam.autosam.generator import AutoSamConfig, generate_masks
    from sd_webui_sam.devices import Placement
    from sd_webui_sam.embedding_cache import EmbeddingCache
    from sd_webui_sam.predictor import Predictor, Prompts
    from tools.bench_autosam import PERMISSIVE

    label, shape = scale.sam_shapes[-1]
    device, dtype = scale.device, ours_dtype(scale.device)
    reference = reference_sam(shape)
    image = bench_picture(scale)
    height, width = scale.image_size
    point = (width * 0.45, height * 0.5)
    points = scale.everything_points
    config = AutoSamConfig(points_per_side=points, **PERMISSIVE)
    click = ours_everything = None
    with guarded(f"{label}: ours click and everything"):
        ours = ours_from(reference, device, dtype)
        placement = Placement(device=device, dtype=dtype)
        predictor = Predictor(ours, placement, EmbeddingCache())
        encoded = predictor.encode(image)
        prompts = Prompts(points=[point], labels=[1])
        with torch.inference_mode():
            click = measure(device, lambda: predictor.predict(encoded, prompts), max(3, scale.repeats * 3), scale.warmups)
        row(f"{label}: warm click, 1 point -> 3 full-res masks, ours ({_dtype_name(dtype)})", click)

        def everything() -> None:
            # a fresh embedding cache: every run pays for its encoder, as the reference does
            generate_masks(Predictor(ours, placement, EmbeddingCache(max_entries=0)), image, config)

        with torch.inference_mode():
            ours_everything = measure(device, everything, 1, scale.warmups)
        ours = predictor = encoded = None  # only the measured model on the GPU
        seconds_row(f"{label}: segment everything {points}x{points}, ours ({_dtype_name(dtype)})", ours_everything,
                    "(every candidate kept)")
    with guarded(f"{label}: reference click and everything"):
        reference.to(device)
        reference_predictor = SamPredictor(reference)
        reference_predictor.set_image(image)
        coords, labels = np.array([point]), np.array([1])
        reference_click = measure(device, lambda: reference_predictor.predict(
            point_coords=coords, point_labels=labels, multimask_output=True), max(3, scale.repeats * 3), scale.warmups)
        row(f"{label}: warm click, SamPredictor.predict (fp32)", reference_click)
        ratio_row(f"{label}: warm click, reference / ours", reference_click, click)
        generator = SamAutomaticMaskGenerator(
            reference, points_per_side=points, points_per_batch=config.points_per_batch,
            pred_iou_thresh=config.pred_iou_thresh, stability_score_thresh=config.stability_score_thresh,
            stability_score_offset=config.stability_score_offset, box_nms_thresh=config.box_nms_thresh,
            output_mode="binary_mask")
        reference_everything = measure(device, lambda: generator.generate(image), 1, scale.warmups)
        reference.to("cpu")
        seconds_row(f"{label}: segment everything {points}x{points}, SamAutomaticMaskGenerator (fp32)",
                    reference_everything, "(every candidate kept)")
        ratio_row(f"{label}: segment everything, reference / ours", reference_everything, ours_everything)


def batch_rows(scale: Scale) -> None:
    """Images per second, one point each, three candidate masks written as PNG: run_batch (the
    public batch entry point, through the Engine at its default precision) against the reference
    extension's loop of SamPredictor.set_image + predict + saving the masks."""
    from PIL import Image
    from segment_anything import SamPredictor

    from sd_webui_sam.batch import BatchOptions, run_batch
    from sd_webui_sam.engine import Engine
    from sd_webui_sam.predictor import Prompts
    from sd_webui_sam.settings import EngineSettings
    from tools.fixtures.sam_checkpoints import save_state_dict

    label, shape = scale.sam_shapes[-1]
    device = scale.device
    count = scale.batch_images
    height, width = scale.image_size
    point = (width * 0.45, height * 0.5)
    reference = reference_sam(shape)
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        save_state_dict(reference.state_dict(), root / "models" / "sam_random.pth")
        inputs = root / "in"
        inputs.mkdir()
        images = [bench_picture(scale, seed) for seed in range(count)]
        ours_rate = None
        for index, image in enumerate(images):
            Image.fromarray(image).save(inputs / f"img{index:03d}.png")
        with guarded(f"{label}: batch, ours"):
            engine = Engine(EngineSettings(user_model_dir=root / "models", device=device.type))
            engine.segment("sam_random.pth", bench_picture(scale, seed=999), Prompts(points=[point], labels=[1]))  # load
            dtype = _dtype_name(engine.store.placement.dtype)
            options = BatchOptions(inputs=[inputs], output_dir=root / "ours", model="sam_random.pth",
                                   points=[point], outputs=("mask",))
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _synchronize(device)
            started = time.perf_counter()
            report = run_batch(engine, options)
            _synchronize(device)
            elapsed = time.perf_counter() - started
            peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
            engine.unload()
            del engine
            if report.done != count:
                raise RuntimeError(report.summary())
            ours_rate = count / elapsed
            rate_row(f"{label}: batch of {count}, run_batch ({dtype}, model loaded)", ours_rate, peak)
        with guarded(f"{label}: batch, reference"):
            reference.to(device)
            predictor = SamPredictor(reference)
            out = root / "reference"
            out.mkdir()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _synchronize(device)
            started = time.perf_counter()
            for index, path in enumerate(sorted(inputs.iterdir())):
                picture = np.asarray(Image.open(path).convert("RGB"))
                predictor.set_image(picture)
                masks, _, _ = predictor.predict(point_coords=np.array([point]), point_labels=np.array([1]),
                                                multimask_output=True)
                for candidate, mask in enumerate(masks):
                    Image.fromarray(mask).save(out / f"{index:03d}_{candidate}_mask.png")
            _synchronize(device)
            elapsed = time.perf_counter() - started
            peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
            reference.to("cpu")
            reference_rate = count / elapsed
            rate_row(f"{label}: batch of {count}, SamPredictor loop (fp32)", reference_rate, peak)
            if ours_rate is not None:
                print(f"  {f'{label}: batch, ours / reference':<{LABEL_WIDTH}} {ours_rate / reference_rate:>10.2f} x")


SUBSECTIONS: Dict[str, Callable[[Scale], None]] = {
    "SAM encoders": sam_encoder_rows,
    "MobileSAM and HQ-SAM encoders": mobile_and_hq_encoder_rows,
    "GroundingDINO": gdino_rows,
    "click and segment everything": click_and_everything_rows,
    "batch": batch_rows,
}


def smoke_requested() -> bool:
    return os.environ.get(SMOKE_ENV, "").strip() not in ("", "0")


def run(smoke: Optional[bool] = None) -> None:
    """Print the GPU figures, or one line saying why there are none."""
    smoke = smoke_requested() if smoke is None else smoke
    if not smoke and not torch.cuda.is_available():
        print(NO_CUDA_LINE)
        return
    scale = _scale(smoke)
    torch.set_grad_enabled(False)
    if smoke:
        print(f"SMOKE RUN ({SMOKE_ENV}): CPU, reduced models, ours {_dtype_name(ours_dtype(scale.device))}; "
              "these numbers are not GPU figures")
    else:
        print(f"{torch.cuda.get_device_name(scale.device)}, torch {torch.__version__}; ours "
              f"{_dtype_name(ours_dtype(scale.device))} encoders, the references fp32; random weights")
    for title, subsection in SUBSECTIONS.items():
        print(title)
        subsection(scale)

