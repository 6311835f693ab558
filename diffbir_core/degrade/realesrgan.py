"""Real-ESRGAN second-order degradation (spec E.2, DiffBIR ``dataset/realesrgan.py`` +
``dataset/batch_transform.py``).

draw, in the official order: kernel1, kernel2, final sinc (dataset side); then resize1 (up/down/keep,
scale, mode), noise1 (Gaussian with p 0.5 else Poisson; gray with p 0.4), JPEG1, second-blur coin,
stage-2 scale, resize2, noise2, order coin (sinc-then-JPEG with p 0.5), final resize mode, JPEG2.

apply: [USM on HQ] -> blur k1 -> resize by scale1 -> noise1 -> clip -> JPEG1 -> [blur k2] -> resize
to ``int(size / stage2_scale) * scale2`` -> noise2 -> either (resize to size/stage2_scale, sinc, clip,
JPEG2) or (clip, JPEG2, resize, sinc) -> bicubic back to the HQ size -> round to 8 bit, clip.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch

from . import noise as _noise
from .filtering import filter2d
from .jpeg import jpeg_roundtrip
from .kernels import choose, draw_final_sinc, draw_realesrgan_kernel, make_kernel
from .presets import RESIZE_MODES
from .resize import resize_by, resize_to

Range = Tuple[float, float]


def _draw_resize(rng: np.random.Generator, probs, r: Range) -> dict:
    updown = choose(rng, ("up", "down", "keep"), probs)
    if updown == "up":
        scale = float(rng.uniform(1.0, r[1]))
    elif updown == "down":
        scale = float(rng.uniform(r[0], 1.0))
    else:
        scale = 1.0
    mode = RESIZE_MODES[int(rng.integers(len(RESIZE_MODES)))]
    return {"updown": updown, "scale": scale, "mode": mode}


def _draw_noise(rng: np.random.Generator, gaussian_prob: float, sigma: Range, poisson: Range, gray_prob: float) -> dict:
    if rng.random() < gaussian_prob:
        return _noise.draw_gaussian(rng, sigma, gray_prob)
    return _noise.draw_poisson(rng, poisson, gray_prob)


def _draw_quality(rng: np.random.Generator, r: Range) -> int:
    # DiffJPEG takes the float quality; libjpeg needs an integer: round to the nearest
    return max(1, min(100, int(round(float(rng.uniform(r[0], r[1]))))))


def draw(rng: np.random.Generator, ranges: Dict[str, Range], s: dict) -> dict:
    sizes = s["kernel_sizes"]
    kernel1 = draw_realesrgan_kernel(rng, sizes, s["sinc_prob"], s["kernels"], ranges["blur_sigma"], ranges["betag"], ranges["betap"])
    kernel2 = draw_realesrgan_kernel(rng, sizes, s["sinc_prob2"], s["kernels"], ranges["blur_sigma2"], ranges["betag2"], ranges["betap2"])
    sinc = draw_final_sinc(rng, sizes, s["final_sinc_prob"])
    stage1 = {
        "kernel": kernel1,
        "resize": _draw_resize(rng, s["resize_prob"], ranges["resize_scale"]),
        "noise": _draw_noise(rng, s["gaussian_noise_prob"], ranges["noise_sigma"], ranges["poisson_scale"], s["gray_noise_prob"]),
        "jpeg_quality": _draw_quality(rng, ranges["jpeg_quality"]),
    }
    blur2 = bool(rng.random() < s["second_blur_prob"])
    stage2_scale = float(rng.uniform(*ranges["stage2_scale"]))
    resize2 = _draw_resize(rng, s["resize_prob2"], ranges["resize_scale2"])
    noise2 = _draw_noise(rng, s["gaussian_noise_prob2"], ranges["noise_sigma2"], ranges["poisson_scale2"], s["gray_noise_prob2"])
    sinc_first = bool(rng.random() < s["sinc_then_jpeg_prob"])
    final_mode = RESIZE_MODES[int(rng.integers(len(RESIZE_MODES)))]
    stage2 = {
        "blur": blur2,
        "kernel": kernel2,
        "scale": stage2_scale,
        "resize": resize2,
        "noise": noise2,
        "sinc_then_jpeg": sinc_first,
        "final_resize_mode": final_mode,
        "sinc_kernel": sinc,
        "jpeg_quality": _draw_quality(rng, ranges["jpeg_quality2"]),
    }
    return {"stage1": stage1, "stage2": stage2}


def stage2_size(h: int, w: int, scale: float) -> Tuple[int, int]:
    return max(1, int(h / scale)), max(1, int(w / scale))


def apply(hq: torch.Tensor, p: dict) -> torch.Tensor:
    """``hq``: ``[1, 3, H, W]`` float32 in [0, 1] (already sharpened if requested) -> LQ, same shape."""
    s1, s2 = p["stage1"], p["stage2"]
    ori_h, ori_w = hq.shape[-2:]
    # ---- first order
    out = filter2d(hq, make_kernel(s1["kernel"]))
    out = resize_by(out, float(s1["resize"]["scale"]), s1["resize"]["mode"])
    out = _noise.add_noise(out, s1["noise"])
    out = jpeg_roundtrip(torch.clamp(out, 0, 1), int(s1["jpeg_quality"]))
    # ---- second order
    if s2["blur"]:
        out = filter2d(out, make_kernel(s2["kernel"]))
    sh, sw = stage2_size(ori_h, ori_w, float(s2["scale"]))
    sc = float(s2["resize"]["scale"])
    out = resize_to(out, (int(sh * sc), int(sw * sc)), s2["resize"]["mode"])
    out = _noise.add_noise(out, s2["noise"])
    sinc = s2["sinc_kernel"]
    if s2["sinc_then_jpeg"]:
        out = resize_to(out, (sh, sw), s2["final_resize_mode"])
        if sinc is not None:
            out = filter2d(out, make_kernel(sinc))
        out = jpeg_roundtrip(torch.clamp(out, 0, 1), int(s2["jpeg_quality"]))
    else:
        out = jpeg_roundtrip(torch.clamp(out, 0, 1), int(s2["jpeg_quality"]))
        out = resize_to(out, (sh, sw), s2["final_resize_mode"])
        if sinc is not None:
            out = filter2d(out, make_kernel(sinc))
    if float(s2["scale"]) != 1.0:
        out = resize_to(out, (ori_h, ori_w), "bicubic")
    # official: if stage2_scale == 1 the size is already the HQ size (int(h / 1) == h)
    return torch.clamp(torch.round(out * 255.0), 0, 255) / 255.0
