"""Top-level degradation API: draw parameters, apply them, serialise them.

* :func:`draw_params` ``(preset, rng, overrides) -> dict`` makes every random choice with the given
  ``numpy.random.Generator`` and returns a JSON-serialisable dict (noise fields are represented by
  seeds drawn from the same generator).
* :func:`apply` ``(image, params) -> (lq, hq)`` is deterministic: the same params give bit-identical
  output on the same machine and library versions.
* Batches (:func:`degrade_batch`): image ``i`` uses ``Generator(PCG64(seed + i))``, so an image's
  degradation does not depend on its batch neighbours and equals a single-image run with ``seed + i``.

Images are ComfyUI IMAGEs: torch float32 ``[H, W, C]`` (one) / ``[B, H, W, C]`` (batch) in [0, 1], RGB.
"""

from __future__ import annotations

import json
import re
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from . import codeformer, realesrgan
from .kernels import GAUSSIAN_TYPES
from .presets import RESIZE_MODES, get_preset, resolve_ranges
from .resize import center_crop
from .usm import usm_sharpen

FORMAT = "diffbir-degrade/1"
PIPELINES = {"codeformer": codeformer, "realesrgan": realesrgan}
MIN_SIZE = 16


def make_rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(int(seed)))


def draw_params(
    preset: str,
    rng: np.random.Generator,
    overrides: Optional[Mapping[str, object]] = None,
    *,
    sharpen_hq: Optional[bool] = None,
    hq_size: int = 0,
    seed: Optional[int] = None,
) -> dict:
    """Draw one image's degradation parameters.

    ``overrides`` maps range names (see ``presets.RANGE_INFO``) to strings like ``"1-4"`` or pairs;
    empty values keep the preset. ``sharpen_hq`` None keeps the preset's choice. ``hq_size`` > 0 first
    centre-crops the HQ to ``hq_size``^2 like the official datasets (0 keeps the input size). ``seed``
    is only recorded for information."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError("draw_params needs a numpy.random.Generator, e.g. numpy.random.Generator(numpy.random.PCG64(seed))")
    p = get_preset(preset)
    ranges = resolve_ranges(preset, overrides)
    if int(hq_size) < 0:
        raise ValueError(f"hq_size must be 0 (keep the input size) or a positive size, got {hq_size}")
    body = PIPELINES[p["pipeline"]].draw(rng, ranges, p["settings"])
    params = {
        "format": FORMAT,
        "pipeline": p["pipeline"],
        "preset": preset,
        "seed": None if seed is None else int(seed),
        "hq_size": int(hq_size),
        "sharpen_hq": bool(p["sharpen_hq"] if sharpen_hq is None else sharpen_hq),
        "ranges": {k: [float(a), float(b)] for k, (a, b) in ranges.items()},
    }
    params.update(body)
    return params


def _hwc(image: torch.Tensor) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        image = torch.as_tensor(np.asarray(image))
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image: expected an RGB image [H, W, 3] (ComfyUI IMAGE), got shape {tuple(image.shape)}")
    return image.detach().to("cpu", torch.float32)


def apply(image: torch.Tensor, params: dict) -> Tuple[torch.Tensor, torch.Tensor]:
    """Degrade one ``[H, W, 3]`` image with ``params`` -> ``(lq, hq)``, both ``[H', W', 3]`` float32,
    aligned pixel for pixel (``hq`` is the centre-cropped and/or USM-sharpened input, as the official
    training pairs)."""
    validate_params(params)
    img = _hwc(image)
    if params["hq_size"]:
        img = center_crop(img, int(params["hq_size"]))
    h, w = img.shape[:2]
    if h < MIN_SIZE or w < MIN_SIZE:
        raise ValueError(f"image: the degradation needs at least {MIN_SIZE}x{MIN_SIZE} pixels, got {w}x{h}")
    hq = img.clamp(0, 1).permute(2, 0, 1).unsqueeze(0).contiguous()
    if params["sharpen_hq"]:
        hq = usm_sharpen(hq)
    lq = PIPELINES[params["pipeline"]].apply(hq, params)
    return lq[0].permute(1, 2, 0).contiguous(), hq[0].permute(1, 2, 0).contiguous()


def degrade_batch(
    images: torch.Tensor,
    preset: str,
    seed: int,
    overrides: Optional[Mapping[str, object]] = None,
    *,
    sharpen_hq: Optional[bool] = None,
    hq_size: int = 0,
    on_image=None,
) -> Tuple[torch.Tensor, torch.Tensor, List[dict]]:
    """Draw and apply for a ``[B, H, W, 3]`` batch; image ``i`` uses seed ``seed + i``."""
    params = [
        draw_params(preset, make_rng(int(seed) + i), overrides, sharpen_hq=sharpen_hq, hq_size=hq_size, seed=int(seed) + i)
        for i in range(images.shape[0])
    ]
    lq, hq = apply_batch(images, params, on_image=on_image)
    return lq, hq, params


def apply_batch(images: torch.Tensor, params: Sequence[dict], on_image=None) -> Tuple[torch.Tensor, torch.Tensor]:
    if images.ndim != 4:
        raise ValueError(f"image: expected a batch [B, H, W, 3], got shape {tuple(images.shape)}")
    if len(params) != images.shape[0]:
        raise ValueError(f"params: {len(params)} parameter sets for {images.shape[0]} images")
    lqs, hqs = [], []
    for i in range(images.shape[0]):
        lq, hq = apply(images[i], params[i])
        lqs.append(lq)
        hqs.append(hq)
        if on_image is not None:
            on_image(i)
    return torch.stack(lqs), torch.stack(hqs)


# ----------------------------------------------------------------------------------------------
# serialisation and validation


def params_to_json(params: Union[dict, Sequence[dict]]) -> str:
    """One dict for a single image, a list for a batch; exact (Python floats round-trip)."""
    if isinstance(params, (list, tuple)) and len(params) == 1:
        params = params[0]
    text = json.dumps(params, indent=1, allow_nan=False)
    # keep [low, high] pairs on one line
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text)


def params_from_json(text: str, batch_size: int, name: str = "params_json") -> List[dict]:
    """Parse a parameter string for ``batch_size`` images: a single dict applies to every image, a
    list must have one entry per image (or exactly one)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name}: not valid JSON ({e}); paste the 'params' output of a Degrade node, or leave it empty") from None
    items = data if isinstance(data, list) else [data]
    if len(items) == 1:
        items = items * batch_size
    if len(items) != batch_size:
        raise ValueError(
            f"{name}: holds {len(items)} parameter sets but the image batch has {batch_size} images; "
            f"use the params of a run on the same batch size, or a single set for all images"
        )
    for i, p in enumerate(items):
        validate_params(p, name=f"{name}[{i}]" if len(items) > 1 else name)
    return [dict(p) for p in items]


def _need(d, key, types, where):
    if not isinstance(d, dict) or key not in d:
        raise ValueError(f"{where}: missing key {key!r}")
    v = d[key]
    if types is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise ValueError(f"{where}.{key}: expected a number, got {v!r}")
    elif not isinstance(v, types) or (types is int and isinstance(v, bool)):
        raise ValueError(f"{where}.{key}: expected {getattr(types, '__name__', types)}, got {v!r}")
    return v


def _check_kernel(k, where, allow_none=False):
    if k is None and allow_none:
        return
    t = _need(k, "type", str, where)
    size = _need(k, "size", int, where)
    if size < 1 or size % 2 != 1:
        raise ValueError(f"{where}.size: must be a positive odd number, got {size}")
    if t == "sinc":
        _need(k, "omega_c", float, where)
        return
    if t not in GAUSSIAN_TYPES:
        raise ValueError(f"{where}.type: unknown kernel type {t!r}")
    for key in ("sigma_x", "sigma_y"):
        if _need(k, key, float, where) <= 0:
            raise ValueError(f"{where}.{key}: must be > 0")
    _need(k, "theta", float, where)
    if t.startswith(("generalized", "plateau")):
        _need(k, "beta", float, where)


def _check_noise(n, where):
    t = _need(n, "type", str, where)
    if t == "gaussian":
        _need(n, "sigma", float, where)
    elif t == "poisson":
        _need(n, "scale", float, where)
    else:
        raise ValueError(f"{where}.type: expected 'gaussian' or 'poisson', got {t!r}")
    _need(n, "gray", bool, where)
    if not 0 <= _need(n, "seed", int, where):
        raise ValueError(f"{where}.seed: must be >= 0")


def _check_quality(d, key, where):
    q = _need(d, key, int, where)
    if not 1 <= q <= 100:
        raise ValueError(f"{where}.{key}: must be 1..100, got {q}")


def _check_resize(r, where):
    _need(r, "scale", float, where)
    if r["scale"] <= 0:
        raise ValueError(f"{where}.scale: must be > 0")
    if _need(r, "mode", str, where) not in RESIZE_MODES:
        raise ValueError(f"{where}.mode: expected one of {RESIZE_MODES}, got {r['mode']!r}")


def validate_params(p: dict, name: str = "params") -> None:
    """Raise ValueError naming the offending key if ``p`` is not a complete parameter set."""
    if not isinstance(p, dict):
        raise ValueError(f"{name}: expected a JSON object of degradation parameters, got {type(p).__name__}")
    fmt = p.get("format")
    if fmt != FORMAT:
        raise ValueError(f"{name}: format {fmt!r} is not {FORMAT!r}; paste the 'params' output of a Degrade node")
    pipe = _need(p, "pipeline", str, name)
    if pipe not in PIPELINES:
        raise ValueError(f"{name}.pipeline: expected one of {', '.join(PIPELINES)}, got {pipe!r}")
    if _need(p, "hq_size", int, name) < 0:
        raise ValueError(f"{name}.hq_size: must be >= 0")
    _need(p, "sharpen_hq", bool, name)
    if pipe == "codeformer":
        _check_kernel(p.get("kernel"), f"{name}.kernel")
        if _need(p, "downsample", float, name) <= 0:
            raise ValueError(f"{name}.downsample: must be > 0")
        _check_noise(p.get("noise"), f"{name}.noise")
        _check_quality(p, "jpeg_quality", name)
    else:
        s1 = _need(p, "stage1", dict, name)
        s2 = _need(p, "stage2", dict, name)
        w1, w2 = f"{name}.stage1", f"{name}.stage2"
        _check_kernel(s1.get("kernel"), f"{w1}.kernel")
        _check_resize(_need(s1, "resize", dict, w1), f"{w1}.resize")
        _check_noise(_need(s1, "noise", dict, w1), f"{w1}.noise")
        _check_quality(s1, "jpeg_quality", w1)
        _need(s2, "blur", bool, w2)
        _check_kernel(s2.get("kernel"), f"{w2}.kernel")
        if _need(s2, "scale", float, w2) <= 0:
            raise ValueError(f"{w2}.scale: must be > 0")
        _check_resize(_need(s2, "resize", dict, w2), f"{w2}.resize")
        _check_noise(_need(s2, "noise", dict, w2), f"{w2}.noise")
        _need(s2, "sinc_then_jpeg", bool, w2)
        if _need(s2, "final_resize_mode", str, w2) not in RESIZE_MODES:
            raise ValueError(f"{w2}.final_resize_mode: expected one of {RESIZE_MODES}")
        if "sinc_kernel" not in s2:
            raise ValueError(f"{w2}: missing key 'sinc_kernel' (null for none)")
        _check_kernel(s2["sinc_kernel"], f"{w2}.sinc_kernel", allow_none=True)
        _check_quality(s2, "jpeg_quality", w2)
