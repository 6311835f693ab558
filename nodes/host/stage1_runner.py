"""A stage-1 network as the callable the core's stage-1 pipeline runs (``diffbir_core.stage1.restore``).

The network comes either from "Load DiffBIR Models" (DIFFBIR_STAGE1: our SwinIR / BSRNet / SCUNet in a
ModelPatcher) or from ComfyUI's stock "Load Upscale Model" (UPSCALE_MODEL: a spandrel model; DiffBIR's SwinIR
files load there too). A runner knows the network's pipeline, scale and size multiple, loads it the ComfyUI way
for the duration of a ``with runner.loaded(memory)`` block and runs it on the device.
"""

from __future__ import annotations

import logging

import comfy.model_management as mm
import torch

from diffbir_core import stage1 as core

log = logging.getLogger("comfyui-diffbir")

# spandrel architecture ids -> our pipelines (anything else: by scale, see pipeline_for)
_SPANDREL_PIPELINES = {"SwinIR": "swinir", "SCUNet": "scunet"}


def pipeline_for(kind: str, scale: int, arch_id: str | None = None) -> str:
    if kind in core.PIPELINES:
        return kind
    # A spandrel model: SR networks (x2, x4, including classic SwinIR SR) run like BSRNet (on the raw input,
    # then resized to input x upscale); x1 restorers like SwinIR (pre-upscale, pad), SCUNet like SCUNet.
    if scale > 1:
        return "bsrnet"
    return _SPANDREL_PIPELINES.get(arch_id, "swinir")


def memory_estimate(h: int, w: int, tile: int, scale: int) -> int:
    """Activation memory, as ComfyUI's ImageUpscaleWithModel estimates it (per input pixel, x scale)."""
    area = min(h * w, tile * tile) if tile else h * w
    return int(area * 3 * 4 * max(scale, 1) * 384.0)


class Stage1Runner:
    """What the node and the core pipeline need to know of a stage-1 network; calling it runs the network."""

    patcher = None  # the ModelPatcher to budget for, when the network has one
    pipeline: str
    version: str | None
    scale: int
    size_multiple: int
    device: torch.device
    dtype: torch.dtype


class PatcherRunner(Stage1Runner):
    """A DIFFBIR_STAGE1 payload: the network lives in a ComfyUI ModelPatcher."""

    def __init__(self, stage1):
        self.stage1 = stage1
        self.patcher = stage1.patcher
        self.scale = int(stage1.scale)
        self.size_multiple = max(1, int(stage1.size_multiple))
        self.version = stage1.version
        self.pipeline = pipeline_for(stage1.kind, self.scale)
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


class SpandrelRunner(Stage1Runner):
    """A stock UPSCALE_MODEL (spandrel ImageModelDescriptor), handled the way ImageUpscaleWithModel does."""

    def __init__(self, descriptor):
        if not hasattr(descriptor, "size_requirements") or not hasattr(descriptor, "scale"):
            raise TypeError(f"upscale_model: expected a model from 'Load Upscale Model', got {type(descriptor).__name__}")
        self.descriptor = descriptor
        self.scale = int(descriptor.scale)
        req = descriptor.size_requirements
        self.size_multiple = max(1, int(getattr(req, "multiple_of", 1) or 1))
        arch = getattr(getattr(descriptor, "architecture", None), "id", None)
        self.pipeline = pipeline_for("upscale_model", self.scale, arch)
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


def runner_for(stage1, upscale_model) -> Stage1Runner:
    """The runner of whichever of the two inputs is connected (the node checks that exactly one is)."""
    if stage1 is not None:
        if not hasattr(stage1, "patcher"):
            raise TypeError(f"stage1: expected the stage1 output of 'Load DiffBIR Models', got {type(stage1).__name__}")
        return PatcherRunner(stage1)
    return SpandrelRunner(upscale_model)
