"""Tile grids, blending weights and the one tile loop shared by every tiled stage (stage 1, VAE, diffusion).

Both stage-2 engines tile through here: the model calls of tiled diffusion (`tiled_model_call`, used by the DiffBIR
Sampler's host model function and by the reference denoiser) and the VAE's pixel/latent tiles (`encode_tiles`,
`decode_tiles`, used by the nodes' VAE and the reference VAE calls).

Grid and weights follow the official code (reference spec B.7, H.10): the grid always ends
with a tile flush with the border, and the gaussian weight keeps the official asymmetric
midpoints ((W-1)/2 in x but H/2 in y), inherited from mixture-of-diffusers. `blend_tiles`
accumulates weight * tile result and divides by the weight sum, as the official
`make_tiled_fn` (v2.1) and `vae_encode_tiled` / `vae_decode_tiled` (v2.0.0) do.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch


TILE_MULTIPLE = 8  # tiles are laid out in latent pixels: 8 image pixels each
# The smallest tile of every tiled stage: below it a VAE tile is almost all border (the decoder's receptive
# field), SwinIR's windows and the UNet's three halvings need 64 anyway.
MIN_TILE = 64


def tile_settings_error(tile_size: int, tile_stride: int, *, tile_name: str = "tile_size",
                        stride_name: str = "tile_stride") -> str | None:
    """Why a (tile_size, tile_stride) pair in image pixels cannot be used, or None; tile_size 0 means no tiling.

    The one rule of every tiled stage: the tile a multiple of 8 pixels of at least `MIN_TILE`, the stride a
    positive multiple of 8 no larger than the tile (a larger stride would leave gaps).
    """
    if tile_size == 0:
        return None
    if tile_size < MIN_TILE or tile_size % TILE_MULTIPLE:
        return (f"{tile_name} must be 0 (no tiling) or a multiple of {TILE_MULTIPLE} of at least {MIN_TILE} pixels, "
                f"got {tile_size} (the official default is 512)")
    if tile_stride < TILE_MULTIPLE or tile_stride % TILE_MULTIPLE:
        return (f"{stride_name} must be a positive multiple of {TILE_MULTIPLE} pixels, got {tile_stride} "
                f"(official: {tile_name} / 2)")
    if tile_stride > tile_size:
        return (f"{stride_name} ({tile_stride}) must not exceed {tile_name} ({tile_size}): tiles would leave gaps; "
                f"use {tile_size // 2} for the official half-tile overlap")
    return None


def check_tile_settings(tile_size: int, tile_stride: int, **names) -> None:
    """`tile_settings_error` as a ValueError (keyword arguments as there)."""
    error = tile_settings_error(tile_size, tile_stride, **names)
    if error:
        raise ValueError(error)


def holds_a_tile(h: int, w: int, tile: int) -> bool:
    """Whether an image (or latent) of h x w holds at least one whole tile of side `tile` (same units): the
    official main code tiles only then ("the input size is tiny and unnecessary to tile") and runs a smaller one
    whole. The reference pipeline and the DiffBIR Sampler's manual tiles follow it."""
    return min(h, w) >= tile


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


def _weights(tile_h: int, tile_w: int, like: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(gaussian_weights(tile_w, tile_h), dtype=torch.float32, device=like.device)
    return w[None, None].to(like.dtype)


def blend_tiles(windows: list[tuple[int, int, int, int]], call: Callable[[int, int, int, int], torch.Tensor],
                size: tuple[int, int], scale: int = 1, dtype: torch.dtype | None = None,
                on_tile: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """sum(w * call(window)) / sum(w) over `windows`, each result placed at its window times `scale`.

    The one tile loop of the package: `size` is the output's (H, W), batch and channels come from the first
    result, `dtype` (default: the results') is that of the output and the weights. `on_tile(i, n)` runs before
    tile i of n: the host's interrupt check and progress hook (it may raise to stop between tiles). A single
    window covering the whole output returns the call's result itself.
    """
    if len(windows) == 1 and windows[0] == (0, size[0] // scale, 0, size[1] // scale):
        if on_tile is not None:
            on_tile(0, 1)
        res = call(*windows[0])  # one tile is the whole output: w * y / w would round
        return res if dtype is None else res.to(dtype)
    out = count = weights = None
    for i, (y0, y1, x0, x1) in enumerate(windows):
        if on_tile is not None:
            on_tile(i, len(windows))
        res = call(y0, y1, x0, x1)
        if out is None:
            out = res.new_zeros((res.shape[0], res.shape[1], *size), dtype=dtype or res.dtype)
            count = torch.zeros((1, 1, *size), dtype=torch.float32, device=out.device)  # same for every channel
        if weights is None or weights.shape[-2:] != res.shape[-2:]:
            weights = _weights(res.shape[-2], res.shape[-1], out)
        region = (..., slice(y0 * scale, y1 * scale), slice(x0 * scale, x1 * scale))
        out[region] += res * weights
        count[region] += weights
    return out / count


def tiled_model_call(call: Callable[[torch.Tensor, tuple[int, int, int, int]], torch.Tensor], x: torch.Tensor,
                     tile: int, stride: int) -> torch.Tensor:
    """One model call of tiled diffusion: `call(x_tile, window) -> output tile` over latent tiles of x (tile and
    stride in latent pixels), gaussian-blended into an output of x's shape and dtype, as the official
    `make_tiled_fn` (v2.1) tiles every model call. `window` is the tile's (y0, y1, x0, x1) latent window: the
    caller crops what else the model sees (the condition latent) to it."""
    c, h, w = x.shape[1:]

    def one(y0, y1, x0, x1):
        res = call(x[..., y0:y1, x0:x1], (y0, y1, x0, x1))
        if res.shape[1] != c:
            raise ValueError(f"tiled model call returned {res.shape[1]} channels, expected {c}")
        return res

    return blend_tiles(sliding_windows(h, w, tile, stride), one, (h, w), dtype=x.dtype)


def encode_tiles(encode: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, tile_size: int,
                 tile_stride: int, on_tile: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """`encode(pixel_tile) -> latent_tile` over pixel tiles of tile_size (stride tile_stride), gaussian-blended.

    The grid is laid out in latent pixels (tile_size // 8, tile_stride // 8) as the official v2.0.0 code does, so
    the image sides must be multiples of 8. `on_tile(i, n)` as in `blend_tiles` (nothing is returned when it raises).
    """
    h, w = image.shape[-2:]
    if h % TILE_MULTIPLE or w % TILE_MULTIPLE:
        raise ValueError(f"tiled VAE encode needs sides that are multiples of {TILE_MULTIPLE}, got {h}x{w}")
    m = TILE_MULTIPLE
    windows = sliding_windows(h // m, w // m, max(tile_size // m, 1), max(tile_stride // m, 1))
    return blend_tiles(windows, lambda y0, y1, x0, x1: encode(image[:, :, y0 * m : y1 * m, x0 * m : x1 * m]),
                       (h // m, w // m), on_tile=on_tile)


def decode_tiles(decode: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, tile: int, stride: int,
                 on_tile: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """`decode(latent_tile) -> pixel_tile` over latent tiles of `tile` (stride `stride`), pixel gaussian blend.

    Only one tile's decoder activations exist at a time; the blended output and its weight sum are the only
    whole-image buffers. `on_tile(i, n)` as in `blend_tiles`.
    """
    h, w = z.shape[-2:]
    m = TILE_MULTIPLE
    return blend_tiles(sliding_windows(h, w, tile, stride), lambda y0, y1, x0, x1: decode(z[..., y0:y1, x0:x1]),
                       (h * m, w * m), scale=m, on_tile=on_tile)
