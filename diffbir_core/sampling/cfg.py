"""The guidance scale of one model call: the official rescaled CFG (`get_cfg_scale`), shared by both stage-2 engines.

The DiffBIR Sampler sets ComfyUI's guider to this scale per call (`nodes/host/model_function.py`); the reference
denoiser combines its own cond/uncond outputs with it (`reference/denoiser.py`).
"""

from __future__ import annotations

import math

import torch


def rescales_any_cfg(sampler: str) -> bool:
    """Whether `sampler` rescales cfg whenever cfg != 1: the official DPM-Solver wrapper (dpm++_m2) does, the
    other samplers' `get_cfg_scale` only for cfg > 1."""
    return sampler == "dpm++_m2"


def rescaled_cfg(cfg_scale: float, model_t, rescale: bool, rescale_any_cfg: bool = False):
    """The official `get_cfg_scale`: ramps from 1 at t~999 to 1 + cfg at t = 0 when enabled.

    A float tensor timestep (DPM-Solver's continuous time) is evaluated in float32 torch
    arithmetic like the official DPM-Solver wrapper; an integer one in Python floats.
    """
    if rescale and (cfg_scale > 1 or (rescale_any_cfg and cfg_scale != 1)):
        if torch.is_tensor(model_t) and model_t.is_floating_point():
            t = model_t.reshape(-1)[:1]
            return 1 + cfg_scale * ((1 - torch.cos(math.pi * ((1000 - t) / 1000) ** 5.0)) / 2)
        return 1 + cfg_scale * ((1 - math.cos(math.pi * ((1000 - float(model_t)) / 1000) ** 5.0)) / 2)
    return cfg_scale
