"""Additive noise: Gaussian (colour or gray) and Poisson (colour or gray), as BasicSR draws them.

A noise spec is ``{"type": "gaussian", "sigma", "gray", "seed"}`` or ``{"type": "poisson", "scale",
"gray", "seed"}``. The noise *field* comes from ``numpy.random.Generator(PCG64(seed))`` where ``seed``
itself is drawn from the pipeline's generator, so a parameter string fully determines the image.

* Gaussian: ``N(0, 1) * sigma / 255`` per pixel and channel; gray noise is one field for all three
  channels. The result is clipped to [0, 1] (``clip=True, rounds=False``).
* Poisson (``generate_poisson_noise_pt``): the image is rounded to 8 bit, ``vals`` = the number of
  distinct values rounded up to a power of two, ``noise = Poisson(img * vals) / vals - img``, scaled;
  gray noise uses the luma ``0.2989 R + 0.587 G + 0.114 B`` (torchvision ``rgb_to_grayscale``).
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch

# noise seeds stay below 2**53 so that any JSON reader keeps them exact
SEED_LIMIT = 2**53


def draw_gaussian(rng: np.random.Generator, sigma_range: Tuple[float, float], gray_prob: float) -> dict:
    sigma = float(rng.uniform(sigma_range[0], sigma_range[1]))
    gray = bool(rng.random() < gray_prob)
    return {"type": "gaussian", "sigma": sigma, "gray": gray, "seed": int(rng.integers(SEED_LIMIT))}


def draw_poisson(rng: np.random.Generator, scale_range: Tuple[float, float], gray_prob: float) -> dict:
    scale = float(rng.uniform(scale_range[0], scale_range[1]))
    gray = bool(rng.random() < gray_prob)
    return {"type": "poisson", "scale": scale, "gray": gray, "seed": int(rng.integers(SEED_LIMIT))}


def gaussian_noise(shape: Tuple[int, ...], sigma: float, gray: bool, seed: int) -> torch.Tensor:
    """Noise for an image of ``shape`` ``[N, C, H, W]`` (float32)."""
    gen = np.random.Generator(np.random.PCG64(int(seed)))
    n, c, h, w = shape
    if gray:
        field = gen.standard_normal((n, 1, h, w), dtype=np.float32)
        field = np.repeat(field, c, axis=1)
    else:
        field = gen.standard_normal((n, c, h, w), dtype=np.float32)
    return torch.from_numpy(field) * np.float32(sigma / 255.0)


def _poisson_field(img: torch.Tensor, gen: np.random.Generator) -> torch.Tensor:
    levels = torch.clamp(torch.round(img * 255.0), 0, 255)
    q = levels / 255.0
    # number of distinct 8-bit values (== len(torch.unique(q)) of the official code, but O(n))
    vals = int((torch.bincount(levels.to(torch.int64).flatten(), minlength=256) > 0).sum())
    vals = 2.0 ** math.ceil(math.log2(vals))
    lam = (q.to(torch.float64) * vals).numpy()
    out = torch.from_numpy(gen.poisson(lam).astype(np.float64) / vals)
    return (out - q.to(torch.float64)).to(img.dtype)


def poisson_noise(img: torch.Tensor, scale: float, gray: bool, seed: int) -> torch.Tensor:
    """Poisson noise for ``img`` ``[N, C, H, W]`` (one image per call: ``vals`` is per image)."""
    gen = np.random.Generator(np.random.PCG64(int(seed)))
    if gray:
        r, g, b = img[:, 0:1], img[:, 1:2], img[:, 2:3]
        luma = 0.2989 * r + 0.587 * g + 0.114 * b
        noise = _poisson_field(luma, gen).expand(-1, img.shape[1], -1, -1)
    else:
        noise = _poisson_field(img, gen)
    return noise * float(scale)


def add_noise(img: torch.Tensor, spec: dict) -> torch.Tensor:
    """Add the noise a spec describes and clip to [0, 1]."""
    t = spec["type"]
    if t == "gaussian":
        noise = gaussian_noise(tuple(img.shape), float(spec["sigma"]), bool(spec["gray"]), int(spec["seed"]))
    elif t == "poisson":
        noise = poisson_noise(img, float(spec["scale"]), bool(spec["gray"]), int(spec["seed"]))
    else:
        raise ValueError(f"unknown noise type {t!r}; expected 'gaussian' or 'poisson'")
    return torch.clamp(img + noise.to(img.dtype), 0.0, 1.0)
