"""Speed of segment-everything: ours against a reference generator on the same weights.

``benchmark_segment_everything`` times our generator (encoder / decoder / post-processing split)
and, when given one, a reference ``generate(image)`` callable on the same model and settings,
and reports the ratio. The reference (``segment_anything.SamAutomaticMaskGenerator``) is a test
dependency, so the product never imports it: ``reference_factory`` is passed in, e.g.
``tools.fixtures.autosam_fixtures.reference_generator_factory`` from a source checkout.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from sd_webui_sam.autosam.generator import AutoSamConfig, GenerationTimings, generate_masks

VIT_B_CONFIG = {
    "encoder_embed_dim": 768,
    "encoder_depth": 12,
    "encoder_num_heads": 12,
    "encoder_global_attn_indexes": (2, 5, 8, 11),
}

# Random weights predict low IoUs, so the reference defaults would drop nearly every mask and
# flatter our early filtering; these thresholds keep a realistic few hundred candidates.
PERMISSIVE = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0)


def benchmark_image(height: int = 768, width: int = 1024, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 // (width - 1), yy * 255 // (height - 1), np.full_like(xx, 120)], axis=-1).astype(np.uint8)
    for _ in range(12):
        cx, cy, r = rng.integers(0, width), rng.integers(0, height), rng.integers(20, 200)
        image[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.integers(0, 256, 3)
    return image


def _load_model(checkpoint: Optional[Path]):
    if checkpoint is None:
        from sd_webui_sam.modeling import build_sam

        torch.manual_seed(0)
        return build_sam(VIT_B_CONFIG).eval(), "random-weight SAM ViT-B"
    from sd_webui_sam import checkpoints, model_registry

    state = checkpoints.load_state_dict(Path(checkpoint))
    spec = model_registry.identify({key: tuple(value.shape) for key, value in state.items()})
    return model_registry.build_model(spec, state).eval(), f"{spec.label} ({Path(checkpoint).name})"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark_segment_everything(
    *,
    checkpoint: Optional[Path] = None,
    device: str = "auto",
    size: tuple[int, int] = (768, 1024),
    config: Optional[AutoSamConfig] = None,
    reference_factory: Optional[Callable] = None,
    repeats: int = 1,
) -> dict:
    """Time one segment-everything run (after a warm-up) for ours and, optionally, the reference.

    Returns a dict with the model, device, settings, mask counts, our split (encoder, decoder,
    post-processing seconds), the reference's total and encoder seconds, and ``speedup``.
    ``reference_factory(model, device, config) -> (generate(image) -> list, encode(image) -> None)``.
    """
    from sd_webui_sam.devices import resolve_placement
    from sd_webui_sam.embedding_cache import EmbeddingCache
    from sd_webui_sam.predictor import Predictor

    config = (config or AutoSamConfig()).validated()
    placement = resolve_placement(device)
    model, label = _load_model(checkpoint)
    model = model.to(placement.device)
    image = benchmark_image(*size)

    def fresh_predictor():
        # no embedding cache between runs: every run pays for its encoder, as the reference does
        return Predictor(model, placement, EmbeddingCache(max_entries=0))

    generate_masks(fresh_predictor(), image, replace(config, points_per_side=4))  # warm-up
    ours_runs = []
    for _ in range(max(1, repeats)):
        timings = GenerationTimings()
        _synchronize(placement.device)
        started = time.perf_counter()
        records = generate_masks(fresh_predictor(), image, config, timings=timings)
        _synchronize(placement.device)
        timings.total_s = time.perf_counter() - started
        ours_runs.append(timings)
    best = min(ours_runs, key=lambda t: t.total_s)
    result = {
        "model": label,
        "device": str(placement.device),
        "image": f"{size[1]}x{size[0]}",
        "settings": {k: v for k, v in config.__dict__.items() if k not in ("point_grids", "decode_options")},
        "ours": best.as_dict(),
        "masks": len(records),
    }
    if reference_factory is not None:
        generate, encode = reference_factory(model, placement.device, config)
        encode(image)  # warm-up
        reference_totals, reference_encoders = [], []
        reference_count = None
        for _ in range(max(1, repeats)):
            _synchronize(placement.device)
            started = time.perf_counter()
            encode(image)
            _synchronize(placement.device)
            reference_encoders.append(time.perf_counter() - started)
            started = time.perf_counter()
            annotations = generate(image)
            _synchronize(placement.device)
            reference_totals.append(time.perf_counter() - started)
            reference_count = len(annotations)
        reference_total = min(reference_totals)
        reference_encoder = min(reference_encoders)
        result["reference"] = {
            "total_s": reference_total,
            "encoder_s": reference_encoder,
            "decoder_and_postprocess_s": reference_total - reference_encoder,
            "masks": reference_count,
        }
        result["speedup"] = reference_total / best.total_s
        result["speedup_after_encoder"] = (reference_total - reference_encoder) / max(best.total_s - best.encoder_s, 1e-9)
    return result


def format_result(result: dict) -> str:
    ours = result["ours"]
    lines = [
        f"segment everything, {result['model']} on {result['device']}, {result['image']}, "
        f"points_per_side={result['settings']['points_per_side']}, crop_n_layers={result['settings']['crop_n_layers']}, "
        f"pred_iou_thresh={result['settings']['pred_iou_thresh']}, stability_score_thresh={result['settings']['stability_score_thresh']}",
        f"  ours:      {ours['total_s']:.2f} s  (encoder {ours['encoder_s']:.2f}, decoder {ours['decoder_s']:.2f}, "
        f"post-processing {ours['postprocess_s']:.2f}); {ours['candidates']} candidates, {ours['after_iou']} after IoU, "
        f"{ours['after_stability']} after stability, {result['masks']} masks",
    ]
    if "reference" in result:
        reference = result["reference"]
        lines.append(
            f"  reference: {reference['total_s']:.2f} s  (encoder {reference['encoder_s']:.2f}, decoder + post-processing "
            f"{reference['decoder_and_postprocess_s']:.2f}); {reference['masks']} masks"
        )
        lines.append(f"  speedup:   {result['speedup']:.2f}x overall, {result['speedup_after_encoder']:.2f}x after the encoder")
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python -m tools.bench_autosam [--checkpoint sam_vit_b.pth] [--device cuda] [--reference]``."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Segment-everything speed, ours vs the reference generator.")
    parser.add_argument("--checkpoint", type=Path, default=None, help="SAM checkpoint (default: random-weight ViT-B)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--crop-n-layers", type=int, default=0)
    parser.add_argument("--permissive", action="store_true",
                        help="pred_iou_thresh = stability_score_thresh = 0 (every candidate upsampled)")
    parser.add_argument("--reference", action="store_true",
                        help="also time segment_anything.SamAutomaticMaskGenerator (needs the test dependencies)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    config = AutoSamConfig(points_per_side=args.points_per_side, crop_n_layers=args.crop_n_layers,
                           **(PERMISSIVE if args.permissive else {}))
    factory = None
    if args.reference:
        try:
            from tools.fixtures.autosam_fixtures import reference_generator_factory as factory
        except ImportError as error:
            print(f"--reference needs segment_anything (a test dependency): {error}")
            return 1
    result = benchmark_segment_everything(checkpoint=args.checkpoint, device=args.device, config=config,
                                          reference_factory=factory, repeats=args.repeats)
    print(json.dumps(result, indent=2, default=str) if args.json else format_result(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
