"""The standard alpha-matting error measures (Rhemann et al., CVPR 2009, "A perceptually motivated
online benchmark for image matting"), as the alphamatting.com / Deep Image Matting evaluation
code defines them. Alphas are floats in [0, 1]; every measure is summed over ``region`` (the
whole image when None) and, as published, SAD, gradient and connectivity are divided by 1000.
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

GRADIENT_SIGMA = 1.4
CONNECTIVITY_STEP = 0.1
CONNECTIVITY_THETA = 0.15


def _region(alpha: np.ndarray, region: Optional[np.ndarray]) -> np.ndarray:
    return np.ones(alpha.shape, dtype=bool) if region is None else region.astype(bool)


def sad(alpha: np.ndarray, truth: np.ndarray, region: Optional[np.ndarray] = None) -> float:
    """Sum of absolute differences, / 1000."""
    return float(np.abs(alpha - truth)[_region(alpha, region)].sum() / 1000.0)


def mse(alpha: np.ndarray, truth: np.ndarray, region: Optional[np.ndarray] = None) -> float:
    """Mean squared error over the region's pixels."""
    return float(((alpha - truth) ** 2)[_region(alpha, region)].mean())


def _gaussian_derivative_kernel(sigma: float, epsilon: float = 1e-2) -> np.ndarray:
    """The x-derivative-of-Gaussian kernel of the evaluation code: G(y) dG(x), L2-normalised."""
    half = int(np.ceil(np.sqrt(-2 * sigma ** 2 * np.log(np.sqrt(2 * np.pi) * sigma * epsilon))))
    u = np.arange(-half, half + 1, dtype=np.float64)
    gauss = np.exp(-u ** 2 / (2 * sigma ** 2)) / (sigma * np.sqrt(2 * np.pi))
    dgauss = -u * gauss / sigma ** 2
    kernel = np.outer(gauss, dgauss)   # rows: y (Gaussian), columns: x (derivative)
    return kernel / np.sqrt((kernel ** 2).sum())


def _gradient_magnitude(alpha: np.ndarray, sigma: float) -> np.ndarray:
    kernel = _gaussian_derivative_kernel(sigma)
    image = alpha.astype(np.float64)
    gx = cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.filter2D(image, -1, kernel.T, borderType=cv2.BORDER_REPLICATE)
    return np.hypot(gx, gy)


def gradient_error(alpha: np.ndarray, truth: np.ndarray, region: Optional[np.ndarray] = None,
                   sigma: float = GRADIENT_SIGMA) -> float:
    """Sum of squared differences of the Gaussian-smoothed gradient magnitudes, / 1000."""
    difference = (_gradient_magnitude(alpha, sigma) - _gradient_magnitude(truth, sigma)) ** 2
    return float(difference[_region(alpha, region)].sum() / 1000.0)


def _largest_component(binary: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=4)
    if count <= 1:
        return np.zeros(binary.shape, dtype=bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest


def connectivity_error(alpha: np.ndarray, truth: np.ndarray, region: Optional[np.ndarray] = None,
                       step: float = CONNECTIVITY_STEP, theta: float = CONNECTIVITY_THETA) -> float:
    """How far each pixel's connection to the largest common opaque component differs, / 1000.

    For rising thresholds t, the largest 4-connected component of (alpha >= t) & (truth >= t)
    is found; a pixel's level l is the last threshold at which it still belonged to it. The
    degree of connectivity is phi = 1 - d * (d >= theta) with d = alpha - l."""
    thresholds = np.arange(0.0, 1.0 + step / 2, step)
    level = np.full(alpha.shape, -1.0)
    for previous, threshold in zip(thresholds[:-1], thresholds[1:]):
        component = _largest_component((alpha >= threshold) & (truth >= threshold))
        level[(level == -1) & ~component] = previous
    level[level == -1] = 1.0
    d_alpha, d_truth = alpha - level, truth - level
    phi_alpha = 1 - d_alpha * (d_alpha >= theta)
    phi_truth = 1 - d_truth * (d_truth >= theta)
    return float(np.abs(phi_alpha - phi_truth)[_region(alpha, region)].sum() / 1000.0)
