"""Controlled, repeatable image degradations (DiffBIR training pipelines) and quality metrics.

Pure torch / numpy / pillow; no ComfyUI imports. See ``pipeline`` for the public API:
``draw_params(preset, rng, overrides) -> params`` and ``apply(image, params) -> (lq, hq)``.
"""

from .metrics import psnr, psnr_batch, ssim, ssim_batch
from .pipeline import (
    FORMAT,
    apply,
    apply_batch,
    degrade_batch,
    draw_params,
    make_rng,
    params_from_json,
    params_to_json,
    validate_params,
)
from .presets import OVERRIDE_KEYS, PRESET_NAMES, PRESETS, RANGE_INFO, parse_range, resolve_ranges

__all__ = [
    "FORMAT",
    "OVERRIDE_KEYS",
    "PRESETS",
    "PRESET_NAMES",
    "RANGE_INFO",
    "apply",
    "apply_batch",
    "degrade_batch",
    "draw_params",
    "make_rng",
    "params_from_json",
    "params_to_json",
    "parse_range",
    "psnr",
    "psnr_batch",
    "resolve_ranges",
    "ssim",
    "ssim_batch",
    "validate_params",
]
