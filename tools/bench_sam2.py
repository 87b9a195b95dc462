"""Speed of SAM 2.1 (Hiera-T shape, random weights): ours against Meta's ``sam2`` on the same weights.

The oracle (``SAM2ImagePredictor`` / ``SAM2AutomaticMaskGenerator``) needs torch >= 2.5.1, so it
runs in .venv/sam2-oracle (tools/setup_oracle_env.sh) through tools/sam2_oracle.py, which also
writes the shared checkpoint in the official layout; ours loads that file like a user's and runs
on the host stack's torch, in this process. Both use the machine's threads, one after the other.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Dict

import numpy as np
import torch

from sd_webui_sam import checkpoints
from sd_webui_sam.autosam.generator import AutoSamConfig, generate_masks
from sd_webui_sam.devices import Placement
from sd_webui_sam.embedding_cache import EmbeddingCache
from sd_webui_sam.model_registry import build_model, identify
from sd_webui_sam.predictor import Predictor, Prompts
from tools.bench_autosam import PERMISSIVE, benchmark_image
from tools.fixtures.sam2_checkpoints import HIERA_T_TRUNK, run_oracle

CLICK = dict(name="click", point_coords=[[450.0, 380.0]], point_labels=[1], multimask=True, repeats=5)
EVERYTHING = dict(points_per_side=16, **PERMISSIVE)


def _median(values) -> float:
    return float(np.median(values))


def benchmark_sam2(repeats: int = 5) -> Dict[str, float]:
    """Seconds: oracle and ours for the encoder, a warm click and segment everything."""
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        image = benchmark_image(768, 1024)
        np.save(work / "image.npy", image)
        checkpoint = work / "sam2.1_hiera_tiny.pt"
        job = dict(trunk=HIERA_T_TRUNK, seed=0, checkpoint=str(checkpoint), images=[str(work / "image.npy")],
                   cases=[CLICK], amg=EVERYTHING, threads=torch.get_num_threads())
        oracle = run_oracle(job, work / "oracle")["timings"]
        state = checkpoints.load_state_dict(checkpoint)
        model = build_model(identify({name: tuple(t.shape) for name, t in state.items()}), state)

        uncached = Predictor(model, Placement(torch.device("cpu")), EmbeddingCache(max_entries=0))
        encode_times = []
        for _ in range(2):
            start = time.perf_counter()
            encoded = uncached.encode(image)
            encode_times.append(time.perf_counter() - start)
        prompts = Prompts(points=CLICK["point_coords"], labels=CLICK["point_labels"])
        click_times = []
        for _ in range(repeats):
            start = time.perf_counter()
            uncached.predict(encoded, prompts, multimask_output=True)
            click_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        records = generate_masks(uncached, image, AutoSamConfig(**EVERYTHING))
        everything = time.perf_counter() - start
    return {
        "oracle_encoder": _median(oracle["set_image"]),
        "ours_encoder": min(encode_times),
        "oracle_click": _median(oracle["predict_click"]),
        "ours_click": _median(click_times),
        "oracle_everything": _median(oracle["amg"]),
        "ours_everything": everything,
        "masks": len(records),
    }
