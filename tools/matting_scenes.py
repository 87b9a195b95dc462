"""Composites with a known true alpha, made at run time, for the matting benchmark.

Each scene is a textured foreground laid over a textured background with an alpha drawn at 4x
and area-downsampled, so thin strands get the fractional coverage a camera would record:
hair-like strands around a head, a fuzzy (fur) border, a semi-transparent (glass) region, and a
solid object whose only soft pixels are its anti-aliased edge. The mask a user would get from
SAM is simulated as ``true alpha > 0.5`` pushed in and out by a smooth displacement of a few pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import cv2
import numpy as np

SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    name: str
    image: np.ndarray        # (H, W, 3) uint8 composite
    alpha: np.ndarray        # (H, W) float32 true alpha in [0, 1]
    foreground: np.ndarray   # (H, W, 3) uint8 true foreground colours
    mask: np.ndarray         # (H, W) bool, the simulated SAM mask


def smooth_noise(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    """Noise in [0, 1] with features about ``scale`` pixels across."""
    small = rng.random((max(2, int(height / scale)), max(2, int(width / scale)))).astype(np.float32)
    field = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    field -= field.min()
    return field / max(float(field.max()), 1e-6)


def texture(rng: np.random.Generator, height: int, width: int, colours: np.ndarray) -> np.ndarray:
    """A busy texture: two noise scales blend between colours, plus stripes and fine grain."""
    coarse = smooth_noise(rng, height, width, 90.0)
    fine = smooth_noise(rng, height, width, 12.0)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    stripes = 0.5 + 0.5 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / rng.uniform(6, 14))
    weights = np.stack([coarse, fine * (1 - coarse), 0.5 * stripes], axis=-1)
    weights /= weights.sum(axis=-1, keepdims=True)
    picture = weights @ colours.astype(np.float32)
    picture += rng.normal(0, 6, size=picture.shape).astype(np.float32)
    return np.clip(picture, 0, 255)


def downsample(alpha_big: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.clip(cv2.resize(alpha_big, (width, height), interpolation=cv2.INTER_AREA), 0.0, 1.0)


def draw_strands(canvas: np.ndarray, rng: np.random.Generator, roots: np.ndarray, directions: np.ndarray,
                 length: Tuple[float, float], thickness: Tuple[int, int], opacity: float = 1.0) -> None:
    """Curved strands (hair) from ``roots`` along ``directions``, drawn into a 4x alpha canvas."""
    for (x, y), (dx, dy) in zip(roots, directions):
        steps = 12
        total = rng.uniform(*length) * SUPERSAMPLE
        bend = rng.normal(0, 0.08)
        heading = np.arctan2(dy, dx)
        points = [(x * SUPERSAMPLE, y * SUPERSAMPLE)]
        for _ in range(steps):
            heading += bend + rng.normal(0, 0.05)
            px, py = points[-1]
            points.append((px + np.cos(heading) * total / steps, py + np.sin(heading) * total / steps))
        polyline = np.round(np.array(points)).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(canvas, [polyline], False, float(opacity), int(rng.integers(*thickness)), cv2.LINE_AA)


def scene_hair(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    big = np.zeros((height * SUPERSAMPLE, width * SUPERSAMPLE), np.float32)
    centre = np.array([width * 0.5, height * 0.55])
    axes = np.array([width * 0.17, height * 0.3])
    cv2.ellipse(big, tuple(int(v) for v in centre * SUPERSAMPLE), tuple(int(v) for v in axes * SUPERSAMPLE),
                0, 0, 360, 1.0, -1, cv2.LINE_AA)
    angles = rng.uniform(-np.pi * 0.95, -np.pi * 0.05, 900)           # the upper half: hair
    inset = rng.uniform(0.75, 0.98, len(angles))[:, None]
    roots = centre + np.stack([np.cos(angles), np.sin(angles)], -1) * axes * inset
    directions = np.stack([np.cos(angles), np.sin(angles)], -1)
    draw_strands(big, rng, roots, directions, (40, 110), (2, 7))
    return downsample(big, height, width)


def scene_fur(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    theta = np.arctan2(yy - height * 0.5, xx - width * 0.5)
    wobble = 1 + 0.08 * np.sin(5 * theta) + 0.04 * np.sin(11 * theta + 1)
    radius = np.hypot((xx - width * 0.5) / (width * 0.28), (yy - height * 0.5) / (height * 0.33)) / wobble
    tufts = smooth_noise(rng, height, width, 3.0)
    width_of_fur = 0.12 + 0.06 * smooth_noise(rng, height, width, 60.0)
    alpha = np.clip((1.0 - radius) / width_of_fur + 0.5 + 0.9 * (tufts - 0.5), 0, 1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), 1.0)
    big = np.zeros((height * SUPERSAMPLE, width * SUPERSAMPLE), np.float32)
    angles = rng.uniform(-np.pi, np.pi, 500)
    roots = np.stack([width * 0.5 + np.cos(angles) * width * 0.28, height * 0.5 + np.sin(angles) * height * 0.33], -1)
    draw_strands(big, rng, roots, np.stack([np.cos(angles), np.sin(angles)], -1), (10, 35), (2, 5), 0.8)
    return np.maximum(alpha, downsample(big, height, width))


def scene_glass(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A solid stem, a bowl full of something opaque, and the bowl's semi-transparent glass wall."""
    s = SUPERSAMPLE
    stem = np.zeros((height * s, width * s), np.float32)
    cv2.rectangle(stem, (int(width * 0.46 * s), int(height * 0.5 * s)), (int(width * 0.54 * s), int(height * 0.92 * s)),
                  1.0, -1, cv2.LINE_AA)
    centre, axes = (int(width * 0.5 * s), int(height * 0.4 * s)), (int(width * 0.26 * s), int(height * 0.26 * s))
    outer = np.zeros_like(stem)
    cv2.ellipse(outer, centre, axes, 0, 0, 360, 1.0, -1, cv2.LINE_AA)
    wall = 22 * s
    inner = np.zeros_like(stem)
    cv2.ellipse(inner, centre, (axes[0] - wall, axes[1] - wall), 0, 0, 360, 1.0, -1, cv2.LINE_AA)
    outer, inner, stem = (downsample(layer, height, width) for layer in (outer, inner, stem))
    shade = 0.3 + 0.35 * smooth_noise(rng, height, width, 50.0)        # the glass wall: 0.3 .. 0.65
    return np.maximum(stem, np.clip((outer - inner) * shade + inner, 0, 1))


def scene_solid(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    big = np.zeros((height * SUPERSAMPLE, width * SUPERSAMPLE), np.float32)
    corners = 11
    angles = np.linspace(0, 2 * np.pi, corners * 2, endpoint=False)
    radii = np.where(np.arange(corners * 2) % 2 == 0, 0.36, 0.2) * min(height, width)
    polygon = np.stack([width * 0.5 + np.cos(angles) * radii, height * 0.5 + np.sin(angles) * radii], -1)
    cv2.fillPoly(big, [np.round(polygon * SUPERSAMPLE).astype(np.int32)], 1.0, cv2.LINE_AA)
    return downsample(big, height, width)


SCENES: Dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "hair": scene_hair, "fur": scene_fur, "glass": scene_glass, "solid": scene_solid,
}

FOREGROUND_COLOURS = {
    "hair": [[120, 80, 40], [200, 160, 90], [60, 40, 25]],
    "fur": [[230, 225, 210], [170, 150, 120], [250, 245, 235]],
    "glass": [[150, 200, 230], [210, 235, 250], [90, 150, 190]],
    "solid": [[200, 40, 40], [240, 120, 60], [120, 20, 30]],
}


def perturbed_mask(rng: np.random.Generator, alpha: np.ndarray, shift: float = 3.0) -> np.ndarray:
    """``alpha > 0.5`` displaced by a smooth random field of up to ``shift`` pixels."""
    height, width = alpha.shape
    dx = (smooth_noise(rng, height, width, 40.0) - 0.5) * 2 * shift
    dy = (smooth_noise(rng, height, width, 40.0) - 0.5) * 2 * shift
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    hard = (alpha > 0.5).astype(np.uint8)
    return cv2.remap(hard, xx + dx, yy + dy, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE).astype(bool)


def make_scene(name: str, height: int = 768, width: int = 1024, seed: int = 0) -> Scene:
    rng = np.random.default_rng([seed, list(SCENES).index(name)])
    alpha = SCENES[name](rng, height, width).astype(np.float32)
    foreground = texture(rng, height, width, np.array(FOREGROUND_COLOURS[name]))
    background_colours = rng.integers(0, 256, size=(3, 3))
    background = texture(rng, height, width, background_colours)
    composite = alpha[..., None] * foreground + (1 - alpha[..., None]) * background
    return Scene(name=name, image=np.round(composite).astype(np.uint8), alpha=alpha,
                 foreground=np.round(foreground).astype(np.uint8), mask=perturbed_mask(rng, alpha))


def all_scenes(height: int = 768, width: int = 1024, seed: int = 0) -> List[Scene]:
    return [make_scene(name, height, width, seed) for name in SCENES]
