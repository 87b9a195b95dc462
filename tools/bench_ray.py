"""Batch on Ray against the single-process batch, same images and model (``./benchmark.sh ray``).

SAM ViT-B (random weights), one fixed point per image, masks only, on the CPU. The single-process
side is ``run_batch`` with a fresh engine (its model load included, as each actor loads its own).
The Ray side is a local cluster on 127.0.0.1 with every CPU of this machine, then
``run_batch_ray`` with 1 and 2 actors. Ray's overhead is reported apart: starting the cluster,
and the time to the first image beyond one image's steady-state time (actor start-up, model
load, the pipeline filling).
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from PIL import Image


def ray_throughput(images: List, state_dict, actor_counts=(1, 2)) -> Dict[str, float]:
    import ray

    from sd_webui_sam.batch import BatchOptions, run_batch
    from sd_webui_sam.batch_ray import RayOptions, run_batch_ray
    from sd_webui_sam.engine import Engine
    from sd_webui_sam.settings import EngineSettings
    from tools.fixtures.sam_checkpoints import save_state_dict

    figures: Dict[str, float] = {"images": len(images)}
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        save_state_dict(state_dict, root / "models" / "sam_vit_b.pth")
        inputs = root / "in"
        inputs.mkdir()
        for index, image in enumerate(images):
            Image.fromarray(image).save(inputs / f"img{index:03d}.png")
        settings = EngineSettings(user_model_dir=root / "models", device="cpu")

        def options(output: str) -> BatchOptions:
            height, width = images[0].shape[:2]
            return BatchOptions(inputs=[inputs], output_dir=root / output, model="sam_vit_b.pth",
                                points=[(width * 0.45, height * 0.5)], outputs=("mask",))

        started = time.perf_counter()
        single = run_batch(Engine(settings), options("single"))
        figures["single_img_per_s"] = single.done / (time.perf_counter() - started)

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        started = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), object_store_memory=200 * 1024**2, _node_ip_address="127.0.0.1",
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
        figures["ray_init_s"] = time.perf_counter() - started
        try:
            address = ray.get_runtime_context().gcs_address
            for actors in actor_counts:
                arrivals: List[float] = []
                started = time.perf_counter()
                report = run_batch_ray(options(f"ray{actors}"), settings, RayOptions(address=address, actors=actors),
                                       on_result=lambda answer: arrivals.append(time.perf_counter()))
                total = time.perf_counter() - started
                assert report.done == len(images) and not report.failed, report.summary()
                steady = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else float("nan")
                figures[f"ray{actors}_img_per_s"] = report.done / total
                figures[f"ray{actors}_steady_img_per_s"] = steady
                figures[f"ray{actors}_first_image_s"] = arrivals[0] - started
                figures[f"ray{actors}_startup_s"] = arrivals[0] - started - actors / steady  # one image per actor
        finally:
            started = time.perf_counter()
            ray.shutdown()
            figures["ray_shutdown_s"] = time.perf_counter() - started
    return figures
