"""Transparency kept through a restore: the alpha plane resized alongside the restored RGB.

DiffBIR restores RGB only (every network takes three channels). An image with an alpha plane (a transparent
icon, a cut-out) is restored in RGB and its alpha is resized to the restored image's size here and put back:

* the size unchanged (upscale 1): the alpha is returned exactly as given, bit for bit;
* otherwise bilinear interpolation (no overshoot, so alpha stays in [0, 1]; antialiased when shrinking),
  the filter ComfyUI's own "Join Image with Alpha" resizes its mask with.

Conventions: alpha is 1 where opaque. ComfyUI's Load Image gives the inverse, MASK = 1 - alpha (and a 64 x 64
MASK of zeros, i.e. fully opaque, for an image without alpha); `alpha_from_mask` converts.
"""

from __future__ import annotations

import torch


def resize_alpha(alpha: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`alpha` (H, W) or (B, H, W), values in [0, 1], resized to size = (height, width): returned unchanged
    (the same values) when it already has that size, else bilinear, clamped to [0, 1]. Float32, same shape rank."""
    if alpha.ndim not in (2, 3):
        raise ValueError(f"alpha must be (H, W) or (B, H, W), got shape {tuple(alpha.shape)}")
    height, width = (int(v) for v in size)
    if height < 1 or width < 1:
        raise ValueError(f"the size to resize alpha to must be positive, got {height}x{width}")
    if tuple(alpha.shape[-2:]) == (height, width):
        return alpha.float()
    planes = alpha.float().reshape(-1, 1, *alpha.shape[-2:])
    shrinking = height < alpha.shape[-2] or width < alpha.shape[-1]
    resized = torch.nn.functional.interpolate(planes, size=(height, width), mode="bilinear", align_corners=False,
                                              antialias=shrinking)
    return resized.clamp(0.0, 1.0).reshape(*alpha.shape[:-2], height, width)


def alpha_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """ComfyUI's MASK (1 = transparent, as Load Image gives it) -> alpha (1 = opaque).

    A mask read from an 8-bit alpha (every value k / 255) gives back exactly the alpha Load Image read, k / 255:
    plain 1 - mask is one float32 rounding off for 95 of the 256 levels, and Save Image's conversion to 8 bits
    truncates, so those levels would be saved one lower (as the stock Join Image with Alpha saves them)."""
    alpha = 1.0 - mask.float()
    levels = alpha * 255.0
    if bool(((levels - levels.round()).abs() < 1e-3).all()):
        return levels.round() / 255.0
    return alpha


def is_opaque(alpha: torch.Tensor) -> bool:
    """Whether every pixel is fully opaque: such an alpha adds nothing (an image without alpha reads as one)."""
    return bool((alpha >= 1.0).all())


def join_alpha(image: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """RGB `image` (B, H, W, 3) and `alpha` (B or 1, h, w) -> RGBA (B, H, W, 4): the alpha resized to the image
    (`resize_alpha`); one alpha plane serves every image of the batch."""
    if image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(f"image must be RGB (B, H, W, 3), got shape {tuple(image.shape)}")
    if alpha.ndim == 2:
        alpha = alpha[None]
    if alpha.shape[0] not in (1, image.shape[0]):
        raise ValueError(f"{alpha.shape[0]} alpha planes for {image.shape[0]} images: give one, or one per image")
    plane = resize_alpha(alpha, image.shape[1:3]).to(image.device)
    plane = plane.expand(image.shape[0], -1, -1)
    return torch.cat((image.float(), plane[..., None]), dim=-1)
