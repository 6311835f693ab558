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


def cast_controlnet(model: torch.nn.Module, dtype: torch.dtype, compute: torch.dtype | None = None) -> torch.nn.Module:
    """float32 everywhere, then the official half-precision policy for fp16/bf16.

    An 8-bit `dtype` (float8_e4m3fn / float8_e5m2) stores those blocks in 8 bits and computes them in `compute`
    (default fp16): ComfyUI's manual cast, as for an fp8 UNet. Their layers must be comfy.ops layers
    (``use_comfy_ops``, before or after this call); each one casts its weights to its input's dtype per call.
    """
    model.float()
    half = dtype in (torch.float16, torch.bfloat16)
    fp8 = dtype in (torch.float8_e4m3fn, torch.float8_e5m2)
    if half or fp8:
        for name in _HALF_BLOCKS:
            getattr(model, name).to(dtype)
        for module in model.modules():
            if isinstance(module, GroupNorm32):
                module.float()
    if fp8:
        model.compute_dtype = compute or torch.float16  # UNetEncoder.block_dtype: what the blocks compute in
        _cast_weights_per_call([getattr(model, name) for name in _HALF_BLOCKS])
    return model


def _cast_weights_per_call(blocks: list[torch.nn.Module]) -> None:
    """Make every layer of `blocks` cast its weights to its input's dtype at each call (ComfyUI's manual_cast ops
    classes do it by a class attribute; an instance attribute survives ComfyUI's lowvram loading, which sets it
    and puts the previous value back on unload)."""
    swapped = _ops_classes()  # the classes use_comfy_ops swaps (exact types), or already swapped ones
    for block in blocks:
        for name, module in block.named_modules():
            if type(module) in swapped or hasattr(module, "forward_comfy_cast_weights"):
                module.comfy_cast_weights = True
            elif any(p.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) for p in module.parameters(recurse=False)):
                raise TypeError(f"DiffBIR: fp8 weights of {type(module).__name__} ({name}) cannot be cast per call")


def inference_dtype(patcher) -> torch.dtype:
    """The dtype a ComfyUI MODEL computes in: its manual-cast dtype when its weights are stored in another one
    (fp8 weights, or fp16 weights on a device that computes float32), else its weights' (``model_dtype()``).
    What the activations, and so the memory planner's working memory, are made of."""
    model = patcher.model
    cast = getattr(model, "manual_cast_dtype", None)
    return cast if cast is not None else patcher.model_dtype()


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
