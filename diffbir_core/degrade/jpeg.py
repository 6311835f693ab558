"""JPEG compression through Pillow (libjpeg), baseline, 4:2:0 chroma subsampling.

Where this differs from the official code:

* CodeFormer pipeline: the official code uses ``cv2.imencode('.jpg', img * 255, [QUALITY, int(q)])``
  on a BGR float image. OpenCV and Pillow both drive libjpeg with the standard IJG quantisation
  tables scaled by quality, 4:2:0 subsampling, no optimisation, the ISLOW DCT and fancy upsampling,
  so the result is the same up to the libjpeg build. Channel order does not matter (both convert to
  YCbCr); float -> uint8 rounds half to even like OpenCV's ``saturate_cast``.
* Real-ESRGAN pipeline: the official code uses ``DiffJPEG`` (a torch re-implementation: zero-pads to
  a multiple of 16, continuous float quality, nearest-neighbour chroma upsampling, float output not
  rounded to 8 bit). We use real JPEG at the quality rounded to an integer, so blocking is the same
  kind but the decoded pixels differ slightly from DiffJPEG's.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def to_uint8(img_hwc: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 with clipping and round-half-even (OpenCV ``saturate_cast``)."""
    return np.rint(np.clip(img_hwc, 0.0, 1.0) * 255.0).astype(np.uint8)


def encode(img_uint8: np.ndarray, quality: int) -> bytes:
    """Baseline JPEG bytes of an ``[H, W, 3]`` uint8 RGB image at integer ``quality`` (1..100)."""
    q = int(quality)
    if not 1 <= q <= 100:
        raise ValueError(f"JPEG quality must be 1..100, got {quality}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img_uint8)).save(buf, format="JPEG", quality=q, subsampling="4:2:0", optimize=False)
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def jpeg_roundtrip(img: torch.Tensor, quality: int) -> torch.Tensor:
    """Compress and decompress every image of ``[N, 3, H, W]`` (clipped to [0, 1] first)."""
    outs = []
    for one in img:
        arr = to_uint8(one.permute(1, 2, 0).to(torch.float64).numpy())
        dec = decode(encode(arr, quality))
        outs.append(torch.from_numpy(dec.astype(np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(outs).to(img.dtype)
