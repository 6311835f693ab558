"""The SD 2.1 VAE in the nodes: its checks and its (tiled) encode/decode through ComfyUI's own VAE.

The tiles and their blending are diffbir_core's (`encode_tiles` / `decode_tiles`, the official v2.0.0 scheme:
sliding windows with the last tile flush with the border, gaussian weights). Each tile goes through ComfyUI's own
`VAE.encode` / `VAE.decode`, so the host still loads the VAE onto the device and picks its dtype; only one tile's
activations exist at a time. Between tiles the host's interrupt is checked (Cancel stops within one tile, and no
partial image is returned) and its progress bar advances.
"""

from __future__ import annotations

import math

import torch

from diffbir_core.tiling import decode_tiles, encode_tiles

from .progress import tile_progress

LATENT_DOWNSCALE = 8  # SD VAE: one latent pixel per 8x8 image pixels


def latent_fits(latent_px: int, image_px: int) -> bool:
    """Whether a latent side of latent_px belongs to an image side of image_px: ComfyUI's own latents of an image
    this size are floor (VAE Encode crops, Empty Latent rounds down) or ceil (an image padded to a multiple of 8)."""
    return latent_px in (image_px // LATENT_DOWNSCALE, math.ceil(image_px / LATENT_DOWNSCALE))


def check_sd_vae(vae, node: str) -> None:
    """Refuse an empty VAE input or one that is not a 4-channel (SD 1.x/2.x) VAE, naming the fix."""
    if vae is None or not hasattr(vae, "encode") or not hasattr(vae, "decode"):
        raise ValueError(
            f"{node}: the 'vae' input is empty. Connect the VAE of your SD 2.1 Load Checkpoint (the VAE output of "
            "Load DiffBIR Models is only filled for a v1 full checkpoint).")
    latent_channels = getattr(vae, "latent_channels", 4)
    if latent_channels != 4:
        raise ValueError(
            f"{node}: the VAE makes {latent_channels}-channel latents; DiffBIR needs the Stable Diffusion 2.1 VAE "
            "(4 channels). Connect the VAE of your SD 2.1 checkpoint.")


def encode_pixels(vae, pixels: torch.Tensor, tile_size: int = 0, tile_stride: int = 0) -> torch.Tensor:
    """Unscaled posterior mode of `pixels` (B, 3, H, W) in [0, 1], H and W multiples of 8; tiled when tile_size
    is set and the image is larger than one tile (an image within one tile is encoded whole: same result)."""
    def encode(tile: torch.Tensor) -> torch.Tensor:
        return vae.encode(tile.movedim(1, -1)).float()  # the host VAE takes (B, H, W, C) in [0, 1]

    h, w = pixels.shape[-2:]
    if tile_size <= 0 or (h <= tile_size and w <= tile_size):
        return encode(pixels)
    return encode_tiles(encode, pixels, tile_size, tile_stride, on_tile=tile_progress())


def decode_latent(vae, z: torch.Tensor, tile_size: int = 0, tile_stride: int = 0) -> torch.Tensor:
    """(B, H, W, 3) image in [0, 1] of an unscaled latent `z`; tile_size/stride in pixels, tiled as in
    `encode_pixels`."""
    def decode(tile: torch.Tensor) -> torch.Tensor:
        return vae.decode(tile).float().movedim(-1, 1)

    h, w = z.shape[-2:]
    tile, stride = tile_size // LATENT_DOWNSCALE, tile_stride // LATENT_DOWNSCALE
    if tile_size <= 0 or (h <= tile and w <= tile):
        image = decode(z)
    else:
        image = decode_tiles(decode, z, tile, stride, on_tile=tile_progress())
    return image.clamp(0.0, 1.0).movedim(1, -1)
