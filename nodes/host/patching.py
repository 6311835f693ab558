"""Our torch networks inside ComfyUI: ModelPatchers, ComfyUI's castable layers and the official half policy.

ComfyUI loads, offloads and (in low-VRAM mode) streams the weights of what a ModelPatcher wraps; its partial
loading casts the weights of ``comfy.ops`` layers to the compute device per call, so the leaf layers of our
networks are switched to those classes (same parameters, same maths). The DiffBIR ControlNet is cast with the
official half-precision policy (DiffBIR's ``ControlLDM.cast_dtype``).
"""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.model_patcher
import comfy.ops
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from diffbir_core.arch.ldm_blocks import GroupNorm32, Linear, linear

log = logging.getLogger("comfyui-diffbir")


def _ops_classes():
    """Leaf layer classes -> ComfyUI ops classes that can cast/offload weights (lowvram loading)."""
    ops = comfy.ops.disable_weight_init
    mapping = {}
    for name in ("Linear", "Conv2d", "LayerNorm", "GroupNorm"):
        cls = getattr(ops, name, None)
        if cls is not None:
            mapping[getattr(torch.nn, name)] = cls
    if torch.nn.GroupNorm in mapping:
        base = mapping[torch.nn.GroupNorm]

        class ComfyGroupNorm32(base):
            """GroupNorm evaluated in float32 (DiffBIR's GroupNorm32) on top of ComfyUI's castable GroupNorm."""

            def forward(self, x):
                return super().forward(x.float()).to(x.dtype)

        mapping[GroupNorm32] = ComfyGroupNorm32
    if torch.nn.Linear in mapping:

        class ComfyLinear(mapping[torch.nn.Linear], Linear):
            """ComfyUI's castable Linear computing with our kernel (diffbir_core's `linear`: oneDNN's GEMM on the
            CPU) both fully loaded (our forward) and when ComfyUI casts the weights per call, so a partial load
            gives the same bits as a full one."""

            def forward_comfy_cast_weights(self, *args, **kwargs):
                with _OurLinear():
                    return super().forward_comfy_cast_weights(*args, **kwargs)

        mapping[Linear] = ComfyLinear
    return mapping


class _OurLinear(TorchFunctionMode):
    """Routes F.linear to diffbir_core's `linear` while active (ComfyUI's cast path calls F.linear itself)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.linear:
            return linear(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


def use_comfy_ops(model: torch.nn.Module) -> torch.nn.Module:
    """Swap the leaf layers to ComfyUI's ops classes in place (same parameters, same maths).

    ComfyUI's partial ("lowvram") loading keeps the weights of such layers on the offload device and
    casts them to the compute device per call; plain torch layers would stay behind on the CPU.
    """
    try:
        mapping = _ops_classes()
    except Exception as err:  # an unknown ComfyUI version: plain layers still work when fully loaded
        log.debug("DiffBIR: comfy.ops layers unavailable (%s); keeping torch layers", err)
        return model
    for module in model.modules():
        target = mapping.get(type(module))
        if target is not None:
            module.__class__ = target
    return model


# The blocks DiffBIR casts in its half-precision mode (`ControlLDM.cast_dtype`); the time embedding stays
# float32 and every GroupNorm32 is cast back to float32.
_HALF_BLOCKS = ("input_blocks", "middle_block", "zero_convs", "middle_block_out")


def cast_controlnet(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """float32 everywhere, then the official half-precision policy for fp16/bf16."""
    model.float()
    if dtype in (torch.float16, torch.bfloat16):
        for name in _HALF_BLOCKS:
            getattr(model, name).to(dtype)
        for module in model.modules():
            if isinstance(module, GroupNorm32):
                module.float()
    return model


def wrap_in_patcher(model: torch.nn.Module, load_device=None):
    """A ModelPatcher so ComfyUI loads/offloads the network with the UNet (load device: ComfyUI's torch device).

    The plain ModelPatcher on purpose: newer hosts wrap their own ControlNets in ``CoreModelPatcher``, which may
    be the dynamic-VRAM patcher that streams weights of ComfyUI-built modules; ours are torch modules whose
    leaf layers use comfy.ops (``use_comfy_ops``), which the plain patcher's (lowvram) loading handles in every
    host. Devices go by name: later hosts add keyword arguments (``fast_disk``) after them.
    """
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=load_device if load_device is not None else comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )
