"""Memory planner: the tile size and stride of every stage from the memory there is, untiled whenever it fits.

A restore has four tiled stages (stage 1, VAE encode, diffusion, VAE decode). Each call on a tile of n image
pixels needs working memory (activations) that grows with n; the whole-image buffers of the tile blend grow
with the image. `plan_stage` picks, for one stage and image size, a grid of tiles whose predicted peak fits
the budget:

    predicted = SAFETY * (cost.fixed + cost.per_pixel * n + cost.per_pixel2 * n^2) * dtype_bytes / 4 + blend buffers

where n is the tile's pixel count (the whole image when untiled) and the budget is the free memory minus the
weights that still have to be loaded. Tiling is only chosen when the untiled call does not fit: tiles cost
time. So a planned grid's tiles are each just large enough to cover the image with a narrow overlap
(`OVERLAP`: 64 px) instead of the official half-tile stride, which evaluates most pixels four times; a 2048
image in 2 x 2 tiles evaluates 1.13x its pixels. An out-of-memory error retries on the next smaller grid.

On the CPU the free memory is the system's RAM: running past it swaps or wakes the kernel's out-of-memory
killer instead of raising an error the fallback could catch, and larger calls are not faster there. So a CPU
plan also keeps each call within `CPU_CALL_BYTES` (2 GiB) unless the user gave an explicit budget
(``--max-memory``): a 512 px restore stays untiled and a 4096 px one peaks little above it.

Among the grids that fit, the plan takes the one of least predicted time (`relative_time`: the pixels the tiles
evaluate, each dearer by the attention that grows with the tile): the largest tile is not the fastest once the
UNet's full-resolution self-attention dominates (a 2080 px diffusion tile spends ~3x a 512 px one's time per
pixel by FLOP count).

The cost table (`COSTS`) holds the measured working memory of our networks at their official (real-size)
configurations, float32, with random weights (activations do not depend on the values). How it was measured:
each stage ran alone in a fresh process on the CPU, one call on a square image of each listed size, and the
working memory is the process's peak resident set size during the call minus its RSS just before it (the
weights already loaded); the fit is exact through the two sizes: quadratic through the origin where the cost
per pixel grows with the size (attention over the whole tile), else linear with a fixed part.
`benchmarks/memory_costs.py` re-measures the table (`--device cuda` measures with torch.cuda.max_memory_allocated
instead) and prints it in this form. The diffusion row is what users run: ComfyUI's SD 2.1 UNet with our
ControlNet (`DiffBIRControl`), one batched cfg-pair call as ComfyUI's `calc_cond_batch` makes it, with the PyTorch
SDPA attention that ComfyUI uses on NVIDIA GPUs and the DiffBIR Sampler hands its UNet on the CPU; ComfyUI's own
sub-quadratic CPU attention (the stock KSampler's there) sizes its chunks to the free memory and takes more
(benchmarks/README.md: ~1.7 GB at 512 px), which the out-of-memory fallback absorbs.

Plain torch/python: the caller passes the free memory (ComfyUI's ``get_free_memory``, or a user budget such as
``--max-memory 6GB``) and the sizes of the weights it still has to load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .tiling import sliding_windows

STAGES = ("stage1", "vae_encode", "diffusion", "vae_decode")
SAFETY = 1.25  # measured peaks vary by a few percent between runs and allocators; plan with a quarter to spare
MIB = 2**20


@dataclass(frozen=True)
class StageCost:
    """Working memory (bytes, float32) of one call on a tile of n image pixels: fixed + per_pixel * n +
    per_pixel2 * n^2."""

    fixed: float
    per_pixel: float
    per_pixel2: float
    measured: str  # what was measured, where, and the sizes of the fit

    def bytes(self, pixels: int, dtype_bytes: int = 4) -> float:
        return (self.fixed + self.per_pixel * pixels + self.per_pixel2 * pixels * pixels) * dtype_bytes / 4


# Measured with benchmarks/memory_costs.py on 2026-12-02 (stage 1, VAE) and 2026-12-07 (diffusion), CPU, 1 thread,
# float32, torch 2.14.1; see the module doc and benchmarks/README.md, which also lists the 384 px check of each fit
# (stage 1 and VAE within 12 %, diffusion within 22 %).
COSTS = {
    "stage1": StageCost(
        fixed=18.9e6, per_pixel=608.0, per_pixel2=0.0,
        measured="SwinIR (realesrgan_s4_swinir_100k config) forward at 256 and 512 px, CPU fp32 (RSS)"),
    "vae_encode": StageCost(
        fixed=8.4e6, per_pixel=2560.0, per_pixel2=0.0,
        measured="SD 2.1 VAE encoder (posterior mode) at 256 and 512 px, CPU fp32 (RSS)"),
    # Re-measured on the host (what the DiffBIR Sampler runs) on 2026-12-07: `python benchmarks/memory_costs.py
    # --stages diffusion --sizes 256,512 --check 384 --threads 1` (default --diffusion host), three runs: 254 / 278 /
    # 280 MiB at 256 px, 484 / 597 / 562 MiB at 512 px, 330 / 325 / 322 MiB at 384 px; the row is the fit through
    # the medians (278 and 562 MiB), which predicts 396 MiB at 384 px (1.22x the measured, the safe side). The
    # reference engine's UNet measured 242 / 543 / 377 MiB the same day (`--diffusion reference`); the earlier
    # row from it was 191.2 MB + 1228.9 B/px. See benchmarks/README.md, "Memory planner".
    "diffusion": StageCost(
        fixed=192.2e6, per_pixel=1514.7, per_pixel2=0.0,
        measured="ComfyUI's SD 2.1 UNet + our IRControlNet (DiffBIRControl, SDPA attention), one model call of batch "
                 "2 (the cfg pair) at 256 and 512 px (latent 32 and 64), CPU fp32 (RSS), median of 3 runs"),
    "vae_decode": StageCost(
        fixed=66.4e6, per_pixel=3978.7, per_pixel2=0.0,
        measured="SD 2.1 VAE decoder at 256 and 512 px, CPU fp32 (RSS)"),
}

# The whole-image buffers of a tiled run, bytes per output pixel (float32): the blended output and its
# weight sum (`tiling.blend_tiles`) plus the input the tiles are cut from.
BLEND_BYTES_PER_PIXEL = {"stage1": 3 * 4 + 4 + 3 * 4, "vae_encode": 3 * 4 + 4 / 64 + 8 * 4 / 64,
                         "diffusion": 2 * 4 * 4 / 64 + 4 / 64, "vae_decode": 3 * 4 + 4 + 4 * 4 / 64}

# Overlap of neighbouring planned tiles (image pixels): wide enough for the blend to hide the seam (the VAE's
# receptive field; ComfyUI's tiled VAE also overlaps 64 px), narrow enough to cost little time.
OVERLAP = {"stage1": 64, "vae_encode": 64, "diffusion": 64, "vae_decode": 64}
# Planned tile sides are multiples of this: stage 1's SwinIR works in multiples of 64, and so does the UNet (its
# latent tile is halved three times and meets its skip connections again); the VAE works in latent pixels.
SIDE_MULTIPLE = {"stage1": 64, "vae_encode": 8, "diffusion": 64, "vae_decode": 8}
MIN_TILE = {"stage1": 128, "vae_encode": 64, "diffusion": 64, "vae_decode": 64}
# Share of a 512 x 512 call's time spent in attention whose cost per pixel grows with the tile (FLOP counts of
# the official configs: the SD 2.1 UNet + ControlNet's full-resolution self-attention, the VAE's mid-block
# attention; SwinIR's attention is windowed, constant per pixel). Every plan weighs tiles by it.
ATTENTION_SHARE = {"stage1": 0.0, "vae_encode": 0.03, "diffusion": 0.15, "vae_decode": 0.03}
RETRY_SHRINK = 0.75  # an out-of-memory retry's tile side at most this times the failed one
CPU_CALL_BYTES = 2 * 2**30  # a CPU plan's largest call (see the module doc)


@dataclass(frozen=True)
class TilePlan:
    stage: str
    height: int  # image size of the stage (pixels)
    width: int
    tile: int  # tile side in pixels, 0 = untiled
    stride: int
    grid: tuple[int, int]  # tiles per column and per row (1, 1 untiled)
    predicted_bytes: float  # predicted peak working memory, safety margin included
    budget_bytes: float

    @property
    def tiled(self) -> bool:
        return self.tile > 0

    def describe(self) -> str:
        """One line for the node's output text and the console."""
        budget = format_bytes(self.budget_bytes)
        if not self.tiled:
            return (f"{self.stage}: untiled ({self.width}x{self.height} px), needs ~"
                    f"{format_bytes(self.predicted_bytes)} of {budget} free")
        return (f"{self.stage}: {self.grid[0]} x {self.grid[1]} tiles of {self.tile} px (stride {self.stride}), "
                f"planned for {budget} free (~{format_bytes(self.predicted_bytes)} needed)")


class PlanError(ValueError):
    """Not even the smallest tile fits the budget."""


def dtype_bytes(dtype) -> int:
    return torch.empty((), dtype=dtype).element_size() if isinstance(dtype, torch.dtype) else int(dtype)


def format_bytes(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 * 0.95 else f"{n / MIB:.0f} MB"


def parse_bytes(text: str) -> int:
    """'6GB', '6 GiB', '512MB', '6e9' -> bytes (GB and GiB both mean 2^30: what a GPU's '6 GB' holds)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?)i?b?\s*", str(text).lower())
    if not m:
        raise ValueError(f"cannot read {text!r} as a memory size; write e.g. 6GB, 512MB or 6e9")
    value, unit = float(m.group(1)), m.group(2)
    return int(value * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[unit])


def predicted_bytes(stage: str, height: int, width: int, tile: int, dtype=torch.float32,
                    safety: float = SAFETY) -> float:
    """Predicted peak working memory of `stage` on a height x width image with tile side `tile` (0 = untiled);
    `safety` scales the calls' working memory (1.0: the cost table's prediction itself, as benchmarks compare)."""
    if stage not in COSTS:
        raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
    th, tw = (height, width) if tile <= 0 else (min(tile, height), min(tile, width))
    work = COSTS[stage].bytes(th * tw, dtype_bytes(dtype))
    blend = BLEND_BYTES_PER_PIXEL[stage] * height * width if tile > 0 else 0.0
    return safety * work + blend


def candidate_tiles(stage: str, height: int, width: int, min_tile: int | None = None) -> list[tuple[int, int]]:
    """(tile side, stride) of every grid the planner may choose, fewest tiles (largest side) first: for n tiles
    across the longer side, the smallest side (a multiple of `SIDE_MULTIPLE`) that covers it with `OVERLAP`,
    down to `min_tile` (default `MIN_TILE[stage]`)."""
    floor = MIN_TILE[stage] if min_tile is None else int(min_tile)
    length, multiple = max(height, width), SIDE_MULTIPLE[stage]
    # small images (under 512 px) overlap an eighth of their side, so that they still have grids to fall back to
    overlap = min(OVERLAP[stage], max(8, length // 8 // 8 * 8))
    found = []
    for n in range(2, length // 8 + 1):
        side = -(-(length + (n - 1) * overlap) // n)
        side = -(-side // multiple) * multiple
        if side < floor or side < 2 * overlap:  # the overlap at most half the tile, as officially
            break
        if side < length and (not found or side < found[-1][0]):
            found.append((side, side - overlap))
    return found


def relative_time(stage: str, height: int, width: int, tile: int, stride: int) -> float:
    """Predicted time of a tiled run relative to one untiled 512 x 512 call's time per pixel x the image's pixels:
    the pixels the tiles evaluate, each dearer by the attention share that grows with the tile (`ATTENTION_SHARE`)."""
    windows = sliding_windows(height, width, tile, stride)
    evaluated = sum((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in windows)
    tile_pixels = min(tile, height) * min(tile, width)
    return evaluated / (height * width) * (1 + ATTENTION_SHARE[stage] * (tile_pixels / 512**2 - 1))


def plan_stage(stage: str, height: int, width: int, free_bytes: float, dtype=torch.float32,
               weights_bytes: float = 0.0, call_limit: float | None = None) -> TilePlan:
    """The tiling of one stage: untiled when it fits in free_bytes - weights_bytes (and `call_limit`, a CPU
    plan's `CPU_CALL_BYTES`), else the fitting grid of least `relative_time` (the attention of large tiles
    costs more than the overlap of smaller ones saves). Raises PlanError naming the stage and the smallest tile
    when none fits."""
    budget = float(free_bytes) - float(weights_bytes)
    if call_limit is not None:
        budget = min(budget, float(call_limit))
    need = predicted_bytes(stage, height, width, 0, dtype)
    if need <= budget:
        return TilePlan(stage, height, width, 0, 0, (1, 1), need, budget)
    candidates = candidate_tiles(stage, height, width)
    fitting = [(side, stride) for side, stride in candidates
               if predicted_bytes(stage, height, width, side, dtype) <= budget]
    if fitting:
        side, stride = min(fitting, key=lambda c: relative_time(stage, height, width, *c))
        return TilePlan(stage, height, width, side, stride, tile_grid(height, width, side, stride),
                        predicted_bytes(stage, height, width, side, dtype), budget)
    smallest = candidates[-1][0] if candidates else MIN_TILE[stage]
    need = predicted_bytes(stage, height, width, smallest, dtype)
    raise PlanError(f"{stage}: a {width}x{height} image needs ~{format_bytes(need)} even in {smallest} px tiles, "
                    f"but only {format_bytes(max(budget, 0))} is free after the weights; free memory (close other "
                    "programs, unload models) or restore a smaller image")


def frames_per_chunk(stage: str, height: int, width: int, tile: int, frames: int, free_bytes: float,
                     dtype=torch.float32, weights_bytes: float = 0.0, call_limit: float | None = None) -> int:
    """How many frames of a batch one call of `stage` takes (at least 1, at most `frames`): as many as fit the
    same budget as `plan_stage`'s when each frame needs the predicted memory of one image at tile side `tile`
    (0 = untiled). A batch's working memory grows with its frames (every activation has the batch dimension);
    chunks keep a batch of any length within the budget one frame is planned for."""
    frames = int(frames)
    if frames < 1:
        raise ValueError(f"a batch needs at least one frame, got {frames}")
    budget = float(free_bytes) - float(weights_bytes)
    if call_limit is not None:
        budget = min(budget, float(call_limit))
    one = predicted_bytes(stage, height, width, tile, dtype)
    return max(1, min(frames, int(budget // one))) if one > 0 else frames


def chunk_ranges(frames: int, size: int) -> list[tuple[int, int]]:
    """(start, stop) of consecutive chunks of at most `size` frames covering 0 .. frames - 1, in order."""
    if frames < 1 or size < 1:
        raise ValueError(f"chunks need at least one frame and a size of at least one (got {frames}, {size})")
    return [(start, min(start + size, frames)) for start in range(0, frames, size)]


def tile_grid(height: int, width: int, tile: int, stride: int) -> tuple[int, int]:
    """(rows, columns) of tiles `tiling.sliding_windows` lays over an image (pixels; the grid is in latent
    pixels for the 8-multiple stages, which gives the same counts)."""
    windows = sliding_windows(height, width, tile, stride)
    rows = len({w[0] for w in windows})
    return rows, len(windows) // rows


def smaller_tiles(stage: str, tile: int, height: int, width: int,
                  min_tile: int | None = None) -> list[tuple[int, int]]:
    """The (tile, stride) grids an out-of-memory retry goes through after `tile` (0 = untiled), largest first."""
    start = max(height, width) if tile <= 0 else tile
    candidates = [c for c in candidate_tiles(stage, height, width, min_tile) if c[0] < start]
    chosen = []
    for side, stride in candidates:
        # each retry at most 3/4 the side of the last (about half the memory): a few retries reach the smallest
        if side <= RETRY_SHRINK * (chosen[-1][0] if chosen else start):
            chosen.append((side, stride))
    if candidates and candidates[-1] not in chosen:
        chosen.append(candidates[-1])
    return chosen


def plan_restore(free_bytes: float, stage1_size: tuple[int, int], image_size: tuple[int, int],
                 dtype=torch.float32, weights_bytes: dict | None = None,
                 call_limit: float | None = None) -> dict[str, TilePlan]:
    """The plan of every stage of one restore: stage 1 at its network's size, the others at the stage-2 image
    size (height, width). `weights_bytes[stage]`: weights that stage still has to load (default none)."""
    weights_bytes = weights_bytes or {}
    sizes = {"stage1": stage1_size, "vae_encode": image_size, "diffusion": image_size, "vae_decode": image_size}
    return {stage: plan_stage(stage, *sizes[stage], free_bytes, dtype, weights_bytes.get(stage, 0.0), call_limit)
            for stage in STAGES}


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is an allocator's out-of-memory error, on any device."""
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),) if t is not None)
    if oom_types and isinstance(exc, oom_types):
        return True
    if isinstance(exc, MemoryError):
        return True
    # older torch and other backends: a RuntimeError ("HIP out of memory"; the CPU allocator: "can't allocate")
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def run_with_fallback(stage: str, run, tile: int, stride: int, height: int, width: int, release_memory=None,
                      log=None, min_tile: int | None = None):
    """`run(tile, stride)` (tile 0 = untiled); on an out-of-memory error, `release_memory()` and again with the
    next smaller planned grid (`smaller_tiles`) until one succeeds or the smallest fails.

    `release_memory` is the host's (ComfyUI: comfy.model_management.soft_empty_cache); the core never calls a
    device API itself. `log(message)` hears about each retry. The final error names the stage and the sizes tried.
    """
    sizes = [(tile, stride)] + smaller_tiles(stage, tile, height, width, min_tile)
    tried = []
    for i, (side, side_stride) in enumerate(sizes):
        try:
            return run(side, side_stride)
        except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried, everything else re-raised
            if not is_out_of_memory(exc):
                raise
            tried.append("untiled" if side <= 0 else f"{side} px")
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if release_memory is not None:
            release_memory()  # outside the except block: the failed attempt's tensors are released by now
        if i + 1 < len(sizes) and log is not None:
            log(f"{stage}: out of memory with {tried[-1]} tiles; retrying with {sizes[i + 1][0]} px tiles")
    raise MemoryError(f"{stage} ran out of memory at every tile size tried ({', '.join(tried)}; smallest "
                      f"{tried[-1]}): {message}. Free memory (close other programs, unload models) or restore a "
                      "smaller image.")


__all__ = ["COSTS", "CPU_CALL_BYTES", "OVERLAP", "STAGES", "SAFETY", "candidate_tiles", "chunk_ranges", "frames_per_chunk", "relative_time", "PlanError", "StageCost", "TilePlan", "format_bytes", "parse_bytes",
           "plan_restore", "plan_stage", "predicted_bytes", "run_with_fallback", "smaller_tiles", "tile_grid"]


def main(argv=None) -> int:
    """python -m diffbir_core.memory --free 6GB [--size 4096x4096] [--dtype fp16] [--unet-weights 3.5GB] [--cpu]"""
    import argparse

    ap = argparse.ArgumentParser(description="Print the memory planner's tiling of one restore.")
    ap.add_argument("--free", action="append", required=True, help="free device memory, e.g. 6GB (repeatable)")
    ap.add_argument("--size", default="4096x4096", help="stage-2 image size WxH (stage 1 planned at the same size)")
    ap.add_argument("--dtype", default="fp16", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--unet-weights", default="0", help="UNet + ControlNet weights still to load (diffusion)")
    ap.add_argument("--cpu", action="store_true", help="plan for the CPU: each call within CPU_CALL_BYTES too")
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    for free in args.free:
        print(f"{free} free, {w}x{h}, {args.dtype}:")
        plans = plan_restore(parse_bytes(free), (h, w), (h, w), dtype,
                             weights_bytes={"diffusion": parse_bytes(args.unet_weights)},
                             call_limit=CPU_CALL_BYTES if args.cpu else None)
        for plan in plans.values():
            print("  " + plan.describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
