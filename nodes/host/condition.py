"""The condition latent: the stage-1 image as the DiffBIR ControlNet sees it (official VAE encode)."""

from __future__ import annotations

import torch

from diffbir_core.padding import CONDITION_PAD, pad_to_multiple
from diffbir_core.schedule import LATENT_SCALE

from .images import rgb_image
from .vae import check_sd_vae, encode_pixels


def encode_condition(vae, image: torch.Tensor, tile_size: int = 0, tile_stride: int = 0
                     ) -> tuple[torch.Tensor, tuple[int, int]]:
    """The official condition latent of `image` (NHWC in [0, 1]): VAE posterior mode of 2x-1, times 0.18215.

    The image is zero padded (bottom/right) to a multiple of 64 like the official untiled pipeline; the
    latent of the whole padded image is returned with the unpadded pixel size (H, W), and the latent is
    cropped to the sampler's size when used. ComfyUI's `VAE.encode` maps [0, 1] to [-1, 1] itself and
    returns the unscaled posterior mode (DiagonalGaussianRegularizer(sample=False)). With `tile_size` (pixels)
    an image larger than one tile is encoded in gaussian-blended tiles (official v2.0.0 `vae_encode_tiled`).
    """
    image = rgb_image(image, "image")  # RGBA -> RGB, gray -> RGB; empty and NaN/Inf images refused
    check_sd_vae(vae, "DiffBIR")
    h, w = image.shape[1:3]
    pixels = pad_to_multiple(image.movedim(-1, 1).float(), CONDITION_PAD)
    latent = encode_pixels(vae, pixels, tile_size, tile_stride)
    return latent.float() * LATENT_SCALE, (h, w)
