"""Presets of the two DiffBIR training degradations and parsing of range overrides.

The numbers are those of the official training configs (spec section E):

* ``general`` / ``face``: the CodeFormer-style single-order pipeline (E.1), ``general`` as in
  ``configs/train/train_stage1.yaml`` / ``train_stage2.yaml``, ``face`` as in v1 ``face_train.yaml``.
* ``realesrgan`` / ``realesrgan_v2.1``: the Real-ESRGAN second-order pipeline (E.2) as in
  ``configs/train/train_stage2_v2.1.yaml``; the v2.1 preset also USM-sharpens the HQ (``use_sharpener``).

A *range* is a ``(low, high)`` pair of floats; values are drawn uniformly from it. Every range can be
overridden by the user with a short string such as ``"0.5-4"`` (see :func:`parse_range`).
"""

from __future__ import annotations

import math
import re
from typing import Dict, Mapping, Optional, Tuple

Range = Tuple[float, float]

# (name, probability) of BasicSR's ``random_mixed_kernels`` kernel families.
CODEFORMER_KERNELS = (("iso", 0.5), ("aniso", 0.5))
REALESRGAN_KERNELS = (
    ("iso", 0.45),
    ("aniso", 0.25),
    ("generalized_iso", 0.12),
    ("generalized_aniso", 0.03),
    ("plateau_iso", 0.12),
    ("plateau_aniso", 0.03),
)
# Real-ESRGAN draws each kernel size uniformly from the odd sizes 7..21.
REALESRGAN_KERNEL_SIZES = tuple(2 * v + 1 for v in range(3, 11))
RESIZE_MODES = ("area", "bilinear", "bicubic")

# What each overridable range means, and the values it may take: key -> (meaning, low bound,
# low bound inclusive?, high bound or None). Used for tooltips and error messages.
RANGE_INFO: Dict[str, Tuple[str, float, bool, Optional[float]]] = {
    "blur_sigma": ("blur kernel sigma in pixels (first blur for Real-ESRGAN)", 0.0, False, None),
    "downsample": ("downsample factor (CodeFormer pipeline; values below 1 upsample)", 0.0, False, None),
    "noise_sigma": ("Gaussian noise sigma on the 0-255 scale (first order for Real-ESRGAN)", 0.0, True, None),
    "jpeg_quality": ("JPEG quality (first order for Real-ESRGAN)", 1.0, True, 100.0),
    "betag": ("shape beta of generalized-Gaussian kernels (first blur)", 0.0, False, None),
    "betap": ("shape beta of plateau kernels (first blur)", 0.0, False, None),
    "resize_scale": ("first-order resize scale: down draws U(low, 1), up draws U(1, high)", 0.0, False, None),
    "poisson_scale": ("Poisson noise scale (first order)", 0.0, True, None),
    "blur_sigma2": ("blur kernel sigma in pixels (second blur)", 0.0, False, None),
    "betag2": ("shape beta of generalized-Gaussian kernels (second blur)", 0.0, False, None),
    "betap2": ("shape beta of plateau kernels (second blur)", 0.0, False, None),
    "resize_scale2": ("second-order resize scale relative to size/stage2_scale", 0.0, False, None),
    "noise_sigma2": ("Gaussian noise sigma on the 0-255 scale (second order)", 0.0, True, None),
    "poisson_scale2": ("Poisson noise scale (second order)", 0.0, True, None),
    "jpeg_quality2": ("JPEG quality (second order)", 1.0, True, 100.0),
    "stage2_scale": ("overall downscale of the second order (LQ is that much smaller before the final resize)", 0.0, False, None),
}
# Ranges whose draw splits at 1 (official: down U(low, 1) / up U(1, high)); they must contain 1.
RANGES_CONTAINING_ONE = ("resize_scale", "resize_scale2")

_CODEFORMER_SETTINGS = {"kernel_size": 41, "kernels": CODEFORMER_KERNELS}

_REALESRGAN_RANGES: Dict[str, Range] = {
    "blur_sigma": (0.2, 3.0),
    "betag": (0.5, 4.0),
    "betap": (1.0, 2.0),
    "resize_scale": (0.15, 1.5),
    "noise_sigma": (1.0, 30.0),
    "poisson_scale": (0.05, 3.0),
    "jpeg_quality": (30.0, 95.0),
    "blur_sigma2": (0.2, 1.5),
    "betag2": (0.5, 4.0),
    "betap2": (1.0, 2.0),
    "resize_scale2": (0.3, 1.2),
    "noise_sigma2": (1.0, 25.0),
    "poisson_scale2": (0.05, 2.5),
    "jpeg_quality2": (30.0, 95.0),
    "stage2_scale": (4.0, 4.0),
}
_REALESRGAN_SETTINGS = {
    "kernels": REALESRGAN_KERNELS,
    "kernel_sizes": REALESRGAN_KERNEL_SIZES,
    "sinc_prob": 0.1,
    "sinc_prob2": 0.1,
    "final_sinc_prob": 0.8,
    "resize_prob": (0.2, 0.7, 0.1),  # up, down, keep
    "resize_prob2": (0.3, 0.4, 0.3),
    "gaussian_noise_prob": 0.5,
    "gaussian_noise_prob2": 0.5,
    "gray_noise_prob": 0.4,
    "gray_noise_prob2": 0.4,
    "second_blur_prob": 0.8,
    "sinc_then_jpeg_prob": 0.5,
}

PRESETS: Dict[str, dict] = {
    "general": {
        "pipeline": "codeformer",
        "description": "CodeFormer-style single order, DiffBIR general training (blur 0.1-12, down 1-12, noise 0-15, JPEG 30-100)",
        "ranges": {"blur_sigma": (0.1, 12.0), "downsample": (1.0, 12.0), "noise_sigma": (0.0, 15.0), "jpeg_quality": (30.0, 100.0)},
        "settings": dict(_CODEFORMER_SETTINGS),
        "sharpen_hq": False,
    },
    "face": {
        "pipeline": "codeformer",
        "description": "CodeFormer-style single order, DiffBIR v1 face training (blur 0.1-10, down 0.8-8, noise 0-20, JPEG 60-100)",
        "ranges": {"blur_sigma": (0.1, 10.0), "downsample": (0.8, 8.0), "noise_sigma": (0.0, 20.0), "jpeg_quality": (60.0, 100.0)},
        "settings": dict(_CODEFORMER_SETTINGS),
        "sharpen_hq": False,
    },
    "realesrgan": {
        "pipeline": "realesrgan",
        "description": "Real-ESRGAN second order, DiffBIR v1 general / v2.1 training ranges, HQ not sharpened",
        "ranges": dict(_REALESRGAN_RANGES),
        "settings": dict(_REALESRGAN_SETTINGS),
        "sharpen_hq": False,
    },
    "realesrgan_v2.1": {
        "pipeline": "realesrgan",
        "description": "Real-ESRGAN second order with USM-sharpened HQ, exactly as DiffBIR v2.1 trains",
        "ranges": dict(_REALESRGAN_RANGES),
        "settings": dict(_REALESRGAN_SETTINGS),
        "sharpen_hq": True,
    },
}
PRESET_NAMES = tuple(PRESETS)
OVERRIDE_KEYS = tuple(RANGE_INFO)

_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_RANGE_RE = re.compile(rf"^\[?\s*({_NUM})\s*(?:-|,|:|\.\.|to)\s*({_NUM})\s*\]?$", re.IGNORECASE)
_SINGLE_RE = re.compile(rf"^({_NUM})$")


def get_preset(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"preset: unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
    return PRESETS[name]


def _fmt(x: float) -> str:
    return f"{x:g}"


def format_range(r: Range) -> str:
    return _fmt(r[0]) if r[0] == r[1] else f"{_fmt(r[0])}-{_fmt(r[1])}"


def parse_range(text, key: str) -> Optional[Range]:
    """Parse one override. ``None``/empty -> ``None`` (use the preset); ``"a-b"``, ``"a,b"``,
    ``"a to b"``, ``"[a, b]"`` -> ``(a, b)``; a single number ``"a"`` -> ``(a, a)`` (fixed value).
    A pair of numbers is also accepted. Raises ValueError naming ``key`` on anything else."""
    if key not in RANGE_INFO:
        raise ValueError(f"unknown override {key!r}; known overrides: {', '.join(OVERRIDE_KEYS)}")
    meaning, lo_bound, lo_inclusive, hi_bound = RANGE_INFO[key]
    if text is None:
        return None
    if isinstance(text, (tuple, list)):
        if len(text) != 2:
            raise ValueError(f"override {key!r}: expected a (low, high) pair, got {text!r}")
        lo, hi = float(text[0]), float(text[1])
        shown = repr(text)
    elif isinstance(text, (int, float)):
        lo = hi = float(text)
        shown = repr(text)
    else:
        s = str(text).strip()
        if not s:
            return None
        shown = repr(s)
        m = _RANGE_RE.match(s)
        if m:
            lo, hi = float(m.group(1)), float(m.group(2))
        else:
            m = _SINGLE_RE.match(s)
            if not m:
                raise ValueError(
                    f"override {key!r} ({meaning}): cannot read {shown} as a range. Write 'low-high' "
                    f"(e.g. '1-4'), a single number for a fixed value, or leave it empty for the preset."
                )
            lo = hi = float(m.group(1))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"override {key!r}: {shown} is not a finite range")
    if lo > hi:
        raise ValueError(
            f"override {key!r} ({meaning}): low {_fmt(lo)} is greater than high {_fmt(hi)} in {shown}; "
            f"write the smaller number first, e.g. '{_fmt(hi)}-{_fmt(lo)}'."
        )
    if lo < lo_bound or (lo == lo_bound and not lo_inclusive):
        rel = ">=" if lo_inclusive else ">"
        raise ValueError(f"override {key!r} ({meaning}): values must be {rel} {_fmt(lo_bound)}, got {shown}")
    if hi_bound is not None and hi > hi_bound:
        raise ValueError(f"override {key!r} ({meaning}): values must be <= {_fmt(hi_bound)}, got {shown}")
    if key in RANGES_CONTAINING_ONE and not (lo <= 1.0 <= hi):
        raise ValueError(
            f"override {key!r} ({meaning}): the range must contain 1 (down-scales are drawn from low-1, "
            f"up-scales from 1-high), got {shown}; e.g. '0.5-1.2'."
        )
    return (lo, hi)


def resolve_ranges(preset: str, overrides: Optional[Mapping[str, object]] = None) -> Dict[str, Range]:
    """The preset's ranges with the non-empty overrides applied. An override for a range the preset's
    pipeline does not use is an error (it would silently do nothing)."""
    p = get_preset(preset)
    ranges = dict(p["ranges"])
    for key, text in (overrides or {}).items():
        r = parse_range(text, key)
        if r is None:
            continue
        if key not in ranges:
            users = [n for n, q in PRESETS.items() if key in q["ranges"]]
            raise ValueError(
                f"override {key!r} does not apply to preset {preset!r} ({p['pipeline']} pipeline); it is used by "
                f"{', '.join(users)}. Clear it or pick one of those presets."
            )
        ranges[key] = r
    return ranges
