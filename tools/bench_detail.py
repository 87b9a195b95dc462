"""Speed figures for "Detail each object" (prints nothing, asserts nothing).

``detail_find_times``: per generated image, the time to find the objects and mask them
(GroundingDINO Swin-T boxes, one batched SAM decode, area filter and order) and, apart from it,
the time to build each object's inpaint mask and crop (expand, feather, crop, size). The
inpainting passes themselves are the host's img2img (the sampler's time, shown by the WebUI's
own progress), so they are not part of these figures.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import torch

CAPTION = "face, hand"


def detail_find_times(images: Sequence[np.ndarray], sam_state: Dict[str, torch.Tensor], caption: str = CAPTION,
                      max_objects: int = 4) -> Dict[str, float]:
    """Median seconds per image: {"find_s", "plan_s", "objects"} (objects: mean kept per image)."""
    from sd_webui_sam.detail_settings import DetailSettings
    from sd_webui_sam.detailing import find_objects, plan_passes
    from sd_webui_sam.engine import Engine
    from sd_webui_sam.settings import EngineSettings
    from tools.bench_batch import write_bert_base_dir
    from tools.fixtures.gdino_checkpoints import build_reference_gdino, save_checkpoint
    from tools.fixtures.sam_checkpoints import save_state_dict

    settings = DetailSettings(enabled=True, caption=caption, box_threshold=0.0, text_threshold=0.0,
                              max_objects=max_objects, mask_expand=4, mask_feather=4.0, padding=32)
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        save_state_dict(sam_state, root / "sam" / "sam_vit_b_random.pth")
        dino = build_reference_gdino("swin_t", write_bert_base_dir(root / "bert-base-uncased"))
        save_checkpoint(dino, root / "grounding-dino" / "groundingdino_swint_ogc.pth")
        del dino
        engine = Engine(EngineSettings(user_model_dir=root / "sam", gdino_user_model_dir=root / "grounding-dino",
                                       device="cpu"))
        find_objects(engine, images[0], settings)  # loads both models: not part of the per-image figure
        find_seconds, plan_seconds, counts = [], [], []
        for image in images:
            started = time.perf_counter()
            found = find_objects(engine, image, settings)
            found_at = time.perf_counter()
            plan_passes(found.objects, settings, prompt="a photo", negative_prompt="", seed=1)
            find_seconds.append(found_at - started)
            plan_seconds.append(time.perf_counter() - found_at)
            counts.append(len(found.objects))
    return {"find_s": statistics.median(find_seconds), "plan_s": statistics.median(plan_seconds),
            "objects": float(np.mean(counts))}
