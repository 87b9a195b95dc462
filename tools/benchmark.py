"""Print speed figures for this machine, each next to the reference flow measured in the same run.

    ./benchmark.sh                 # every section
    ./benchmark.sh click masks     # only some sections
    ./benchmark.sh gpu             # the CUDA figures (one line saying so without CUDA)

Random weights are used throughout: the cost of a forward pass does not depend on the values.
The reference implementations (segment_anything & co.) are the test oracles installed by
``tools/setup_env.sh --with-tests``. This prints figures; it asserts nothing.

Each section imports what it measures inside its function, on purpose: a section's heavy
dependencies (an oracle, Ray, the browser driver) load only when it is chosen, and a missing one
fails that section alone.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

IMAGE_SIZE = (768, 1024)  # (height, width): the 1024x768 image of the targets


def timed(function: Callable[[], object], repeats: int = 1) -> float:
    """Median wall time of ``repeats`` calls, in seconds."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def test_image(height: int = IMAGE_SIZE[0], width: int = IMAGE_SIZE[1], seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:] = (40, 90, 160)
    yy, xx = np.mgrid[:height, :width]
    blob = (yy - height * 0.5) ** 2 + (xx - width * 0.45) ** 2 < (min(height, width) * 0.25) ** 2
    image[blob] = (220, 180, 60)
    noise = rng.integers(0, 20, size=image.shape, dtype=np.uint8)
    return image + noise


def report(name: str, seconds: float, note: str = "") -> None:
    print(f"  {name:<52} {seconds * 1000:>10.1f} ms  {note}")


def report_ratio(name: str, ratio: float, target: str) -> None:
    print(f"  {name:<52} {ratio:>10.1f} x   (target {target})")


def engine_with_checkpoint(state_dict, directory: Path, file_name: str):
    """Save a state dict as a user would drop it in, and open it through the real Engine."""
    from sd_webui_sam.engine import Engine
    from sd_webui_sam.settings import EngineSettings
    from tools.fixtures.sam_checkpoints import save_state_dict

    save_state_dict(state_dict, directory / file_name)
    return Engine(EngineSettings(user_model_dir=directory, device="cpu"))


def section_click() -> None:
    """Issue 2: encoder, warm click, and the reference flow, SAM ViT-B at 1024x768."""
    import numpy as np
    import torch
    from segment_anything import SamPredictor

    from sd_webui_sam.predictor import Prompts
    from tools.fixtures.sam_checkpoints import VIT_B, build_reference_sam

    torch.set_grad_enabled(False)
    image = test_image()
    point = (IMAGE_SIZE[1] * 0.45, IMAGE_SIZE[0] * 0.5)
    reference = build_reference_sam(VIT_B, seed=0)
    with tempfile.TemporaryDirectory() as directory:
        engine = engine_with_checkpoint(reference.state_dict(), Path(directory), "sam_vit_b_random.pth")
        name = engine.list_models()[0]
        prompts = Prompts(points=[point], labels=[1])
        predictor = engine.predictor(name)
        encode = timed(lambda: predictor.encode(image))  # first call: encoder runs
        first_click = timed(lambda: engine.segment(name, image, prompts))
        warm_click = timed(lambda: engine.segment(name, image, prompts), repeats=15)

    reference_predictor = SamPredictor(reference)
    coords, labels = np.array([point]), np.array([1])

    def reference_predict():
        reference_predictor.predict(point_coords=coords, point_labels=labels, multimask_output=True)

    def reference_click():  # what the reference extension does on every click
        reference_predictor.set_image(image)
        reference_predict()

    reference_flow = timed(reference_click)
    reference_predict_only = timed(reference_predict, repeats=15)
    print("SAM ViT-B, 1024x768, CPU, fp32")
    report("ours: encoder (first click pays it)", encode)
    report("ours: click right after encoding (cache hit)", first_click)
    report("ours: warm click, 1 point -> 3 full-res masks", warm_click, "(median of 15)")
    report("reference flow: set_image + predict per click", reference_flow)
    report("SamPredictor.predict alone", reference_predict_only, "(median of 15)")
    report_ratio("warm click vs reference flow", reference_flow / warm_click, ">= 100x")
    report_ratio("warm click vs SamPredictor.predict alone", reference_predict_only / warm_click, ">= 1x")


def section_browser(repeats: int = 7) -> None:
    """Issue 13: click in Chromium -> mask drawn on the canvas, MobileSAM and ViT-B, 1024x768 and
    4000x3000 (one encode each, then warm clicks), and the server-side split of a click."""
    from tools import bench_click

    for variant in ("mobile_sam", "vit_b"):
        bench_click.report(bench_click.run(repeats=repeats, variant=variant), variant)
    bench_click.report_split(bench_click.server_breakdown(repeats))


def section_masks() -> None:
    """Issue 2: expanding a 4096x4096 mask by 100 px."""
    from tools.bench_masks import time_expand_4096

    seconds = time_expand_4096(radius=100)
    print("Mask toolkit")
    report("expand a 4096x4096 mask by 100 px", seconds, "(target < 100 ms)")


def _engine_click_figures(engine, name: str, image, prompts, options=None):
    """(encoder seconds, warm click seconds) through the real Engine."""
    predictor = engine.predictor(name)
    encode = timed(lambda: predictor.encode(image))
    engine.segment(name, image, prompts, options=options)
    warm = timed(lambda: engine.segment(name, image, prompts, options=options), repeats=10)
    return encode, warm


def section_models() -> None:
    """Issue 4: MobileSAM and HQ-SAM ViT-B next to SAM ViT-B, ours, through the Engine."""
    import torch

    from sd_webui_sam.predictor import Prompts
    from tools.fixtures.hq_checkpoints import BENCHMARK_MODELS
    from tools.fixtures.sam_checkpoints import VIT_B, build_reference_sam

    torch.set_grad_enabled(False)
    image = test_image()
    prompts = Prompts(points=[(IMAGE_SIZE[1] * 0.45, IMAGE_SIZE[0] * 0.5)], labels=[1])
    models = {"SAM ViT-B": (lambda seed: build_reference_sam(VIT_B, seed), "sam_vit_b_random.pth", None)}
    for label in ("HQ-SAM ViT-B", "MobileSAM"):
        builder, _package, file_name, _options = BENCHMARK_MODELS[label]
        models[label] = (builder, file_name, None)
    figures = {}
    for label, (builder, file_name, options) in models.items():
        with tempfile.TemporaryDirectory() as directory:
            engine = engine_with_checkpoint(builder(0).state_dict(), Path(directory), file_name)
            figures[label] = _engine_click_figures(engine, engine.list_models()[0], image, prompts, options)
            engine.unload()
    print("1024x768, CPU, fp32, ours (3 candidate masks per click)")
    for label, (encode, warm) in figures.items():
        report(f"{label}: encoder", encode)
        report(f"{label}: warm click", warm, "(median of 10)")
    sam_encode, sam_warm = figures["SAM ViT-B"]
    hq_encode, hq_warm = figures["HQ-SAM ViT-B"]
    print(f"  {'HQ-SAM / SAM ViT-B, encoder':<52} {hq_encode / sam_encode:>10.3f}    (paper: about 1.03)")
    print(f"  {'HQ-SAM / SAM ViT-B, warm click':<52} {hq_warm / sam_warm:>10.3f}")


def section_memory() -> None:
    """Issue 20: peak RSS while loading each family at real size vs the file, ours vs the reference loaders."""
    from tools.bench_memory import memory_table

    memory_table()


def section_text() -> None:
    """Issue 7: text -> boxes with Swin-T, ours vs groundingdino-py's PyTorch path, same weights."""
    from tools.fixtures.gdino_checkpoints import benchmark_text_to_boxes

    figures = benchmark_text_to_boxes(image_size=(800, 1066), caption="hand . face .", repeats=2)
    print("GroundingDINO Swin-T (random weights, tiny BERT), 1024x768 resized to 800x1066, CPU, fp32")
    report("ours: text -> boxes", figures["ours_s"])
    report("groundingdino-py (PyTorch path): text -> boxes", figures["reference_s"])
    report_ratio("ours vs groundingdino-py", figures["speedup"], ">= 1x")


def section_api() -> None:
    """Issue 5: warm /sam/v2 with an image id vs /sam/sam-predict (re-sends and re-encodes)."""
    from tools.bench_api import api_latency
    from tools.fixtures.sam_checkpoints import VIT_B, build_reference_sam

    image = test_image()
    with tempfile.TemporaryDirectory() as directory:
        engine = engine_with_checkpoint(build_reference_sam(VIT_B, 0).state_dict(), Path(directory), "sam_vit_b_random.pth")
        figures = api_latency(engine, engine.list_models()[0], image, (IMAGE_SIZE[1] * 0.45, IMAGE_SIZE[0] * 0.5), repeats=3)
    print("SAM ViT-B, 1024x768, loopback HTTP, CPU")
    report("/sam/v2/predict with an image id (warm)", figures["v2_image_id_s"])
    report("/sam/sam-predict (image sent every time)", figures["sam_predict_s"])
    report_ratio("v2 with image id vs sam-predict", figures["speedup"], "> 1x")


def section_batch(count: int = 20) -> None:
    """Issue 5: run_batch with a text prompt vs the reference extension's sequential loop, same models."""
    from tools.bench_batch import CAPTION, batch_text_throughput
    from tools.fixtures.sam_checkpoints import VIT_B, build_reference_sam

    images = [test_image(seed=seed) for seed in range(count)]
    figures = batch_text_throughput(images, build_reference_sam(VIT_B, 0).state_dict())
    print(f"SAM ViT-B + GroundingDINO Swin-T (bert-base), {count} images of 1024x768, text {CAPTION!r}, "
          f"3 candidates x (mask, cut-out, blend), CPU")
    print(f"  box threshold {figures['box_threshold']:.4f}; boxes per image: reference {figures['reference_boxes']:.2f}, "
          f"ours {figures['ours_boxes']:.2f}; ours: {figures['ours_done']} done, {figures['ours_no_objects']} without "
          f"objects, {figures['ours_failed']} failed")
    print(f"  {'reference loop (dino_batch_process)':<52} {figures['reference_img_per_s']:>10.4f} img/s")
    print(f"  {'run_batch':<52} {figures['ours_img_per_s']:>10.4f} img/s")
    report_ratio("run_batch vs the reference loop", figures["speedup"], ">= 1.5x")


def section_detail(count: int = 3) -> None:
    """Issue 16: "Detail each object", finding and masking the objects per generated image."""
    from tools.bench_detail import CAPTION, detail_find_times
    from tools.fixtures.sam_checkpoints import VIT_B, build_reference_sam

    images = [test_image(seed=seed) for seed in range(count)]
    figures = detail_find_times(images, build_reference_sam(VIT_B, 0).state_dict())
    print(f"SAM ViT-B + GroundingDINO Swin-T (bert-base), {count} images of 1024x768, caption {CAPTION!r}, "
          f"{figures['objects']:.1f} objects per image, CPU")
    report("find and mask the objects, per image", figures["find_s"])
    report("inpaint masks and crops of its objects, per image", figures["plan_s"])
    print("  (the inpainting passes are the host's img2img, one per object, not measured here)")


def section_ray(count: int = 8) -> None:
    """Issue 18: batch on a local Ray cluster with 1 and 2 actors vs the single-process batch."""
    from tools.bench_ray import ray_throughput
    from tools.fixtures.sam_checkpoints import VIT_B, build_reference_sam

    height, width = 512, 512
    f = ray_throughput([test_image(height, width, seed=seed) for seed in range(count)],
                       build_reference_sam(VIT_B, 0).state_dict())
    print(f"SAM ViT-B, {count} images of {width}x{height}, one point, masks only, CPU; Ray on 127.0.0.1 with every CPU")
    print(f"  {'single-process run_batch':<52} {f['single_img_per_s']:>10.4f} img/s")
    for actors in (1, 2):
        print(f"  {f'Ray, {actors} actor(s): whole run':<52} {f[f'ray{actors}_img_per_s']:>10.4f} img/s")
        print(f"  {f'Ray, {actors} actor(s): after the first image':<52} {f[f'ray{actors}_steady_img_per_s']:>10.4f} img/s")
        report(f"Ray, {actors} actor(s): start-up (first image less one)", f[f"ray{actors}_startup_s"])
    report("Ray: starting the local cluster", f["ray_init_s"])
    report("Ray: shutting it down", f["ray_shutdown_s"])


def section_everything() -> None:
    """Issue 6: segment everything, ours vs SamAutomaticMaskGenerator, same ViT-B weights and settings."""
    from sd_webui_sam.autosam.generator import AutoSamConfig
    from tools.bench_autosam import PERMISSIVE, benchmark_segment_everything, format_result
    from tools.fixtures.autosam_fixtures import reference_generator_factory

    for label, config in (
        ("reference defaults (random weights: few masks survive)", AutoSamConfig(points_per_side=16)),
        ("every candidate kept (all masks upsampled)", AutoSamConfig(points_per_side=16, **PERMISSIVE)),
    ):
        print(label)
        result = benchmark_segment_everything(device="cpu", config=config, reference_factory=reference_generator_factory)
        print(format_result(result))
        report_ratio("segment everything, ours vs reference", result["speedup"], ">= 2x")


def section_matting() -> None:
    """Issue 17: soft edges vs the hard mask and a guided filter, against known true alpha."""
    from tools.bench_matting import format_result, run

    print("Soft edges: 4 composites with known alpha, 1024x768, CPU")
    print(format_result(run()))


def section_sam2() -> None:
    """Issue 14: SAM 2.1 Hiera-T (random weights) against Meta's sam2 in its own venv, same weights, 1024x768."""
    from tools.bench_sam2 import benchmark_sam2

    figures = benchmark_sam2()
    report("SAM 2.1 encoder, ours", figures["ours_encoder"])
    report("SAM 2.1 encoder, SAM2ImagePredictor.set_image", figures["oracle_encoder"])
    report_ratio("SAM 2.1 encoder, oracle / ours", figures["oracle_encoder"] / figures["ours_encoder"], ">= 1x")
    report("SAM 2.1 warm click, ours", figures["ours_click"])
    report("SAM 2.1 warm click, SAM2ImagePredictor.predict", figures["oracle_click"])
    report_ratio("SAM 2.1 warm click, oracle / ours", figures["oracle_click"] / figures["ours_click"], ">= 1x")
    report("SAM 2.1 segment everything, ours", figures["ours_everything"], f"{figures['masks']} masks")
    report("SAM 2.1 segment everything, SAM2AutomaticMaskGenerator", figures["oracle_everything"])
    report_ratio("SAM 2.1 segment everything, oracle / ours", figures["oracle_everything"] / figures["ours_everything"], ">= 2x")


def section_gpu() -> None:
    """Issue 15: encoders, warm click, segment everything, batch and peak VRAM on CUDA, ours (bf16,
    fused attention) next to the reference packages' fp32 flows; one line and nothing else without
    CUDA (SAM_BENCH_GPU_SMOKE=1 runs every row on the CPU with small models, as a smoke test)."""
    from tools.bench_gpu import run

    run()


SECTIONS: Dict[str, Callable[[], None]] = {
    "click": section_click,
    "masks": section_masks,
    "models": section_models,
    "memory": section_memory,
    "text": section_text,
    "api": section_api,
    "batch": section_batch,
    "everything": section_everything,
    "sam2": section_sam2,
    "browser": section_browser,
    "detail": section_detail,
    "ray": section_ray,
    "matting": section_matting,
    "gpu": section_gpu,
}


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", help=f"sections to run (default: all): {', '.join(SECTIONS)}")
    parser.add_argument("--batch-images", type=int, default=20, help="images in the batch section (default 20)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.sections if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    failed = 0
    for name in args.sections or list(SECTIONS):
        print(f"\n== {name}")
        try:
            if name == "batch":
                section_batch(args.batch_images)
            else:
                SECTIONS[name]()
        except Exception:  # a broken section must not hide the others' figures
            failed += 1
            traceback.print_exc()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
