"""Stage 1: the official per-pipeline pre-/post-processing around the restoration network, and a tiled runner.

Plain torch; images are NCHW floats in [0, 1]. The network is passed in as ``net_fn(x) -> y`` (y is
``scale`` times larger than x; x's H and W are made multiples of ``size_multiple`` first), so the caller
decides device, dtype and model management.

Pipelines (reference spec A.2, B.3, C.3, H.6, H.7, H.13). ``upscale`` is the user's factor, the "target"
size is what the official code resizes the *final* (stage-2) result to, the "working" size is what it
feeds stage 2 and what `restore` returns:

* ``swinir`` (v1 general/face, v2 face, v2.1 sr/face/denoise): LQ bicubic-upscaled by ``upscale``
  (target = that size: v1 ``ceil``, v2/v2.1 ``int()``); short edge < 512 -> short edge to 512 (v1: PIL
  bicubic with ``ceil`` per side, v2/v2.1: torch bicubic antialias with ``int()`` long side); zero-pad
  bottom/right to a multiple of 64; network; crop the padding.
* ``bsrnet`` (v2 sr): network on the raw LQ (x4); target = ``int(h*upscale), int(w*upscale)``; if
  min(target) < 512 the official resizes the x4 output's short edge to 512 (the working size then differs
  from the target), otherwise bicubic-antialias resize to the target.
* ``scunet`` (v2 denoise): LQ bicubic-upscaled by ``upscale``; network at that size; short edge < 512 ->
  512 (torch bicubic antialias).

``min_short_edge`` (official: 512) makes that last rule a parameter; 0 turns it off, so the working size
is the exact target (what most ComfyUI graphs want; stage 2 itself works at any multiple of 8).

Differences from the official code (all deliberate, documented here):

* The official resizes with PIL on uint8 images; we get float images. `pil_bicubic_resize` emulates PIL's
  8-bit BICUBIC: torch's antialiased bicubic is PIL's filter (same a=-0.5 kernel, same support scaling,
  same border renormalisation; equal to PIL's float mode within 1e-5), run as PIL does, horizontal pass
  then vertical pass, each rounded half-up to 1/255 and clipped to [0, 1] (``quantize=False`` keeps float
  precision and only clips). Measured against Pillow on uint8 inputs: equal except +-1/255 on < 0.1 % of
  pixels (PIL's fixed-point coefficients). The official's own uint8 conversion of the input
  (``x*255 -> uint8``) is not repeated: a float input stays as precise as it came.
* ``bsrnet``/``scunet`` have no v1 form; with version "v1" they use v1's ``ceil`` for the pre-upscale and
  target, and v2's torch resize after the network.
* `run_tiled` blends like the official ``make_tiled_fn`` (gaussian weights of the output tile, grid with a
  final tile flush with the border, per-pixel normalisation), but also accepts images smaller than a tile
  (one clamped tile), rounds the tile down to the network's size multiple, and retries on the memory
  planner's smaller grids after an out-of-memory error (`memory.run_with_fallback`, as every stage does).
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .memory import run_with_fallback
from .padding import pad_to_multiple, pad_to_size
from .tiling import blend_tiles, sliding_windows

log = logging.getLogger(__name__)

PIPELINES = ("swinir", "bsrnet", "scunet")
VERSIONS = ("v1", "v2", "v2.1")
OFFICIAL_MIN_SHORT_EDGE = 512
SWINIR_PAD_MULTIPLE = 64  # official pad_to_multiples_of(x, 64) before the stage-1 SwinIR
DEFAULT_MIN_TILE = 128  # OOM fallback floor (ComfyUI's ImageUpscaleWithModel stops below 128 too)

NetFn = Callable[[torch.Tensor], torch.Tensor]
TileCallback = Callable[[int, int], None]


# --------------------------------------------------------------------------------------------- sizes


def _check_version(version: str) -> None:
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")


def _check_pipeline(pipeline: str) -> None:
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline must be one of {PIPELINES}, got {pipeline!r}")


def upscaled_size(h: int, w: int, upscale: float, version: str) -> tuple[int, int]:
    """(H, W) after the official bicubic pre-upscale: v1 ``math.ceil(x*s)``, v2/v2.1 ``int(x*s)``."""
    _check_version(version)
    if upscale <= 0:
        raise ValueError(f"upscale must be positive, got {upscale}")
    rnd = math.ceil if version == "v1" else int
    return max(1, rnd(h * upscale)), max(1, rnd(w * upscale))


def short_edge_size(h: int, w: int, size: int, version: str) -> tuple[int, int]:
    """(H, W) after resizing the short edge to `size` (callers apply it only when short edge < size).

    v1 ``auto_resize``: r = size/short, ``ceil(x*r)`` per side (can give size+1 through float error, as
    officially). v2/v2.1 ``resize_short_edge_to``: the short side is exactly `size`, the long side
    ``int(long*(size/short))``.
    """
    _check_version(version)
    if version == "v1":
        r = size / min(h, w)
        return math.ceil(h * r), math.ceil(w * r)
    if h == w:
        return size, size
    if h < w:
        return size, int(w * (size / h))
    return int(h * (size / w)), size


@dataclass(frozen=True)
class Stage1Plan:
    """Sizes (H, W) of one stage-1 run; see the module docstring for the pipelines."""

    pipeline: str
    version: str
    input_size: tuple[int, int]  # the LQ
    net_input_size: tuple[int, int]  # what the network sees, before padding to the size multiple
    padded_size: tuple[int, int]  # net input after the pipeline's zero padding (SwinIR: multiple of 64)
    working_size: tuple[int, int]  # the stage-1 result (fed to stage 2)
    target_size: tuple[int, int]  # the official final output size (LQ x upscale)


def plan(h: int, w: int, pipeline: str, upscale: float, version: str = "v2.1",
         min_short_edge: int = OFFICIAL_MIN_SHORT_EDGE, scale: int = 1, pad_multiple: int = 1) -> Stage1Plan:
    """The sizes the official pipeline goes through for an h x w LQ (no tensor work).

    `scale` is the network's output/input ratio (4 for BSRNet), `pad_multiple` the network's size multiple
    (the SwinIR pipeline pads to a multiple of lcm(64, pad_multiple)).
    """
    _check_pipeline(pipeline)
    _check_version(version)
    if min_short_edge < 0:
        raise ValueError(f"min_short_edge must be >= 0 (0 = off), got {min_short_edge}")
    target = upscaled_size(h, w, upscale, version)
    if pipeline == "swinir":
        x = target
        if min_short_edge and min(x) < min_short_edge:
            x = short_edge_size(*x, min_short_edge, version)
        m = math.lcm(SWINIR_PAD_MULTIPLE, max(1, pad_multiple))
        padded = (-(-x[0] // m) * m, -(-x[1] // m) * m)
        working = (x[0] * scale, x[1] * scale)
        return Stage1Plan(pipeline, version, (h, w), x, padded, working, target)
    if pipeline == "bsrnet":
        out = (h * scale, w * scale)
        if min_short_edge and min(target) < min_short_edge:
            working = short_edge_size(*out, min_short_edge, "v2")
        else:
            working = target
        return Stage1Plan(pipeline, version, (h, w), (h, w), (h, w), working, target)
    # scunet
    out = (target[0] * scale, target[1] * scale)
    working = short_edge_size(*out, min_short_edge, "v2") if min_short_edge and min(out) < min_short_edge else out
    return Stage1Plan(pipeline, version, (h, w), target, target, working, target)


# --------------------------------------------------------------------------------------------- resizing


def bicubic_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torch bicubic antialias resize (the official v2/v2.1 ``F.interpolate(..., antialias=True)``)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False, antialias=True)


def pil_bicubic_resize(x: torch.Tensor, size: tuple[int, int], quantize: bool = True) -> torch.Tensor:
    """PIL ``Image.resize(..., BICUBIC)`` of an 8-bit RGB image, on a float NCHW tensor in [0, 1].

    Horizontal pass then vertical pass (as PIL), each skipped when that side keeps its size, each rounded
    half-up to 1/255 (``quantize``) and clipped to [0, 1] like PIL's 8-bit buffers.
    """
    h, w = x.shape[-2:]
    H, W = size
    if (H, W) == (h, w):
        return x

    def finish(t: torch.Tensor) -> torch.Tensor:
        if quantize:
            return torch.floor(t * 255 + 0.5).clamp_(0, 255).div_(255)
        return t.clamp(0, 1)

    if W != w:
        x = finish(F.interpolate(x, size=(h, W), mode="bicubic", align_corners=False, antialias=True))
    if H != h:
        x = finish(F.interpolate(x, size=(H, W), mode="bicubic", align_corners=False, antialias=True))
    return x


# --------------------------------------------------------------------------------------------- tiling


def _default_on_oom() -> None:
    gc.collect()  # device caches are the host's to release: it passes its own on_oom (ComfyUI: soft_empty_cache)


def _round_tile(tile: int, multiple: int) -> int:
    multiple = max(1, multiple)
    return max(multiple, tile // multiple * multiple)


def effective_tile(tile: int, stride: int, size_multiple: int = 1) -> int:
    """The tile side `run_tiled` uses: `tile` rounded down to the size multiple (0 = untiled).

    Raises ValueError naming both inputs when the stride is not positive or exceeds that tile (gaps).
    """
    if tile < 0:
        raise ValueError(f"tile_size must be >= 0, got {tile}")
    if tile == 0:
        return 0
    if stride <= 0:
        raise ValueError(f"tile_stride must be positive, got {stride}")
    t = _round_tile(tile, size_multiple)
    if stride > t:
        rounded = f", rounded down to {t}, a multiple of {size_multiple} that the network needs" if t != tile else ""
        raise ValueError(f"tile_stride ({stride}) must not exceed tile_size ({tile}{rounded}): tiles would leave gaps")
    return t


def tile_count(h: int, w: int, tile: int, stride: int, size_multiple: int = 1) -> int:
    t = effective_tile(tile, stride, size_multiple)
    if t == 0 or (t >= h and t >= w):
        return 1
    return len(sliding_windows(h, w, t, stride))


def _run_once(net_fn: NetFn, x: torch.Tensor, tile: int, stride: int, scale: int, size_multiple: int,
              on_tile: TileCallback | None) -> torch.Tensor:
    h, w = x.shape[-2:]
    if tile == 0 or (tile >= h and tile >= w):
        windows = [(0, h, 0, w)]
    else:
        windows = sliding_windows(h, w, tile, stride)

    def one(y0, y1, x0, x1):
        th, tw = y1 - y0, x1 - x0
        y = net_fn(pad_to_multiple(x[..., y0:y1, x0:x1], size_multiple))
        y = y[..., : th * scale, : tw * scale].to(device=x.device, dtype=torch.float32)
        if y.shape[-2:] != (th * scale, tw * scale):
            raise RuntimeError(f"stage-1 network returned {tuple(y.shape[-2:])} for a {th}x{tw} input; "
                               f"expected {th * scale}x{tw * scale} (scale {scale})")
        return y

    def after_previous(i, n):  # `on_tile` reports tile i of n (1-based) once it is done
        if i and on_tile is not None:
            on_tile(i, n)

    out = blend_tiles(windows, one, (h * scale, w * scale), scale, dtype=torch.float32, on_tile=after_previous)
    if on_tile is not None:
        on_tile(len(windows), len(windows))
    return out


def run_tiled(net_fn: NetFn, image: torch.Tensor, tile: int, stride: int, scale: int = 1, size_multiple: int = 1,
              on_tile: TileCallback | None = None, min_tile: int = DEFAULT_MIN_TILE,
              on_oom: Callable[[], None] | None = None) -> torch.Tensor:
    """Run `net_fn` over `image` (N,C,H,W) in gaussian-blended overlapping tiles; float32 result at `scale`.

    * ``tile`` 0 = one pass over the whole image; a tile larger than the image is one (clamped) tile;
      otherwise the tile is rounded down to a multiple of `size_multiple`, and the tiles start every `stride`
      pixels (the official unit: 512 px tiles, stride 256), which must not exceed the rounded tile.
    * Each tile is zero-padded bottom/right to `size_multiple`, and its output cropped back.
    * ``on_tile(i, n)`` runs after tile i of n (1-based): report progress / raise to cancel.
    * On an out-of-memory error the whole image restarts on the next smaller grid of the memory planner
      (`memory.run_with_fallback`, the fallback of every stage), down to `min_tile`; below that a MemoryError
      names the stage and the sizes tried.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be N,C,H,W, got shape {tuple(image.shape)}")
    h, w = image.shape[-2:]
    size_multiple = max(1, int(size_multiple))
    t = effective_tile(tile, stride, size_multiple)
    if t >= h and t >= w:
        t = 0  # one clamped tile is the whole image

    def attempt(side: int, side_stride: int) -> torch.Tensor:
        return _run_once(net_fn, image, side, side_stride, scale, size_multiple, on_tile)

    return run_with_fallback("stage1", attempt, t, stride if t else 0, h, w,
                             release_memory=on_oom or _default_on_oom, log=log.warning,
                             min_tile=max(int(min_tile), size_multiple))


# --------------------------------------------------------------------------------------------- pipelines


@dataclass
class Stage1Result:
    image: torch.Tensor  # N,C,H,W float32 at the working size
    plan: Stage1Plan


def restore(net_fn: NetFn, image: torch.Tensor, pipeline: str, upscale: float, version: str = "v2.1",
            min_short_edge: int = OFFICIAL_MIN_SHORT_EDGE, scale: int = 1, size_multiple: int = 1,
            tile: int = 0, stride: int = 0, on_tile: TileCallback | None = None,
            min_tile: int = DEFAULT_MIN_TILE, quantize: bool = True,
            on_oom: Callable[[], None] | None = None) -> Stage1Result:
    """The official stage-1 of `pipeline` on `image` (N,C,H,W float in [0,1]); never modifies `image`.

    Returns the stage-1 image at the working size (not clamped, as officially) and the plan of sizes.
    `quantize` only concerns the PIL-emulated resizes (see `pil_bicubic_resize`); `on_oom` releases the
    device's cached memory before an out-of-memory retry (see `run_tiled`).
    """
    if image.ndim != 4:
        raise ValueError(f"image must be N,C,H,W, got shape {tuple(image.shape)}")
    h, w = image.shape[-2:]
    p = plan(h, w, pipeline, upscale, version, min_short_edge, scale, size_multiple)
    x = image.to(torch.float32, copy=True)  # the network may work in place; the caller's tensor stays intact
    run = {"tile": tile, "stride": stride, "scale": scale, "size_multiple": size_multiple, "on_tile": on_tile,
           "min_tile": min_tile, "on_oom": on_oom}

    if pipeline == "swinir":
        x = pil_bicubic_resize(x, p.target_size, quantize)
        if p.net_input_size != p.target_size:
            if version == "v1":
                x = pil_bicubic_resize(x, p.net_input_size, quantize)
            else:
                x = bicubic_resize(x, p.net_input_size)
        x = pad_to_size(x, *p.padded_size)
        y = run_tiled(net_fn, x, **run)
        y = y[..., : p.working_size[0], : p.working_size[1]]
    elif pipeline == "bsrnet":
        y = run_tiled(net_fn, x, **run)
        y = bicubic_resize(y, p.working_size)
    else:  # scunet
        x = pil_bicubic_resize(x, p.net_input_size, quantize)
        y = run_tiled(net_fn, x, **run)
        y = bicubic_resize(y, p.working_size)
    if tuple(y.shape[-2:]) != p.working_size:  # pragma: no cover - guards the plan/ops agreement
        raise AssertionError(f"stage 1 produced {tuple(y.shape[-2:])}, planned {p.working_size}")
    return Stage1Result(y.contiguous(), p)
