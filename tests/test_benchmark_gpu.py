"""``./benchmark.sh gpu``: one clear line without CUDA; with SAM_BENCH_GPU_SMOKE=1 every row runs
on the CPU with small models (the real figures need a GPU and are not measured here)."""
from __future__ import annotations

import re

import pytest
import torch

from tools import bench_gpu, benchmark

NUMBER = r"\s+\d+\.\d+ (ms|s|x|img/s)\b"

# The smoke run's precision for ours: bf16, or fp32 on a CPU that emulates bf16.
OURS = bench_gpu._dtype_name(bench_gpu.ours_dtype(torch.device("cpu")))
# Every figure the GPU run prints, ours next to the reference (smoke sizes: 2x2 points, 2 images).
EXPECTED_ROWS = [
    *[f"{model}: encoder, {side}" for model in ("SAM ViT-B", "SAM ViT-L", "SAM ViT-H", "MobileSAM", "HQ-SAM ViT-H")
      for side in (f"ours ({OURS}, fused attention)", "reference (fp32)", "reference / ours")],
    f"GroundingDINO Swin-T (tiny BERT): image + caption -> boxes, ours ({OURS})",
    "GroundingDINO Swin-T (tiny BERT): image + caption -> boxes, groundingdino-py (fp32)",
    "GroundingDINO Swin-T (tiny BERT): reference / ours",
    f"SAM ViT-H: warm click, 1 point -> 3 full-res masks, ours ({OURS})",
    "SAM ViT-H: warm click, SamPredictor.predict (fp32)",
    "SAM ViT-H: warm click, reference / ours",
    f"SAM ViT-H: segment everything 2x2, ours ({OURS})",
    "SAM ViT-H: segment everything 2x2, SamAutomaticMaskGenerator (fp32)",
    "SAM ViT-H: segment everything, reference / ours",
    "SAM ViT-H: batch of 2, run_batch",  # then "(<the Engine's precision>, model loaded)"
    "SAM ViT-H: batch of 2, SamPredictor loop (fp32)",
    "SAM ViT-H: batch, ours / reference",
]


def gpu_section_lines(output: str) -> list:
    return [line for line in output.split("== gpu", 1)[1].splitlines() if line.strip()]


def test_without_cuda_it_says_so_in_one_line(monkeypatch, capsys):
    monkeypatch.delenv(bench_gpu.SMOKE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert benchmark.main(["gpu"]) == 0
    assert gpu_section_lines(capsys.readouterr().out) == ["no CUDA device: GPU figures not measured"]


@pytest.mark.slow
def test_smoke_run_prints_every_row(monkeypatch, capsys):
    monkeypatch.setenv(bench_gpu.SMOKE_ENV, "1")
    assert benchmark.main(["gpu"]) == 0
    captured = capsys.readouterr()
    lines = gpu_section_lines(captured.out)
    assert "not GPU figures" in lines[0]
    assert "FAILED" not in captured.out
    missing = [label for label in EXPECTED_ROWS
               if not any(re.match(r"\s+" + re.escape(label) + r"( \([^)]*\))?" + NUMBER, line) for line in lines)]
    assert not missing, "rows missing or without a figure:\n" + "\n".join(missing) + "\n" + captured.out
    assert "peak      n/a" in captured.out  # no CUDA, no VRAM figure
