"""Colour correction of the stage-2 result against the stage-1 output (official, from StableSR).

Diffusion tends to shift colours; both fixes keep the generated detail and take the
colour statistics / low frequencies from the reference (the stage-1 output, not the LQ).
Images are NCHW floats in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

WAVELET_LEVELS = 5


def wavelet_blur(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Dilated 3x3 binomial blur ([1,2,1] outer [1,2,1] / 16), replicate padding."""
    k = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    kernel = (torch.outer(k, k) / 16).expand(x.shape[1], 1, 3, 3)
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(x, kernel, groups=x.shape[1], dilation=radius)


def wavelet_decomposition(x: torch.Tensor, levels: int = WAVELET_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low): low is the last blur level (radius 2**(levels-1)); high = x - low."""
    high = torch.zeros_like(x)
    low = x
    for i in range(levels):
        blurred = wavelet_blur(low, 2**i)
        high = high + (low - blurred)
        low = blurred
    return high, low


def wavelet_reconstruction(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """High frequencies of `content` (the diffusion result) + low frequencies of `style` (stage 1)."""
    content_high, _ = wavelet_decomposition(content)
    _, style_low = wavelet_decomposition(style)
    return content_high + style_low


def adain(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-image, per-channel mean/std transfer; std from the unbiased variance + eps as official."""
    b, c = content.shape[:2]
    cf = content.reshape(b, c, -1)
    sf = style.reshape(b, c, -1)
    c_mean, c_std = cf.mean(-1, keepdim=True), (cf.var(-1, keepdim=True) + eps).sqrt()
    s_mean, s_std = sf.mean(-1, keepdim=True), (sf.var(-1, keepdim=True) + eps).sqrt()
    return ((cf - c_mean) / c_std * s_std + s_mean).reshape(content.shape)


COLOR_FIXES = {"wavelet": wavelet_reconstruction, "adain": adain, "none": lambda content, style: content}
METHODS = tuple(COLOR_FIXES)  # wavelet (the official default) first


def check_method(method: str) -> None:
    if method not in COLOR_FIXES:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def color_fix(content: torch.Tensor, style: torch.Tensor, method: str = "wavelet") -> torch.Tensor:
    """`content` corrected by `method` against `style`; both NCHW in [0, 1], style resized to content's size."""
    check_method(method)
    if content.shape[-2:] != style.shape[-2:]:
        # The official code fixes at the working resolution; resize the reference so a
        # user can pass the stage-1 image at any size.
        style = F.interpolate(style, size=content.shape[-2:], mode="bicubic", align_corners=False, antialias=True)
    return COLOR_FIXES[method](content, style)


def color_fix_decoded(decoded: torch.Tensor, cond_img01: torch.Tensor, method: str = "wavelet") -> torch.Tensor:
    """The official pipelines' last step: the VAE output (~[-1, 1]) brought to [0, 1] and colour-fixed against
    the stage-1 image `cond_img01` (not clamped: the pipelines clamp when they convert to 8 bits)."""
    return color_fix((decoded + 1) / 2, cond_img01, method)
