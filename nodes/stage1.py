"""Stage-1 restore node: the official DiffBIR preprocessing around a stage-1 network (diffbir_core.stage1).

The network comes either from "Load DiffBIR Models" (DIFFBIR_STAGE1: our SwinIR / BSRNet / SCUNet in a
ModelPatcher) or from ComfyUI's stock "Load Upscale Model" (UPSCALE_MODEL: a spandrel model; DiffBIR's
SwinIR files load there too). ComfyUI concerns live here: model loading, device, progress, Cancel.
"""

from __future__ import annotations

import logging

import comfy.model_management as mm
import comfy.utils
import torch

from ..diffbir_core import stage1 as core
from .images import rgb_image, widget_range_error
from .tiles import (
    TILE_PLAN_INPUT,
    auto_plan,
    check_tile_inputs,
    check_tile_plan,
    tile_inputs_error,
    weights_to_load,
)
from .types import STAGE1_TYPE

log = logging.getLogger(__name__)
NODE = "Stage1 SwinIR Restore"
DEFAULT_STRIDE = 256  # official: 512 px tiles, stride 256
MIN_STAGE1_TILE = 64  # SwinIR's size multiple

VERSION_CHOICES = ("auto", "v1", "v2", "v2.1")
DEFAULT_VERSION = "v2.1"
# spandrel architecture ids -> our pipelines (anything else: by scale, see _pipeline_for)
_SPANDREL_PIPELINES = {"SwinIR": "swinir", "SCUNet": "scunet"}


def _pipeline_for(kind: str, scale: int, arch_id: str | None = None) -> str:
    if kind in core.PIPELINES:
        return kind
    # A spandrel model: SR networks (x2, x4, including classic SwinIR SR) run like BSRNet (on the raw input,
    # then resized to input x upscale); x1 restorers like SwinIR (pre-upscale, pad), SCUNet like SCUNet.
    if scale > 1:
        return "bsrnet"
    return _SPANDREL_PIPELINES.get(arch_id, "swinir")


def _check_tiles(tile_size: int, tile_overlap: int, size_multiple: int = 1) -> None:
    try:
        core.effective_tile(tile_size, tile_overlap, size_multiple)
    except ValueError as err:
        raise ValueError(f"{err}: lower tile_overlap or raise tile_size (0 = no tiling)") from None


def _memory_estimate(h: int, w: int, tile: int, scale: int) -> int:
    """Activation memory, as ComfyUI's ImageUpscaleWithModel estimates it (per input pixel, x scale)."""
    area = min(h * w, tile * tile) if tile else h * w
    return int(area * 3 * 4 * max(scale, 1) * 384.0)


class DiffBIRStage1Restore:
    """Run the DiffBIR stage-1 network with the official per-pipeline pre-/post-processing."""

    DESCRIPTION = (
        "DiffBIR stage 1: removes blur, noise and JPEG artefacts with the stage-1 network and returns the image "
        "at the size stage 2 works on, with the official preprocessing of the network's pipeline. SwinIR "
        "(v1, v2 faces, v2.1): bicubic upscale by 'upscale', short edge raised to 'min_short_edge', zero-padded "
        "to 64, restored, cropped. BSRNet (v2): restored x4 on the raw input, then resized to input x upscale "
        "(or short edge to 'min_short_edge' when smaller). SCUNet (v2 denoise): bicubic upscale, restore, short "
        "edge to 'min_short_edge'. Connect exactly one of 'stage1' (Load DiffBIR Models) or 'upscale_model' "
        "(stock Load Upscale Model: DiffBIR's SwinIR files and other spandrel models). Feed the result to stage "
        "2 and to 'DiffBIR Color Fix' as the reference. Cancel stops between tiles; out-of-memory errors retry "
        "with smaller tiles."
    )
    CATEGORY = "DiffBIR"
    FUNCTION = "restore"
    RETURN_TYPES = ("IMAGE", "INT", "INT")
    RETURN_NAMES = ("image", "target_width", "target_height")
    OUTPUT_TOOLTIPS = (
        "Stage-1 restored image(s) at the working size (the official size fed to stage 2), RGB in [0, 1].",
        ("Width the official pipeline gives the final result (input width x upscale): resize the stage-2 output "
         "to it when min_short_edge made the working size larger."),
        "Height the official pipeline gives the final result (input height x upscale).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "Low-quality input image(s). RGBA loses its alpha, grayscale is "
                                               "repeated to RGB."}),
                "upscale": ("FLOAT", {"default": 4.0, "min": 1.0, "max": 8.0, "step": 0.05,
                                      "tooltip": "Output size = input size x upscale (official --upscale). 4 for "
                                                 "super-resolution, 1 for aligned faces and denoising."}),
                "version": (list(VERSION_CHOICES), {"default": "auto",
                                                    "tooltip": "Which official pipeline's rounding and resizing to "
                                                               "follow. auto: the version of the stage-1 file, "
                                                               "else v2.1. v1 rounds sizes up (ceil), v2/v2.1 down."}),
                "min_short_edge": ("INT", {"default": core.OFFICIAL_MIN_SHORT_EDGE, "min": 0, "max": 8192, "step": 8,
                                           "tooltip": "Raise the short edge to this size when smaller (official: "
                                                      "512, the resolution stage 2 was trained at). 0 = off: the "
                                                      "output is exactly input x upscale."}),
                "tile_size": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 64,
                                      "tooltip": "0 = whole image at once. Otherwise run in tiles of this many "
                                                 "pixels (rounded down to what the network needs: 64 for SwinIR), "
                                                 "blended with gaussian weights to lower memory use. Official "
                                                 "tiled cleaner: 512."}),
            },
            "optional": {
                "stage1": (STAGE1_TYPE, {"tooltip": "Stage-1 network from 'Load DiffBIR Models'. Connect this or "
                                                    "upscale_model, not both."}),
                "upscale_model": ("UPSCALE_MODEL", {"tooltip": "A model from ComfyUI's 'Load Upscale Model' (e.g. "
                                                               "DiffBIR's SwinIR in models/upscale_models). Connect "
                                                               "this or stage1, not both."}),
                "tile_stride": ("INT", {"default": 256, "min": 8, "max": 8192, "step": 8,
                                        "tooltip": "Distance between tile origins in pixels, a multiple of 8 no larger "
                                                   "than tile_size (official: 256 with 512 tiles). Smaller strides "
                                                   "overlap more: smoother seams, more tiles."}),
                "tile_plan": TILE_PLAN_INPUT,
                "tile_overlap": ("INT", {"min": 0, "max": 4096, "forceInput": True,
                                         "tooltip": "Older prompts' tile overlap in pixels (stride = tile_size - "
                                                    "tile_overlap); when given it replaces tile_stride. New graphs "
                                                    "set tile_stride."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, tile_size=None, tile_stride=None, tile_overlap=None):
        """Shown before the run: the tile inputs (ComfyUI then leaves their min/max check to us)."""
        if tile_overlap is None:
            return tile_inputs_error(cls, "tile_size", tile_size, "tile_stride", tile_stride, MIN_STAGE1_TILE) or True
        for name, value in (("tile_size", tile_size), ("tile_overlap", tile_overlap)):
            error = widget_range_error(cls, name, value)
            if error:
                return error
        if tile_size is not None:
            try:
                _check_tiles(tile_size, tile_overlap)
            except ValueError as err:
                return str(err)
        return True

    def restore(self, image, upscale, version, min_short_edge, tile_size, tile_overlap=None, stage1=None,
                upscale_model=None, tile_plan="manual", tile_stride=DEFAULT_STRIDE):
        if (stage1 is None) == (upscale_model is None):
            raise ValueError("Stage1 SwinIR Restore: connect exactly one of 'stage1' (Load DiffBIR Models) or "
                             "'upscale_model' (Load Upscale Model); "
                             + ("neither is connected (a 'stage1' fed by Load DiffBIR Models with stage1_name "
                                "'none' is empty too: pick a stage-1 file there)." if stage1 is None
                                else "both are connected."))
        if stage1 is not None and not hasattr(stage1, "patcher"):
            raise TypeError(f"stage1: expected the stage1 output of 'Load DiffBIR Models', got {type(stage1).__name__}")
        error = widget_range_error(type(self), "upscale", upscale)
        if error or not upscale >= 1.0:  # the widget bounds, for callers that bypass ComfyUI's validation
            raise ValueError(error or f"upscale must be >= 1, got {upscale}")
        images = rgb_image(image, "image")

        if stage1 is not None:
            runner = _PatcherRunner(stage1)
        else:
            runner = _SpandrelRunner(upscale_model)
        if version == "auto":
            version = runner.version if runner.version in core.VERSIONS else DEFAULT_VERSION
        if version not in core.VERSIONS:
            raise ValueError(f"version must be one of {VERSION_CHOICES}, got {version!r}")

        b, h, w, _ = images.shape
        p = core.plan(h, w, runner.pipeline, upscale, version, min_short_edge, runner.scale, runner.size_multiple)
        net_h, net_w = p.padded_size
        if check_tile_plan(NODE, tile_plan):
            # planned at the network's input size
            plan = auto_plan(NODE, "stage1", net_h, net_w, runner.device, torch.float32,
                             weights_to_load(runner.device, getattr(runner, "patcher", None)))
            tile_size, tile_overlap = plan.tile, plan.tile - plan.stride
        elif tile_overlap is None:  # the stride, as on every tile node; the core runner counts the overlap
            check_tile_inputs(NODE, tile_size, tile_stride, minimum=MIN_STAGE1_TILE)
            tile_overlap = tile_size - int(tile_stride) if tile_size else 0
        _check_tiles(tile_size, tile_overlap, runner.size_multiple)  # before loading anything
        tiles = core.tile_count(net_h, net_w, tile_size, tile_overlap, runner.size_multiple)
        pbar = comfy.utils.ProgressBar(b * tiles)
        out_device = mm.intermediate_device()
        results = []
        with runner.loaded(_memory_estimate(net_h, net_w, tile_size, runner.scale)):
            for i in range(b):
                mm.throw_exception_if_processing_interrupted()

                def on_tile(done, total, i=i):
                    pbar.update_absolute(i * total + done, b * total)
                    mm.throw_exception_if_processing_interrupted()

                x = images[i : i + 1].movedim(-1, 1).to(runner.device)
                res = core.restore(runner, x, runner.pipeline, upscale, version, min_short_edge, runner.scale,
                                   runner.size_multiple, tile_size, tile_overlap, on_tile=on_tile,
                                   min_tile=min(core.DEFAULT_MIN_TILE, tile_size) if tile_size else
                                   core.DEFAULT_MIN_TILE, on_oom=mm.soft_empty_cache)
                results.append(res.image.clamp(0, 1).movedim(1, -1).to(out_device, torch.float32))
                del x, res
        th, tw = p.target_size
        return (torch.cat(results, 0), tw, th)


class _Runner:
    pipeline: str
    version: str | None
    scale: int
    size_multiple: int
    device: torch.device
    dtype: torch.dtype


class _PatcherRunner(_Runner):
    """A DIFFBIR_STAGE1 payload: the network lives in a ComfyUI ModelPatcher."""

    def __init__(self, stage1):
        self.stage1 = stage1
        self.patcher = stage1.patcher
        self.scale = int(stage1.scale)
        self.size_multiple = max(1, int(stage1.size_multiple))
        self.version = stage1.version
        self.pipeline = _pipeline_for(stage1.kind, self.scale)
        self.device = self.patcher.load_device

    def loaded(self, memory_required):
        runner = self

        class _Ctx:
            def __enter__(self):
                # Stage-1 networks are small (< 100 MB): load them whole, never partially (lowvram), since
                # their plain torch layers cannot stream weights.
                mm.load_models_gpu([runner.patcher], memory_required=memory_required, force_full_load=True)
                runner.model = runner.patcher.model
                param = next(runner.model.parameters(), None)
                runner.dtype = param.dtype if param is not None else torch.float32
                runner.device = param.device if param is not None else runner.patcher.load_device
                if runner.dtype == torch.float16 and runner.pipeline == "swinir":
                    log.warning("%s: SwinIR weights are float16; SwinIR is not fp16-safe (spandrel marks it so), "
                                "expect NaNs or artefacts: load it in float32 or bfloat16", runner.stage1.name)
                return runner

            def __exit__(self, *exc):
                runner.model = None
                return False

        return _Ctx()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(x.to(self.device, self.dtype))


class _SpandrelRunner(_Runner):
    """A stock UPSCALE_MODEL (spandrel ImageModelDescriptor), handled the way ImageUpscaleWithModel does."""

    def __init__(self, descriptor):
        if not hasattr(descriptor, "size_requirements") or not hasattr(descriptor, "scale"):
            raise TypeError(f"upscale_model: expected a model from 'Load Upscale Model', got {type(descriptor).__name__}")
        self.descriptor = descriptor
        self.scale = int(descriptor.scale)
        req = descriptor.size_requirements
        self.size_multiple = max(1, int(getattr(req, "multiple_of", 1) or 1))
        arch = getattr(getattr(descriptor, "architecture", None), "id", None)
        self.pipeline = _pipeline_for("upscale_model", self.scale, arch)
        self.version = None
        self.device = mm.get_torch_device()
        self.dtype = torch.float32

    def loaded(self, memory_required):
        runner = self

        class _Ctx:
            def __enter__(self):
                d = runner.descriptor
                mm.free_memory(mm.module_size(d.model) + memory_required, runner.device)
                d.to(runner.device)
                runner.dtype = d.dtype
                return runner

            def __exit__(self, *exc):
                runner.descriptor.to("cpu")  # as the stock node: the descriptor is not ComfyUI-managed
                return False

        return _Ctx()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # Inputs are already padded to size_requirements.multiple_of (zeros, as officially): spandrel's own
        # padding only applies below its minimum size. spandrel clamps the output to [0, 1].
        return self.descriptor(x.to(self.device, self.dtype))


NODE_CLASS_MAPPINGS = {"DiffBIRStage1Restore": DiffBIRStage1Restore}
NODE_DISPLAY_NAME_MAPPINGS = {"DiffBIRStage1Restore": "Stage1 SwinIR Restore"}
