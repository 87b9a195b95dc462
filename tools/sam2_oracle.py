"""Runs Meta's ``sam2`` package (the test oracle) in its own venv (.venv/sam2-oracle, torch >= 2.5.1).

Not a test module: the host-stack tests run it as a subprocess (tools/sam2_oracle.py)
with a JSON job, and compare what it writes with our model's outputs. It builds the official
model from the official config (hydra, as ``build_sam2`` does, with the trunk overridden for
reduced shapes), gives it random weights, saves them in the official layout
(``{"model": state_dict}``, video weights included), then runs ``SAM2ImagePredictor`` on the
job's prompt cases and ``SAM2AutomaticMaskGenerator`` at the job's settings.

    python tools/sam2_oracle.py job.json out_dir
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose
from hydra.utils import instantiate
from omegaconf import OmegaConf

import sam2  # noqa: F401  (registers the config module with hydra)
from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
from sam2.sam2_image_predictor import SAM2ImagePredictor

CONFIGS = {"2.1": "configs/sam2.1/sam2.1_hiera_t.yaml", "2": "configs/sam2/sam2_hiera_t.yaml"}


def build(trunk: dict, version: str):
    overrides = [f"++model.image_encoder.trunk.{key}={json.dumps(value)}" for key, value in trunk.items()]
    channels = [trunk["embed_dim"] * 2**index for index in range(len(trunk["stages"]))][::-1]
    overrides.append(f"++model.image_encoder.neck.backbone_channel_list={json.dumps(channels)}")
    # what build_sam2 adds for the image predictor
    overrides += [
        "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
        "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
        "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
    ]
    cfg = compose(config_name=CONFIGS[version], overrides=overrides)
    OmegaConf.resolve(cfg)
    return instantiate(cfg.model, _recursive_=True)


def randomise_(model: torch.nn.Module, seed: int) -> None:
    """Every parameter gets noise, so no zero/one init hides an indexing mistake."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if parameter.ndim >= 2 and "embed" not in name and "token" not in name:
                fan_in = parameter[0].numel()
                parameter.copy_(noise / fan_in**0.5)
            else:
                parameter.add_(noise * 0.1)


def main(job_path: str, out_dir: str) -> None:
    job = json.loads(Path(job_path).read_text())
    out = Path(out_dir)
    torch.manual_seed(job.get("seed", 0))
    model = build(job["trunk"], job.get("version", "2.1")).eval()
    randomise_(model, job.get("seed", 0))
    if job.get("checkpoint"):
        torch.save({"model": model.state_dict()}, job["checkpoint"])
    torch.set_num_threads(job.get("threads", torch.get_num_threads()))
    predictor = SAM2ImagePredictor(model)
    timings = {}
    results = {}
    for image_index, image_path in enumerate(job.get("images", [])):
        image = np.load(image_path)
        start = time.perf_counter()
        predictor.set_image(image)
        timings.setdefault("set_image", []).append(time.perf_counter() - start)
        for case in job.get("cases", []):
            kwargs = {}
            for key in ("point_coords", "point_labels", "box"):
                if case.get(key) is not None:
                    kwargs[key] = np.asarray(case[key], dtype=np.float32 if key != "point_labels" else np.int32)
            if case.get("mask_input_from") is not None:
                kwargs["mask_input"] = results[f"{image_index}_{case['mask_input_from']}_low_res"][np.newaxis, 0]
            repeats = case.get("repeats", 1)
            for _ in range(repeats):
                start = time.perf_counter()
                masks, iou, low_res = predictor.predict(multimask_output=case.get("multimask", True), return_logits=True, **kwargs)
                timings.setdefault(f"predict_{case['name']}", []).append(time.perf_counter() - start)
            results[f"{image_index}_{case['name']}_logits"] = masks
            results[f"{image_index}_{case['name']}_iou"] = iou
            results[f"{image_index}_{case['name']}_low_res"] = low_res
        if job.get("amg") is not None:
            generator = SAM2AutomaticMaskGenerator(model, **job["amg"])
            start = time.perf_counter()
            records = generator.generate(image)
            timings.setdefault("amg", []).append(time.perf_counter() - start)
            records = sorted(records, key=lambda record: record["bbox"])
            results[f"{image_index}_amg_count"] = np.array(len(records))
            if records:
                results[f"{image_index}_amg_masks"] = np.stack([record["segmentation"] for record in records])
                results[f"{image_index}_amg_scores"] = np.array([record["predicted_iou"] for record in records])
                results[f"{image_index}_amg_stability"] = np.array([record["stability_score"] for record in records])
                results[f"{image_index}_amg_boxes"] = np.array([record["bbox"] for record in records])
                results[f"{image_index}_amg_points"] = np.array([record["point_coords"][0] for record in records])
                results[f"{image_index}_amg_crop_boxes"] = np.array([record["crop_box"] for record in records])
    np.savez_compressed(out / "results.npz", **results)
    (out / "timings.json").write_text(json.dumps(timings))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
