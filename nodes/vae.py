"""Tiled SD 2.1 VAE encode/decode over the host's VAE, and the DiffBIR VAE Decode node.

The tiles and their blending are diffbir_core's (`encode_tiles` / `decode_tiles`, the official v2.0.0 scheme:
sliding windows with the last tile flush with the border, gaussian weights). Each tile goes through ComfyUI's own
`VAE.encode` / `VAE.decode`, so the host still loads the VAE onto the device and picks its dtype; only one tile's
activations exist at a time. Between tiles the host's interrupt is checked (Cancel stops within one tile, and no
partial image is returned) and its progress bar advances.
"""

from __future__ import annotations

import math

import comfy.model_management as mm
import comfy.utils
import torch

from ..diffbir_core.sampling.tiled import decode_tiles, encode_tiles
from .tiles import (
    TILE_PLAN_INPUT,
    auto_plan,
    check_tile_inputs,
    check_tile_plan,
    tile_inputs_error,
    weights_to_load,
    with_fallback,
)

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


def _host_hook():
    """on_tile(i, n) for the core's tile loops: interrupt check before each tile, progress bar of n tiles."""
    state = {}

    def on_tile(i: int, n: int) -> None:
        mm.throw_exception_if_processing_interrupted()
        if "bar" not in state:
            state["bar"] = comfy.utils.ProgressBar(n)
        if i:
            state["bar"].update_absolute(i, n)

    return on_tile


def encode_pixels(vae, pixels: torch.Tensor, tile_size: int = 0, tile_stride: int = 0) -> torch.Tensor:
    """Unscaled posterior mode of `pixels` (B, 3, H, W) in [0, 1], H and W multiples of 8; tiled when tile_size
    is set and the image is larger than one tile (an image within one tile is encoded whole: same result)."""
    def encode(tile: torch.Tensor) -> torch.Tensor:
        return vae.encode(tile.movedim(1, -1)).float()  # the host VAE takes (B, H, W, C) in [0, 1]

    h, w = pixels.shape[-2:]
    if tile_size <= 0 or (h <= tile_size and w <= tile_size):
        return encode(pixels)
    return encode_tiles(encode, pixels, tile_size, tile_stride, on_tile=_host_hook())


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
        image = decode_tiles(decode, z, tile, stride, on_tile=_host_hook())
    return image.clamp(0.0, 1.0).movedim(1, -1)


class DiffBIRVAEDecode:
    DESCRIPTION = (
        "Decode a latent with the SD 2.1 VAE in overlapping tiles (the official DiffBIR v2 tiled decode: gaussian-"
        "blended tiles), so a large restore never needs the whole-image decoder activations. Latents no larger than "
        "one tile decode whole, exactly like the stock VAE Decode. Cancel stops between tiles."
    )
    CATEGORY = "DiffBIR"
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The decoded image (latent size x 8).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "samples": ("LATENT", {"tooltip": "The latent to decode (e.g. from DiffBIR Sampler)."}),
                "vae": ("VAE", {"tooltip": "The SD 2.1 VAE (from the same checkpoint as the MODEL)."}),
                "tile_size": ("INT", {"default": 512, "min": 0, "max": 8192, "step": 64,
                                      "tooltip": "Tile size in output pixels (0 = decode the whole image at once). "
                                                 "Memory grows with the tile, not the image: 512 keeps a 2048x2048 "
                                                 "decode near the memory of a 512x512 one."}),
                "tile_stride": ("INT", {"default": 256, "min": 8, "max": 8192, "step": 8,
                                        "tooltip": "Distance between tile origins in pixels (official: half the tile). "
                                                   "Smaller strides blend more tiles per pixel: smoother seams, "
                                                   "slower."}),
            },
            "optional": {"tile_plan": TILE_PLAN_INPUT},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, tile_size=None, tile_stride=None):
        """Shown before the run (ComfyUI then leaves the min/max check of these two inputs to us)."""
        return tile_inputs_error(cls, "tile_size", tile_size, "tile_stride", tile_stride) or True

    def decode(self, samples, vae, tile_size, tile_stride, tile_plan="manual"):
        node = "DiffBIR VAE Decode"
        check_sd_vae(vae, node)
        auto = check_tile_plan(node, tile_plan)
        if not auto:
            check_tile_inputs(node, tile_size, tile_stride)
        if not isinstance(samples, dict) or not isinstance(samples.get("samples"), torch.Tensor):
            raise TypeError("DiffBIR VAE Decode: 'samples' must be a LATENT (connect a sampler's LATENT output)")
        z = samples["samples"]
        if z.ndim != 4 or z.shape[1] != 4:
            raise ValueError(f"DiffBIR VAE Decode: expected an SD 2.1 latent of shape (B, 4, h, w), got "
                             f"{tuple(z.shape)}; decode other latents with the stock VAE Decode")
        h, w = z.shape[-2] * LATENT_DOWNSCALE, z.shape[-1] * LATENT_DOWNSCALE
        if auto:
            plan = auto_plan(node, "vae_decode", h, w, vae.device, vae.vae_dtype,
                             weights_to_load(vae.device, vae.patcher))
            tile_size, tile_stride = plan.tile, plan.stride
        return (with_fallback(node, "vae_decode", lambda tile, stride: decode_latent(vae, z, tile, stride),
                              tile_size, tile_stride, h, w),)


NODE_CLASS_MAPPINGS = {"DiffBIRVAEDecode": DiffBIRVAEDecode}
NODE_DISPLAY_NAME_MAPPINGS = {"DiffBIRVAEDecode": "DiffBIR VAE Decode (Tiled)"}
