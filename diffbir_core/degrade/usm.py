"""Unsharp-mask sharpening of the HQ image (BasicSR ``USMSharp``; DiffBIR v2.1 ``use_sharpener``).

``blur = G * img`` with the 51x51 Gaussian of ``cv2.getGaussianKernel(51, 0)`` (sigma
``0.3 * ((51 - 1) / 2 - 1) + 0.8 = 8``); ``mask = |img - blur| * 255 > 10`` softened by the same
Gaussian; ``out = soft * clip(img + 0.5 * (img - blur), 0, 1) + (1 - soft) * img``.
"""

from __future__ import annotations

import numpy as np
import torch

from .filtering import filter2d


def cv2_gaussian_1d(ksize: int, sigma: float = 0.0) -> np.ndarray:
    """``cv2.getGaussianKernel(ksize, sigma)`` for ksize > 7 or sigma > 0 (the fixed small tables
    OpenCV uses for ksize <= 7 with sigma <= 0 are not needed here)."""
    if sigma <= 0:
        sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    x = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def usm_kernel(radius: int = 50, sigma: float = 0.0) -> np.ndarray:
    if radius % 2 == 0:
        radius += 1
    g = cv2_gaussian_1d(radius, sigma)
    return np.outer(g, g)


def usm_sharpen(img: torch.Tensor, weight: float = 0.5, threshold: float = 10.0, radius: int = 50) -> torch.Tensor:
    """Sharpen ``[N, C, H, W]`` in [0, 1]."""
    k = usm_kernel(radius)
    blur = filter2d(img, k)
    residual = img - blur
    mask = (torch.abs(residual) * 255 > threshold).to(img.dtype)
    soft = filter2d(mask, k)
    sharp = torch.clamp(img + weight * residual, 0, 1)
    return soft * sharp + (1 - soft) * img
