"""Full-reference image quality: PSNR and SSIM.

Conventions (chosen to match the common restoration benchmarks and scikit-image):

* Inputs are ComfyUI IMAGEs ``[H, W, C]`` (or ``[B, H, W, C]``) in [0, 1]; ``data_range`` = 1.
  Values are not clipped or quantised; metrics are computed in float64.
* PSNR = ``10 log10(data_range^2 / MSE)`` with the MSE over all pixels *and* RGB channels
  (``skimage.metrics.peak_signal_noise_ratio(a, b, data_range=1)``); identical images give ``inf``.
* SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, population
  (co)variances, statistics only where the window fits inside the image ('valid', as the original
  MATLAB code and as scikit-image after it crops its padded border), computed per RGB channel and
  averaged (``structural_similarity(a, b, data_range=1, channel_axis=-1, gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False)``). We do not convert to Y (luma); numbers from papers that
  report Y-channel SSIM are therefore not directly comparable.
* A batch gives one value per image; callers report the mean.
"""

from __future__ import annotations

import math
from typing import List

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WIN = 11
SSIM_SIGMA = 1.5
K1, K2 = 0.01, 0.03


def _as_hwc64(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.ndim != 3:
        raise ValueError(f"{name}: expected an image [H, W, C], got shape {tuple(x.shape)}")
    return x.detach().to("cpu", torch.float64)


def _check_pair(a, b):
    a, b = _as_hwc64(a, "image_a"), _as_hwc64(b, "image_b")
    if a.shape != b.shape:
        raise ValueError(f"image_a and image_b must have the same size, got {tuple(a.shape)} and {tuple(b.shape)}")
    return a, b


def psnr(a, b, data_range: float = 1.0) -> float:
    a, b = _check_pair(a, b)
    mse = float(torch.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range * data_range / mse)


def gaussian_window_1d(size: int = SSIM_WIN, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * x * x / (sigma * sigma))
    return g / g.sum()


def _filter_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filtering of ``[C, 1, H, W]``."""
    n = g.numel()
    x = F.conv2d(x, g.view(1, 1, 1, n))
    return F.conv2d(x, g.view(1, 1, n, 1))


def ssim(a, b, data_range: float = 1.0) -> float:
    a, b = _check_pair(a, b)
    h, w, c = a.shape
    if h < SSIM_WIN or w < SSIM_WIN:
        raise ValueError(f"SSIM needs images of at least {SSIM_WIN}x{SSIM_WIN} pixels, got {w}x{h}")
    x = a.permute(2, 0, 1).unsqueeze(1)  # [C, 1, H, W]
    y = b.permute(2, 0, 1).unsqueeze(1)
    g = gaussian_window_1d()
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=0)
    f = _filter_valid(stack, g)
    ux, uy, uxx, uyy, uxy = f.split(c, dim=0)
    vx = uxx - ux * ux
    vy = uyy - uy * uy
    vxy = uxy - ux * uy
    c1 = (K1 * data_range) ** 2
    c2 = (K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(s.mean())


def _batched(x, name):
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise ValueError(f"{name}: expected an IMAGE batch [B, H, W, C], got shape {tuple(x.shape)}")
    return x


def pair_batches(a, b):
    """Broadcast a batch of 1 against a batch of N; otherwise the shapes must be equal."""
    a, b = _batched(a, "image_a"), _batched(b, "image_b")
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(
            f"image_a and image_b must have the same size and channels, got {tuple(a.shape[1:])} and "
            f"{tuple(b.shape[1:])} (H, W, C); resize or crop one of them first (e.g. use the Degrade node's hq output)"
        )
    if a.shape[0] != b.shape[0]:
        if a.shape[0] == 1:
            a = a.expand(b.shape[0], -1, -1, -1)
        elif b.shape[0] == 1:
            b = b.expand(a.shape[0], -1, -1, -1)
        else:
            raise ValueError(f"image_a has {a.shape[0]} images and image_b {b.shape[0]}; batches must match (or one be 1)")
    return a, b


def psnr_batch(a, b, data_range: float = 1.0) -> List[float]:
    a, b = pair_batches(a, b)
    return [psnr(a[i], b[i], data_range) for i in range(a.shape[0])]


def ssim_batch(a, b, data_range: float = 1.0) -> List[float]:
    a, b = pair_batches(a, b)
    return [ssim(a[i], b[i], data_range) for i in range(a.shape[0])]
