"""Soft-edge quality against known truth (issue 17): ``./benchmark.sh matting``.

The composites of tools/matting_scenes.py (hair, fur, glass, a solid object over textured
backgrounds, 1024x768) are cut out three ways from the same simulated SAM mask: the hard mask
as it is, a guided filter of the mask (He et al. 2013, the image as guide, radius = the same
automatic band width), and ours (sd_webui_sam.matting). The standard matting errors of
tools/matting_metrics.py are summed over the whole image, so every pixel a method gets wrong counts.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Dict, List

import cv2
import numpy as np
from PIL import Image

from sd_webui_sam import matting, render
from tools import matting_metrics
from tools.matting_scenes import Scene, all_scenes

GUIDED_EPSILON = 1e-3
EXAMPLE_PATH = Path(__file__).resolve().parents[1] / "docs" / "soft_edges.png"
METRICS = ("SAD", "MSE", "Grad", "Conn")


def guided_filter(image: np.ndarray, mask: np.ndarray, radius: int, epsilon: float = GUIDED_EPSILON) -> np.ndarray:
    """He, Sun and Tang's colour guided filter of ``mask`` with ``image`` as the guide, in [0, 1]."""
    guide = image.astype(np.float32) / 255.0
    source = mask.astype(np.float32)

    def mean(values: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(values, -1, (2 * radius + 1, 2 * radius + 1), borderType=cv2.BORDER_REFLECT)

    mean_guide, mean_source = mean(guide), mean(source)
    covariance = mean(guide * source[..., None]) - mean_guide * mean_source[..., None]
    variance = np.empty(guide.shape[:2] + (3, 3), np.float32)
    for i in range(3):
        for j in range(3):
            variance[..., i, j] = mean(guide[..., i] * guide[..., j]) - mean_guide[..., i] * mean_guide[..., j]
    variance += epsilon * np.eye(3, dtype=np.float32)
    slope = np.linalg.solve(variance, covariance[..., None])[..., 0]
    offset = mean_source - (slope * mean_guide).sum(axis=-1)
    return np.clip((mean(slope) * guide).sum(axis=-1) + mean(offset), 0.0, 1.0)


def errors(alpha: np.ndarray, truth: np.ndarray) -> Dict[str, float]:
    return {"SAD": matting_metrics.sad(alpha, truth), "MSE": matting_metrics.mse(alpha, truth) * 1000.0,
            "Grad": matting_metrics.gradient_error(alpha, truth), "Conn": matting_metrics.connectivity_error(alpha, truth)}


def timed(function):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def checkerboard(height: int, width: int, square: int = 12) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    light = ((yy // square + xx // square) % 2 == 0)[..., None]
    return np.where(light, 235, 190).astype(np.uint8) * np.ones(3, np.uint8)


def on_checkerboard(cutout: Image.Image) -> np.ndarray:
    rgba = np.asarray(cutout).astype(np.float32)
    alpha = rgba[:, :, 3:] / 255.0
    board = checkerboard(*rgba.shape[:2]).astype(np.float32)
    return np.round(rgba[:, :, :3] * alpha + board * (1 - alpha)).astype(np.uint8)


def write_example(scene: Scene, path: Path = EXAMPLE_PATH) -> Path:
    """Input | hard cut-out | soft cut-out, both on a checkerboard, cropped to the hair."""
    top, bottom, left, right = 40, 330, 300, 724
    panels = [scene.image, on_checkerboard(render.cutout(scene.image, scene.mask)),
              on_checkerboard(matting.cutout(scene.image, scene.mask, alpha="soft"))]
    row = np.concatenate([panel[top:bottom, left:right] for panel in panels], axis=1)
    picture = Image.fromarray(row).resize((row.shape[1] * 2 // 3, row.shape[0] * 2 // 3), Image.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.convert("P", palette=Image.ADAPTIVE, colors=192).save(path, optimize=True)
    return path


def run(write_picture: bool = True) -> Dict[str, object]:
    _, import_wall, import_cpu = timed(lambda: matting._pymatting())
    scenes = all_scenes()
    rows: List[Dict[str, object]] = []
    for scene in scenes:
        band = matting.auto_band_px(scene.mask)
        hard = scene.mask.astype(np.float32)
        guided, guided_wall, guided_cpu = timed(lambda: guided_filter(scene.image, scene.mask, band))
        ours, ours_wall, ours_cpu = timed(lambda: matting.alpha_matte(scene.image, scene.mask))
        for method, alpha, wall, cpu in (("hard mask", hard, 0.0, 0.0), ("guided filter", guided, guided_wall, guided_cpu),
                                         ("ours (soft)", ours.alpha, ours_wall, ours_cpu)):
            rows.append({"scene": scene.name, "method": method, "band": band, "wall_s": wall, "cpu_s": cpu,
                         **errors(alpha, scene.alpha)})
    picture = write_example(scenes[0]) if write_picture else None
    return {"rows": rows, "import_wall_s": import_wall, "import_cpu_s": import_cpu, "picture": picture,
            "load": os.getloadavg()[0]}


def totals(rows: List[Dict[str, object]], method: str) -> Dict[str, float]:
    mine = [row for row in rows if row["method"] == method]
    summed = {name: sum(float(row[name]) for row in mine) for name in METRICS}
    summed["wall_s"] = float(np.mean([row["wall_s"] for row in mine]))
    summed["cpu_s"] = float(np.mean([row["cpu_s"] for row in mine]))
    return summed


def format_result(result: Dict[str, object]) -> str:
    rows = result["rows"]
    lines = ["  SAD, Grad, Conn: sums / 1000; MSE x 1000; whole 1024x768 image; time per image (wall / CPU)",
             f"  {'scene':<7} {'method':<15} {'band':>4} {'SAD':>8} {'MSE':>8} {'Grad':>8} {'Conn':>8} {'wall s':>8} {'CPU s':>7}"]
    for row in rows:
        lines.append(f"  {row['scene']:<7} {row['method']:<15} {row['band']:>4} {row['SAD']:>8.2f} {row['MSE']:>8.2f} "
                     f"{row['Grad']:>8.2f} {row['Conn']:>8.2f} {row['wall_s']:>8.2f} {row['cpu_s']:>7.2f}")
    lines.append("  all scenes:")
    for method in ("hard mask", "guided filter", "ours (soft)"):
        t = totals(rows, method)
        lines.append(f"  {'':<7} {method:<15} {'':>4} {t['SAD']:>8.2f} {t['MSE']:>8.2f} {t['Grad']:>8.2f} "
                     f"{t['Conn']:>8.2f} {t['wall_s']:>8.2f} {t['cpu_s']:>7.2f}")
    hard, guided, ours = (totals(rows, m)["SAD"] for m in ("hard mask", "guided filter", "ours (soft)"))
    lines.append(f"  SAD: ours {100 * (1 - ours / hard):.1f} % lower than the hard mask (target >= 50 %), "
                 f"{100 * (1 - ours / guided):.1f} % lower than the guided filter (target > 0)")
    lines.append(f"  pymatting import (numba kernels from its cache): {result['import_wall_s']:.2f} s wall, "
                 f"{result['import_cpu_s']:.2f} s CPU; 1-min load average {result['load']:.1f} on {os.cpu_count()} cores")
    if result["picture"]:
        lines.append(f"  example picture: {result['picture']}")
    return "\n".join(lines)
