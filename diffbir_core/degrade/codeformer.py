"""CodeFormer-style single-order degradation (spec E.1, DiffBIR ``dataset/codeformer.py``).

draw: kernel (type, sigma_x[, sigma_y, theta]) -> downsample scale -> noise sigma (colour noise;
BasicSR still draws the gray coin with probability 0) -> JPEG quality ``int(U(q_lo, q_hi))``.
apply: blur (size-41 kernel) -> bilinear resize to ``(int(w // scale), int(h // scale))`` -> Gaussian
noise, clipped -> JPEG -> bilinear resize back to ``(w, h)``. The LQ keeps the HQ size.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch

from . import noise as _noise
from .filtering import filter2d
from .jpeg import jpeg_roundtrip
from .kernels import draw_mixed_kernel, make_kernel
from .resize import resize_linear

Range = Tuple[float, float]


def draw(rng: np.random.Generator, ranges: Dict[str, Range], settings: dict) -> dict:
    kernel = draw_mixed_kernel(rng, settings["kernels"], settings["kernel_size"], ranges["blur_sigma"])
    scale = float(rng.uniform(*ranges["downsample"]))
    noise = _noise.draw_gaussian(rng, ranges["noise_sigma"], gray_prob=0.0)
    quality = int(rng.uniform(*ranges["jpeg_quality"]))
    return {"kernel": kernel, "downsample": scale, "noise": noise, "jpeg_quality": max(1, min(100, quality))}


def lq_size(h: int, w: int, scale: float) -> Tuple[int, int]:
    """``(int(h // scale), int(w // scale))`` as the official ``cv2.resize`` call, at least 1."""
    return max(1, int(h // scale)), max(1, int(w // scale))


def apply(hq: torch.Tensor, p: dict) -> torch.Tensor:
    """``hq``: ``[1, 3, H, W]`` float32 in [0, 1] -> LQ of the same shape."""
    h, w = hq.shape[-2:]
    lq = filter2d(hq, make_kernel(p["kernel"]))
    lq = resize_linear(lq, lq_size(h, w, float(p["downsample"])))
    lq = _noise.add_noise(lq, p["noise"])
    lq = jpeg_roundtrip(lq, int(p["jpeg_quality"]))
    return resize_linear(lq, (h, w))
