"""Tiled evaluation: diffusion model calls and VAE encode/decode over overlapping tiles.

Grids come from `tiling.sliding_windows` (the last tile flush with the border) and tiles are
blended with `tiling.gaussian_weights` (the official formula with its asymmetric midpoint),
normalised by the accumulated weight, exactly as the official `make_tiled_fn` (v2.1, every
model call) and `vae_encode_tiled` / `vae_decode_tiled` (v2.0.0).

VAE tiles: the v2.0.0 scheme (reference spec B.7) is used for every version. Each tile is
encoded/decoded independently and the results blended, so the largest activation is that of
one tile and a large image never needs whole-image VAE activations. The v2.1 Tiled-VAE
(pkuliyi2015's op-by-op tiling with GroupNorm statistics synchronised across tiles, spec C.7)
is NOT reproduced: with independent tiles each tile normalises with its own GroupNorm
statistics, so results differ slightly from an untiled pass and from the official v2.1 tiled
VAE, most visibly as low-frequency tone differences that the gaussian blend smooths out.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..schedule import LATENT_SCALE
from ..tiling import gaussian_weights, sliding_windows


def _weights(tile_h: int, tile_w: int, like: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(gaussian_weights(tile_w, tile_h), dtype=torch.float32, device=like.device)
    return w[None, None].to(like.dtype)


def tiled_call(call: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, c_img: torch.Tensor,
               tile: int, stride: int) -> torch.Tensor:
    """`call(x_tile, c_img_tile)` over latent tiles of x (and the same crop of c_img), gaussian-blended."""
    _b, c, h, w = x.shape
    out = torch.zeros_like(x)
    count = torch.zeros_like(x, dtype=torch.float32)
    weights = None
    for y0, y1, x0, x1 in sliding_windows(h, w, tile, stride):
        if weights is None or weights.shape[-2:] != (y1 - y0, x1 - x0):
            weights = _weights(y1 - y0, x1 - x0, x)
        res = call(x[..., y0:y1, x0:x1], c_img[..., y0:y1, x0:x1])
        if res.shape[1] != c:
            raise ValueError(f"tiled model call returned {res.shape[1]} channels, expected {c}")
        out[..., y0:y1, x0:x1] += res * weights
        count[..., y0:y1, x0:x1] += weights
    return out / count


def vae_encode(vae, image: torch.Tensor, sample: bool = False, noise=None, scale: float = LATENT_SCALE) -> torch.Tensor:
    """image in [-1, 1] -> scaled latent: posterior mode, or a sample drawing one `noise.randn_like`."""
    post = vae.encode(image)
    z = post.sample(noise=noise.randn_like(post.mean)) if sample else post.mode()
    return z * scale


def vae_decode(vae, z: torch.Tensor, scale: float = LATENT_SCALE) -> torch.Tensor:
    return vae.decode(z / scale)


def vae_encode_tiled(vae, image: torch.Tensor, tile_size: int, tile_stride: int, sample: bool = False, noise=None,
                     scale: float = LATENT_SCALE) -> torch.Tensor:
    """v2.0.0 `vae_encode_tiled`: pixel tiles of tile_size (stride tile_stride), latents gaussian-blended.

    The image sides must be multiples of 8; with `sample` each tile draws its own posterior noise.
    """
    b, _, h, w = image.shape
    if h % 8 or w % 8:
        raise ValueError(f"tiled VAE encode needs sides that are multiples of 8, got {h}x{w}")
    z = torch.zeros((b, 4, h // 8, w // 8), dtype=image.dtype, device=image.device)
    count = torch.zeros_like(z, dtype=torch.float32)
    weights = None
    for y0, y1, x0, x1 in sliding_windows(h // 8, w // 8, tile_size // 8, tile_stride // 8):
        if weights is None or weights.shape[-2:] != (y1 - y0, x1 - x0):
            weights = _weights(y1 - y0, x1 - x0, z)
        tile = image[:, :, y0 * 8 : y1 * 8, x0 * 8 : x1 * 8]
        z[..., y0:y1, x0:x1] += vae_encode(vae, tile, sample, noise, scale) * weights
        count[..., y0:y1, x0:x1] += weights
    return z / count


def vae_decode_tiled(vae, z: torch.Tensor, tile: int, stride: int, scale: float = LATENT_SCALE) -> torch.Tensor:
    """v2.0.0 `vae_decode_tiled`: latent tiles of `tile` (stride `stride`, latent pixels), pixel gaussian blend."""
    b, _, h, w = z.shape
    image = None
    count = None
    weights = None
    for y0, y1, x0, x1 in sliding_windows(h, w, tile, stride):
        dec = vae_decode(vae, z[..., y0:y1, x0:x1], scale)
        if image is None:
            image = torch.zeros((b, dec.shape[1], h * 8, w * 8), dtype=dec.dtype, device=dec.device)
            count = torch.zeros_like(image, dtype=torch.float32)
        if weights is None or weights.shape[-2:] != dec.shape[-2:]:
            weights = _weights(dec.shape[-2], dec.shape[-1], dec)
        image[..., y0 * 8 : y1 * 8, x0 * 8 : x1 * 8] += dec * weights
        count[..., y0 * 8 : y1 * 8, x0 * 8 : x1 * 8] += weights
    return image / count
