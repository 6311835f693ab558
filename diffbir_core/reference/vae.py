"""The reference engine's VAE calls over our own SD 2.1 VAE (`arch.vae`): whole-image and tiled encode/decode.

Tiles come from the one tile loop (`tiling.encode_tiles` / `decode_tiles`: grids from `tiling.sliding_windows`
with the last tile flush with the border, the official gaussian weights normalised by the accumulated weight), the
v2.0.0 scheme (reference spec B.7) `vae_encode_tiled` / `vae_decode_tiled`, used for every version. Each tile is
encoded/decoded independently and the results blended, so the largest activation is that of one tile. The v2.1
Tiled-VAE (pkuliyi2015's op-by-op tiling with GroupNorm statistics synchronised across tiles, spec C.7) is NOT
reproduced: each tile normalises with its own GroupNorm statistics, so results differ slightly from an untiled pass
and from the official v2.1 tiled VAE, most visibly as low-frequency tone differences that the gaussian blend
smooths out. The nodes run the same tile loops over ComfyUI's VAE (`nodes/host/vae.py`).
"""

from __future__ import annotations

import torch

from ..arch.vae import vae_encode
from ..schedule import LATENT_SCALE
from ..tiling import decode_tiles, encode_tiles

__all__ = ["vae_decode", "vae_decode_tiled", "vae_encode", "vae_encode_tiled"]


def vae_decode(vae, z: torch.Tensor, scale: float = LATENT_SCALE) -> torch.Tensor:
    """Scaled latent -> image in ~[-1, 1]."""
    return vae.decode(z / scale)


def vae_encode_tiled(vae, image: torch.Tensor, tile_size: int, tile_stride: int, sample: bool = False, noise=None,
                     scale: float = LATENT_SCALE) -> torch.Tensor:
    """v2.0.0 `vae_encode_tiled` over our VAE; with `sample` each tile draws its own posterior noise."""
    return encode_tiles(lambda tile: vae_encode(vae, tile, sample, noise, scale), image, tile_size, tile_stride)


def vae_decode_tiled(vae, z: torch.Tensor, tile: int, stride: int, scale: float = LATENT_SCALE) -> torch.Tensor:
    """v2.0.0 `vae_decode_tiled` over our VAE: latent tiles of `tile` (stride `stride`, latent pixels)."""
    return decode_tiles(lambda t: vae_decode(vae, t, scale), z, tile, stride)
