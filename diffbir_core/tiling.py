"""Tile grids and blending weights shared by every tiled stage (stage 1, VAE, diffusion).

Both follow the official code (reference spec B.7, H.10): the grid always ends with a
tile flush with the border, and the gaussian weight keeps the official asymmetric
midpoints ((W-1)/2 in x but H/2 in y), inherited from mixture-of-diffusers.
"""

from __future__ import annotations

import math

import numpy as np


def _starts(size: int, tile: int, stride: int) -> list[int]:
    starts = list(range(0, size - tile + 1, stride))
    if (size - tile) % stride != 0:
        starts.append(size - tile)
    return starts


def sliding_windows(h: int, w: int, tile: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Tiles as (y0, y1, x0, x1), rows outermost, last row/column flush with the border.

    A tile larger than the image is clamped to the image (the official code requires the
    image to be at least one tile; clamping gives the same single tile without the error).
    """
    if tile <= 0 or stride <= 0:
        raise ValueError(f"tile ({tile}) and stride ({stride}) must be positive")
    th, tw = min(tile, h), min(tile, w)
    return [(y, y + th, x, x + tw) for y in _starts(h, th, stride) for x in _starts(w, tw, stride)]


def gaussian_weights(tile_w: int, tile_h: int, var: float = 0.01) -> np.ndarray:
    """[tile_h, tile_w] blending weights, peaked at the tile centre."""
    norm = 1.0 / math.sqrt(2 * math.pi * var)
    mx = (tile_w - 1) / 2
    my = tile_h / 2  # the official asymmetry, kept for parity
    xs = np.exp(-((np.arange(tile_w) - mx) ** 2) / (tile_w * tile_w) / (2 * var)) * norm
    ys = np.exp(-((np.arange(tile_h) - my) ** 2) / (tile_h * tile_h) / (2 * var)) * norm
    return np.outer(ys, xs)
