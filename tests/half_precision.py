"""The half-precision test mode: ComfyUI's dtype policy as a GPU applies it, in the in-process host on any device.

On a CPU ComfyUI computes in float32 whatever it stores (``should_use_fp16`` / ``should_use_bf16`` are False for a
CPU, so ``unet_dtype`` picks float32 and ``unet_manual_cast`` casts half-precision weights to float32), so the code
paths a GPU user takes never run there. ``gpu_dtype_policy(host, mode)`` makes the host choose, by its own code,
what it chooses on a GPU, while the tensors stay on this machine's device (torch computes fp16 and bf16 on a CPU
too, fast where oneDNN has the kernels: see ``cpu_lacks_kernels``):

* ``fp16``: ``should_use_fp16`` and ``should_use_bf16`` answer True, as on an NVIDIA GPU of compute capability
  8.0 or newer (RTX 30xx / 40xx, A100, H100) with default flags. ComfyUI then picks the SD 2.1 UNet fp16 (the
  first of its ``supported_inference_dtypes``; no manual cast), the SD VAE bf16 (its ``working_dtypes`` are bf16
  and float32 only), CLIP stored fp16 and computed in float32 (``comfy.ops.manual_cast``, as everywhere), fp16
  as the compute dtype of fp8 weights (``unet_manual_cast``); our loader's ``auto`` ControlNet is fp16 with
  DiffBIR's half policy (``nodes/host/loaders.py`` ``resolve_dtype``).
* ``bf16``: ``should_use_fp16`` answers False, ``should_use_bf16`` True: a device where ComfyUI deems fp16
  unusable, so each of its choices between the two falls to bf16: the UNet bf16 (what ``--bf16-unet`` gives on
  the GPUs above), the VAE bf16, fp8 weights computed in bf16, the ``auto`` ControlNet bf16; CLIP as above.

Stage 1 stays float32 in both: Load DiffBIR Models always loads it in float32 (SwinIR is not fp16-safe), and the
stock upscale-model path runs spandrel's descriptor in the dtype it was loaded in (float32).

A test mode, not product behaviour: nothing under nodes/ or diffbir_core/ reads it. It only replaces two policy
functions of ``comfy.model_management`` for the duration of the ``with`` block and clears what would carry a dtype
across the switch (newer hosts' cached LoRA compute dtype, the executor's output cache, our loader cache and the
loaded models). On an NVIDIA GPU of that class the ``fp16`` mode changes nothing. Plain module (no pytest import).
"""

from __future__ import annotations

import collections
import contextlib
import gc

import torch

MODES = ("fp16", "bf16")
UNET_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}  # also the ControlNet's, and fp8 weights' compute
VAE_DTYPE = torch.bfloat16  # ComfyUI's SD VAE, in both modes


def release(host) -> None:
    """Forget every loaded model and cached output, so the next prompt loads its models under the policy in force."""
    import comfy.model_management as mm

    from comfy_host import node_module

    host.executor.reset()
    node_module(host, "host.model_cache")._CACHE.clear()
    mm.unload_all_models()
    gc.collect()
    mm.soft_empty_cache()


@contextlib.contextmanager
def gpu_dtype_policy(host, mode: str):
    """Within the block ComfyUI picks dtypes as a GPU makes it (see the module docstring); `mode` 'fp16' or 'bf16'.
    The models loaded before and within the block are released on entry and exit."""
    import comfy.model_management as mm

    if mode not in MODES:
        raise ValueError(f"half-precision mode {mode!r}: one of {MODES}")
    saved = (mm.should_use_fp16, mm.should_use_bf16)
    lora_cache = getattr(mm, "LORA_COMPUTE_DTYPES", None)  # newer hosts cache a per-device choice
    release(host)

    def fp16(*args, **kwargs):
        return mode == "fp16"

    def bf16(*args, **kwargs):
        return True

    mm.should_use_fp16, mm.should_use_bf16 = fp16, bf16
    if lora_cache is not None:
        lora_cache.clear()
    try:
        yield mode
    finally:
        mm.should_use_fp16, mm.should_use_bf16 = saved
        if lora_cache is not None:
            lora_cache.clear()
        release(host)


def cpu_lacks_kernels(dtypes) -> str | None:
    """Why torch on this machine would compute `dtypes` orders of magnitude slower than float32, or None.

    On a CPU torch has fast fp16 / bf16 convolutions only through oneDNN, which needs AVX512-FP16 or AMX for fp16
    and AVX-512 for bf16; elsewhere it falls back to a reference convolution (~400x slower than float32 at SD 2.1
    sizes, measured). On CUDA: None. Call it after the host booted."""
    import comfy.model_management as mm

    if mm.get_torch_device().type != "cpu":
        return None
    check = {torch.float16: "_is_mkldnn_fp16_supported", torch.bfloat16: "_is_mkldnn_bf16_supported"}
    for dtype in dtypes:
        supported = getattr(torch.ops.mkldnn, check[dtype], None)
        if not (torch.backends.mkldnn.is_available() and supported is not None and supported()):
            return (f"this CPU has no oneDNN {dtype} kernels (torch {torch.__version__}): torch's fallback "
                    f"convolution would take hours")
    return None


# ---------------------------------------------------------------------------------------------- comparing runs


def stage_tensors(host, api: dict) -> dict[str, torch.Tensor]:
    """Every tensor the last prompt's nodes output, float32 copies on the CPU, keyed ``"<id> <class>[<slot>]"``:
    IMAGE and MASK tensors, LATENT samples, and the condition latent a DiffBIR ControlNet carries in a
    CONDITIONING (LAControlNet Apply's VAE encode of the stage-1 image)."""
    import inspect

    out = {}
    for node_id, node in api.items():
        entry = host.executor.caches.outputs.get(node_id)
        if inspect.isawaitable(entry):
            entry = host.loop.run_until_complete(entry)
        slots = getattr(entry, "outputs", entry)
        if slots is None:
            continue
        for slot, values in enumerate(slots):
            for value in values[:1]:
                tensor = _tensor_of(value)
                if tensor is not None:
                    out[f"{node_id} {node['class_type']}[{slot}]"] = tensor.detach().float().cpu().clone()
    return out


def _tensor_of(value):
    if torch.is_tensor(value) and value.is_floating_point():
        return value
    if isinstance(value, dict) and torch.is_tensor(value.get("samples")):
        return value["samples"]
    if isinstance(value, list) and value and isinstance(value[0], (list, tuple)) and len(value[0]) == 2 \
            and isinstance(value[0][1], dict):  # CONDITIONING: the DiffBIR condition latent, when there is one
        latent = getattr(value[0][1].get("control"), "condition_latent", None)
        return latent if torch.is_tensor(latent) else None
    return None


def difference(half: torch.Tensor, full: torch.Tensor) -> tuple[float, float]:
    """(max |half - full| / max |full|, mean |half - full| / mean |full|): the largest and the average error
    relative to the float32 output's own scale (pixels in [0, 1], latents of any range alike)."""
    diff = (half - full).abs()
    return (float(diff.max() / full.abs().max().clamp_min(1e-12)),
            float(diff.mean() / full.abs().mean().clamp_min(1e-12)))


# (what, mode) -> [(max relative difference, mean relative difference, where)], printed by tests/conftest.py
MEASURED: dict[tuple[str, str], list[tuple[float, float, str]]] = collections.defaultdict(list)
NOTES: list[str] = []  # other figures, printed after them


def within(what: str, half: torch.Tensor, full: torch.Tensor, bound: tuple[float, float], where: str, key) -> None:
    """Record the difference of `half` from `full` in MEASURED under `key` and assert it within `bound`
    (max, mean relative difference, see `difference`)."""
    worst, mean = difference(half, full)
    MEASURED[key].append((worst, mean, where))
    assert worst <= bound[0] and mean <= bound[1], \
        f"{what}: max / mean relative difference {worst:.3g} / {mean:.3g} > bound {bound[0]} / {bound[1]}"


def summary() -> list[str]:
    """One line per (what, mode): the largest max and mean relative differences measured, where the largest was,
    and the median of the max differences."""
    lines = []
    for (what, mode), rows in MEASURED.items():
        worst = max(rows)
        middle = sorted(r[0] for r in rows)[len(rows) // 2]
        lines.append(f"{mode} {what}: max rel. difference {worst[0]:.3g} (at {worst[2]}), largest mean rel. "
                     f"{max(r[1] for r in rows):.3g}, median max over {len(rows)} outputs {middle:.3g}")
    return lines + NOTES
