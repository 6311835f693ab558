"""Stage1 SwinIR Restore: the official DiffBIR preprocessing around a stage-1 network (diffbir_core.stage1)."""

from __future__ import annotations

import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.latest import io

from diffbir_core import stage1 as core

from .host import schema
from .host.images import rgb_image, widget_range_error
from .host.stage1_runner import memory_estimate, runner_for
from .host.tiled_stage import TiledStage
from .host.types import Stage1IO

NODE = "Stage1 SwinIR Restore"
DEFAULT_STRIDE = 256  # official: 512 px tiles, stride 256
VERSION_CHOICES = ("auto", "v1", "v2", "v2.1")
DEFAULT_VERSION = "v2.1"
TILES = TiledStage(NODE, "stage1")


def _legacy_tiles(tile_size: int, tile_overlap: int, size_multiple: int = 1) -> tuple[int, int]:
    """Older prompts' tile_overlap as the (tile, stride) they ran with: the tile rounded down to the network's
    size multiple, the overlap kept (stride = rounded tile - tile_overlap)."""
    if tile_overlap < 0:
        raise ValueError(f"tile_overlap must be >= 0, got {tile_overlap}")
    if not tile_size:
        return 0, DEFAULT_STRIDE
    rounded = core.effective_tile(tile_size, 1, size_multiple)
    if rounded <= tile_overlap:
        shown = f"{tile_size}, rounded down to {rounded}, a multiple of {size_multiple} that the network needs" \
            if rounded != tile_size else f"{tile_size}"
        raise ValueError(f"tile_size ({shown}) must be larger than tile_overlap ({tile_overlap}): lower tile_overlap "
                         "or raise tile_size (0 = no tiling)")
    return tile_size, rounded - tile_overlap


class DiffBIRStage1Restore(io.ComfyNode):
    """Run the DiffBIR stage-1 network with the official per-pipeline pre-/post-processing."""

    @classmethod
    def define_schema(cls):
        return schema.schema(
            node_id="DiffBIRStage1Restore",
            display_name=NODE,
            category=schema.STAGE1,
            search_aliases=["restore", "upscale", "super resolution", "swinir", "bsrnet", "scunet", "denoise",
                            "deblur", "jpeg artifacts", "diffbir stage 1"],
            description=(
                "DiffBIR stage 1: removes blur, noise and JPEG artefacts with the stage-1 network and returns the "
                "image at the size stage 2 works on, with the official preprocessing of the network's pipeline. "
                "SwinIR (v1, v2 faces, v2.1): bicubic upscale by 'upscale', short edge raised to 'min_short_edge', "
                "zero-padded to 64, restored, cropped. BSRNet (v2): restored x4 on the raw input, then resized to "
                "input x upscale (or short edge to 'min_short_edge' when smaller). SCUNet (v2 denoise): bicubic "
                "upscale, restore, short edge to 'min_short_edge'. Connect exactly one of 'stage1' (Load DiffBIR "
                "Models) or 'upscale_model' (stock Load Upscale Model: DiffBIR's SwinIR files and other spandrel "
                "models). Feed the result to stage 2 and to 'DiffBIR Color Fix' as the reference. Cancel stops "
                "between tiles; out-of-memory errors retry with smaller tiles."),
            inputs=[
                io.Image.Input("image", tooltip="Low-quality input image(s). RGBA loses its alpha, grayscale is "
                                                "repeated to RGB."),
                io.Float.Input("upscale", default=4.0, min=1.0, max=8.0, step=0.05,
                               tooltip="Output size = input size x upscale (official --upscale). 4 for "
                                       "super-resolution, 1 for aligned faces and denoising."),
                io.Combo.Input("version", options=list(VERSION_CHOICES), default="auto",
                               tooltip="Which official pipeline's rounding and resizing to follow. auto: the version "
                                       "of the stage-1 file, else v2.1. v1 rounds sizes up (ceil), v2/v2.1 down.",
                               **schema.ADVANCED),
                io.Int.Input("min_short_edge", default=core.OFFICIAL_MIN_SHORT_EDGE, min=0, max=8192, step=8,
                             tooltip="Raise the short edge to this size when smaller (official: 512, the resolution "
                                     "stage 2 was trained at). 0 = off: the output is exactly input x upscale.",
                             **schema.ADVANCED),
                TILES.size_input(0, "0 = whole image at once. Otherwise run in tiles of this many pixels (rounded "
                                    "down to what the network needs: 64 for SwinIR), blended with gaussian weights "
                                    "to lower memory use (tile_plan manual). Official tiled cleaner: 512."),
                Stage1IO.Input("stage1", optional=True,
                               tooltip="Stage-1 network from 'Load DiffBIR Models'. Connect this or upscale_model, "
                                       "not both."),
                io.UpscaleModel.Input("upscale_model", optional=True,
                                      tooltip="A model from ComfyUI's 'Load Upscale Model' (e.g. DiffBIR's SwinIR in "
                                              "models/upscale_models). Connect this or stage1, not both."),
                TILES.stride_input("Distance between tile origins in pixels, a multiple of 8 no larger than "
                                   "tile_size (official: 256 with 512 tiles). Smaller strides overlap more: smoother "
                                   "seams, more tiles.", DEFAULT_STRIDE, optional=True),
                TILES.plan_input(),
                io.Int.Input("tile_overlap", min=0, max=4096, force_input=True, optional=True,
                             tooltip="Older prompts' tile overlap in pixels (stride = tile_size - tile_overlap); "
                                     "when given it replaces tile_stride. New graphs set tile_stride."),
            ],
            outputs=[
                io.Image.Output("image_out", display_name="image",
                                tooltip="Stage-1 restored image(s) at the working size (the official size fed to "
                                        "stage 2), RGB in [0, 1]."),
                io.Int.Output("target_width", display_name="target_width",
                              tooltip="Width the official pipeline gives the final result (input width x upscale): "
                                      "resize the stage-2 output to it when min_short_edge made the working size "
                                      "larger."),
                io.Int.Output("target_height", display_name="target_height",
                              tooltip="Height the official pipeline gives the final result (input height x "
                                      "upscale)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, tile_size=None, tile_stride=None, tile_overlap=None):
        """Shown before the run: the tile inputs (ComfyUI then leaves their min/max check to us)."""
        if tile_overlap is None:
            return TILES.error(cls, tile_size, tile_stride) or True
        for name, value in (("tile_size", tile_size), ("tile_overlap", tile_overlap)):
            error = widget_range_error(cls, name, value)
            if error:
                return error
        if tile_size is not None:
            try:
                _legacy_tiles(tile_size, tile_overlap)
            except ValueError as err:
                return str(err)
        return True

    @classmethod
    def execute(cls, image, upscale, version, min_short_edge, tile_size, stage1=None, upscale_model=None,
                tile_stride=DEFAULT_STRIDE, tile_plan="manual", tile_overlap=None) -> io.NodeOutput:
        # check inputs
        if (stage1 is None) == (upscale_model is None):
            raise ValueError(f"{NODE}: connect exactly one of 'stage1' (Load DiffBIR Models) or 'upscale_model' "
                             "(Load Upscale Model); "
                             + ("neither is connected (a 'stage1' fed by Load DiffBIR Models with stage1_name "
                                "'none' is empty too: pick a stage-1 file there)." if stage1 is None
                                else "both are connected."))
        runner = runner_for(stage1, upscale_model)
        error = widget_range_error(cls, "upscale", upscale)
        if error or not upscale >= 1.0:  # the widget bounds, for callers that bypass ComfyUI's validation
            raise ValueError(error or f"upscale must be >= 1, got {upscale}")
        images = rgb_image(image, "image")
        if version == "auto":
            version = runner.version if runner.version in core.VERSIONS else DEFAULT_VERSION
        if version not in core.VERSIONS:
            raise ValueError(f"version must be one of {VERSION_CHOICES}, got {version!r}")

        # prepare: the official sizes, then the tiles at the network's input size (nothing loaded yet)
        b, h, w, _ = images.shape
        sizes = core.plan(h, w, runner.pipeline, upscale, version, min_short_edge, runner.scale, runner.size_multiple)
        net_h, net_w = sizes.padded_size
        if tile_overlap is not None and tile_plan != "auto":
            tile, stride = _legacy_tiles(int(tile_size), int(tile_overlap), runner.size_multiple)
        else:
            tile, stride = TILES.settings(tile_plan, tile_size, tile_stride, net_h, net_w, runner.device,
                                          torch.float32, [runner.patcher])
        try:
            tiles = core.tile_count(net_h, net_w, tile, stride, runner.size_multiple)
        except ValueError as err:
            raise ValueError(f"{NODE}: {err}") from None

        # restore, image by image (the core retries on smaller tiles after an out-of-memory error)
        pbar = comfy.utils.ProgressBar(b * tiles)
        out_device = mm.intermediate_device()
        results = []
        with runner.loaded(memory_estimate(net_h, net_w, tile, runner.scale)):
            for i in range(b):
                mm.throw_exception_if_processing_interrupted()

                def on_tile(done, total, i=i):
                    pbar.update_absolute(i * total + done, b * total)
                    mm.throw_exception_if_processing_interrupted()

                x = images[i: i + 1].movedim(-1, 1).to(runner.device)
                res = core.restore(runner, x, runner.pipeline, upscale, version, min_short_edge, runner.scale,
                                   runner.size_multiple, tile, stride, on_tile=on_tile,
                                   min_tile=min(core.DEFAULT_MIN_TILE, tile) if tile else core.DEFAULT_MIN_TILE,
                                   on_oom=mm.soft_empty_cache)
                results.append(res.image.clamp(0, 1).movedim(1, -1).to(out_device, torch.float32))
                del x, res
        th, tw = sizes.target_size
        return io.NodeOutput(torch.cat(results, 0), tw, th)
