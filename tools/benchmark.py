"""Print speed figures for this machine, each next to the reference flow measured in the same run.

    ./benchmark.sh                 # every section
    ./benchmark.sh click masks     # only some sections

Random weights are used throughout: the cost of a forward pass does not depend on the values.
The reference implementations (segment_anything & co.) are the test oracles installed by
``tools/setup_env.sh --with-tests``. This prints figures; it asserts nothing.
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
    from tests.fixtures.sam_checkpoints import save_state_dict

    save_state_dict(state_dict, directory / file_name)
    return Engine(EngineSettings(user_model_dir=directory, device="cpu"))


def section_click() -> None:
    """Issue 2: encoder, warm click, and the reference flow, SAM ViT-B at 1024x768."""
    import numpy as np
    import torch
    from segment_anything import SamPredictor

    from sd_webui_sam.predictor import Prompts
    from tests.fixtures.sam_checkpoints import VIT_B, build_reference_sam

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


def section_masks() -> None:
    """Issue 2: expanding a 4096x4096 mask by 100 px."""
    from sd_webui_sam import masks

    seconds = masks.time_expand_4096(radius=100)
    print("Mask toolkit")
    report("expand a 4096x4096 mask by 100 px", seconds, "(target < 100 ms)")


SECTIONS: Dict[str, Callable[[], None]] = {
    "click": section_click,
    "masks": section_masks,
}


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", help=f"sections to run (default: all): {', '.join(SECTIONS)}")
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
            SECTIONS[name]()
        except Exception:  # a broken section must not hide the others' figures
            failed += 1
            traceback.print_exc()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
