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
from ..tiling import blend_tiles, sliding_windows


def tiled_call(call: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, c_img: torch.Tensor,
               tile: int, stride: int) -> torch.Tensor:
    """`call(x_tile, c_img_tile)` over latent tiles of x (and the same crop of c_img), gaussian-blended."""
    c, h, w = x.shape[1:]

    def one(y0, y1, x0, x1):
        res = call(x[..., y0:y1, x0:x1], c_img[..., y0:y1, x0:x1])
        if res.shape[1] != c:
            raise ValueError(f"tiled model call returned {res.shape[1]} channels, expected {c}")
        return res

    return blend_tiles(sliding_windows(h, w, tile, stride), one, (h, w), dtype=x.dtype)


def vae_encode(vae, image: torch.Tensor, sample: bool = False, noise=None, scale: float = LATENT_SCALE) -> torch.Tensor:
    """image in [-1, 1] -> scaled latent: posterior mode, or a sample drawing one `noise.randn_like`."""
    post = vae.encode(image)
    z = post.sample(noise=noise.randn_like(post.mean)) if sample else post.mode()
    return z * scale


def vae_decode(vae, z: torch.Tensor, scale: float = LATENT_SCALE) -> torch.Tensor:
    return vae.decode(z / scale)


def encode_tiles(encode: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, tile_size: int,
                 tile_stride: int, on_tile: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """`encode(pixel_tile) -> latent_tile` over pixel tiles of tile_size (stride tile_stride), gaussian-blended.

    The grid is laid out in latent pixels (tile_size // 8, tile_stride // 8) as the official v2.0.0 code does, so
    the image sides must be multiples of 8. `on_tile(i, n)` as in `tiling.blend_tiles` (nothing is returned when it raises).
    """
    h, w = image.shape[-2:]
    if h % 8 or w % 8:
        raise ValueError(f"tiled VAE encode needs sides that are multiples of 8, got {h}x{w}")
    windows = sliding_windows(h // 8, w // 8, max(tile_size // 8, 1), max(tile_stride // 8, 1))
    return blend_tiles(windows, lambda y0, y1, x0, x1: encode(image[:, :, y0 * 8 : y1 * 8, x0 * 8 : x1 * 8]),
                  (h // 8, w // 8), on_tile=on_tile)


def decode_tiles(decode: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, tile: int, stride: int,
                 on_tile: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """`decode(latent_tile) -> pixel_tile` over latent tiles of `tile` (stride `stride`), pixel gaussian blend.

    Only one tile's decoder activations exist at a time; the blended output and its weight sum are the only
    whole-image buffers. `on_tile(i, n)` as in `tiling.blend_tiles`.
    """
    h, w = z.shape[-2:]
    return blend_tiles(sliding_windows(h, w, tile, stride), lambda y0, y1, x0, x1: decode(z[..., y0:y1, x0:x1]),
                  (h * 8, w * 8), scale=8, on_tile=on_tile)


def vae_encode_tiled(vae, image: torch.Tensor, tile_size: int, tile_stride: int, sample: bool = False, noise=None,
                     scale: float = LATENT_SCALE) -> torch.Tensor:
    """v2.0.0 `vae_encode_tiled` over our VAE; with `sample` each tile draws its own posterior noise."""
    return encode_tiles(lambda tile: vae_encode(vae, tile, sample, noise, scale), image, tile_size, tile_stride)


def vae_decode_tiled(vae, z: torch.Tensor, tile: int, stride: int, scale: float = LATENT_SCALE) -> torch.Tensor:
    """v2.0.0 `vae_decode_tiled` over our VAE: latent tiles of `tile` (stride `stride`, latent pixels)."""
    return decode_tiles(lambda t: vae_decode(vae, t, scale), z, tile, stride)
