"""Resizing as the official pipelines do it, plus the official HQ centre crop.

* CodeFormer pipeline: ``cv2.resize(..., INTER_LINEAR)`` == ``F.interpolate(mode="bilinear",
  align_corners=False)`` without antialiasing (same half-pixel mapping and edge clamping).
* Real-ESRGAN pipeline: ``F.interpolate`` with ``area`` / ``bilinear`` / ``bicubic`` exactly as
  ``RealESRGANBatchTransform`` calls it (scale_factor for the first order, explicit sizes after).
* ``center_crop``: ``center_crop_arr`` of the official datasets (BOX halving while the short side is
  at least twice the target, BICUBIC to the target short side, centre crop), done by PIL on float
  ("F") channels so the HQ is not quantised.
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MODES = ("area", "bilinear", "bicubic")


def _kw(mode: str) -> dict:
    if mode not in MODES:
        raise ValueError(f"unknown resize mode {mode!r}; expected one of {', '.join(MODES)}")
    return {} if mode == "area" else {"align_corners": False}


def resize_to(img: torch.Tensor, size: Tuple[int, int], mode: str) -> torch.Tensor:
    """``F.interpolate(img, size=size, mode=mode)`` on ``[N, C, H, W]``; sizes below 1 become 1."""
    size = (max(1, int(size[0])), max(1, int(size[1])))
    kw = _kw(mode)
    if tuple(img.shape[-2:]) == size:
        # identity for all three modes at scale 1 (half-pixel centres map onto themselves)
        return img.clone()
    return F.interpolate(img, size=size, mode=mode, **kw)


def resize_by(img: torch.Tensor, scale: float, mode: str) -> torch.Tensor:
    """``F.interpolate(img, scale_factor=scale, mode=mode)`` (output floor(size*scale); the sampling
    grid uses ``scale`` itself, as in the official first-order resize). Falls back to an explicit
    size of 1 where floor(size*scale) would be 0 (images far smaller than the official 512^2)."""
    h, w = img.shape[-2:]
    if math.floor(h * scale) < 1 or math.floor(w * scale) < 1:
        return resize_to(img, (math.floor(h * scale), math.floor(w * scale)), mode)
    return F.interpolate(img, scale_factor=scale, mode=mode, **_kw(mode))


def resize_linear(img: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """``cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)`` on ``[N, C, H, W]``."""
    return resize_to(img, size, "bilinear")


def center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """Official ``center_crop_arr`` on an ``[H, W, C]`` float image -> ``[size, size, C]``."""
    h, w, c = img.shape
    if size <= 0 or (h == size and w == size):
        return img
    chans = [Image.fromarray(np.ascontiguousarray(img[..., i].detach().cpu().numpy(), dtype=np.float32)) for i in range(c)]
    while min(chans[0].size) >= 2 * size:
        chans = [ch.resize(tuple(x // 2 for x in ch.size), resample=Image.BOX) for ch in chans]
    scale = size / min(chans[0].size)
    new = tuple(round(x * scale) for x in chans[0].size)
    chans = [ch.resize(new, resample=Image.BICUBIC) for ch in chans]
    arr = np.stack([np.asarray(ch, dtype=np.float32) for ch in chans], axis=-1)
    cy = (arr.shape[0] - size) // 2
    cx = (arr.shape[1] - size) // 2
    arr = arr[cy : cy + size, cx : cx + size]
    # PIL's bicubic overshoots; the official uint8 path saturates at [0, 255]
    return torch.from_numpy(np.clip(arr, 0.0, 1.0).copy()).to(img.dtype)
