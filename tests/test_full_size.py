"""Full-size SD 2.1 + full-size DiffBIR ControlNet through the stock nodes (random weights).

The checkpoint has every key of the official SD 2.1 LDM file that the official loader reads
(tests/manifests/sd21_base_keys_read.json) and is loaded by the stock Load Checkpoint; the ControlNet is a
bare official v2 state dict (tests/manifests/controlnet_v2_v2.1_v1converted.json) saved with torch.save as
`v2.pth` and loaded by Load DiffBIR Models. One KSampler step at 256x256 with cfg 4 (cond and uncond
batched), VAE Decode: the image must come out finite and 256x256. The same step then runs in the half-precision
test mode (tests/half_precision.py), fp16 and bf16, against that float32 result. Nothing is committed: both
files live in the session's temporary models folder and are deleted afterwards, and the models are unloaded so
the rest of the session does not carry ~7 GB.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import shutil
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

import half_precision as hp
from comfy_host import node_module, node_output
from random_checkpoints import manifest_shapes

SIZE = 256
SUBFOLDER = "full_size"


def random_weights(shapes: dict[str, list[int]], seed: int) -> dict[str, torch.Tensor]:
    """fp16 weights that keep a deep random network's activations O(1): matrices and kernels N(0, 1/fan_in),
    norm scales 1, biases 0 (so ComfyUI's SD2 test for v-prediction, a large norm bias spread, reads eps).

    Drawing 1.7 B normal numbers costs half a minute on two cores, so each tensor is a scaled slice, at a
    random offset, of one seeded pool a little larger than the largest tensor.
    """
    gen = torch.Generator().manual_seed(seed)
    largest = max(math.prod(s) for s in shapes.values())
    pool = torch.randn(largest + (1 << 20), generator=gen).half()
    out = {}
    for key, shape in shapes.items():
        n = math.prod(shape)
        if len(shape) >= 2:
            offset = int(torch.randint(0, pool.numel() - n + 1, (1,), generator=gen))
            t = pool[offset : offset + n].view(shape) * math.prod(shape[1:]) ** -0.5
        elif key.endswith("logit_scale"):
            t = torch.full(shape, math.log(100.0), dtype=torch.float16)
        elif key.endswith("bias"):
            t = torch.zeros(shape, dtype=torch.float16)
        else:
            t = torch.ones(shape, dtype=torch.float16)
        out[key] = t
    return out


def release(comfy_host):
    """Drop every reference to the full-size models: executor cache, loader cache, ComfyUI's loaded models."""
    import comfy.model_management as mm

    comfy_host.executor.reset()
    node_module(comfy_host, "host.model_cache")._CACHE.clear()
    mm.unload_all_models()
    gc.collect()
    mm.soft_empty_cache()
    with contextlib.suppress(OSError, AttributeError):  # glibc keeps freed weight buffers otherwise
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def prompt(dtype: str = "auto") -> dict:
    """Load Checkpoint + Load DiffBIR Models (ControlNet `dtype`), LAControlNet Apply, one KSampler step, VAE Decode."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": f"{SUBFOLDER}/sd21_random.safetensors"}},
        "2": {"class_type": "DiffBIRLoadModels",
              "inputs": {"stage1_name": "none", "controlnet_name": f"{SUBFOLDER}/v2.pth", "dtype": dtype}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1,
                                                     "color": 0x806040}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a sharp photo", "clip": ["1", 1]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "low quality, blurry", "clip": ["1", 1]}},
        "6": {"class_type": "DiffBIRLAControlNetApply",
              "inputs": {"positive": ["4", 0], "negative": ["5", 0], "control_net": ["2", 1], "image": ["3", 0],
                         "vae": ["1", 2], "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0,
                         "model": ["1", 0]}},
        "7": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "8": {"class_type": "KSampler",
              "inputs": {"model": ["6", 2], "positive": ["6", 0], "negative": ["6", 1], "latent_image": ["7", 0],
                         "seed": 231, "steps": 1, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal",
                         "denoise": 1.0}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "10": {"class_type": "PreviewAny", "inputs": {"source": ["9", 0]}},
        "11": {"class_type": "PreviewAny", "inputs": {"source": ["2", 5]}},
    }


@pytest.fixture(scope="module")
def full_size_files(comfy_host, comfy_models_dir):
    """The full-size random SD 2.1 checkpoint and v2 ControlNet in the session's models folder (deleted after
    the module); nothing stays loaded between the tests that use them."""
    ckpt_dir = comfy_models_dir / "checkpoints" / SUBFOLDER
    cn_dir = comfy_models_dir / "diffbir" / SUBFOLDER
    ckpt_dir.mkdir(exist_ok=True)
    cn_dir.mkdir(exist_ok=True)
    start = time.monotonic()
    try:
        sd = random_weights(manifest_shapes("sd21_base_keys_read.json"), seed=0)
        assert sum(t.numel() for t in sd.values()) > 1.2e9
        save_file(sd, str(ckpt_dir / "sd21_random.safetensors"))
        del sd
        cn = random_weights(manifest_shapes("controlnet_v2_v2.1_v1converted.json"), seed=1)
        assert cn["input_blocks.0.0.weight"].shape == (320, 8, 3, 3)
        torch.save(cn, cn_dir / "v2.pth")  # bare state dict, official v2 layout
        del cn
        print(f"full-size files written in {time.monotonic() - start:.1f} s")
        yield comfy_models_dir
    finally:
        release(comfy_host)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        shutil.rmtree(cn_dir, ignore_errors=True)
        comfy_host.refresh_models()


_FLOAT32: dict[str, torch.Tensor] = {}  # the float32 run's outputs, for the half-precision runs to compare with


def outputs(comfy_host) -> dict[str, torch.Tensor]:
    """The last run's condition latent, sampled latent and image (float32 copies)."""
    positive = node_output(comfy_host, "6", 0)
    return {"condition latent": positive[0][1]["control"].condition_latent.float().clone(),
            "diffusion": node_output(comfy_host, "8", 0)["samples"].float().clone(),
            "decode": node_output(comfy_host, "9", 0).float().clone()}


@pytest.mark.slow
def test_full_size_sd21_and_controlnet_sample_through_stock_nodes(comfy_host, full_size_files):
    start = time.monotonic()
    try:
        out = comfy_host.run(prompt())
        info = "".join(out["11"]["text"])
        assert "v2.pth" in info and "version v2 " in info and "13 controls" in info, info
        image = node_output(comfy_host, "9")
        assert image.shape == (1, SIZE, SIZE, 3)
        assert torch.isfinite(image).all()
        params = sum(p.numel() for p in node_output(comfy_host, "2", 1).control_model.parameters())
        assert params > 3.6e8
        _FLOAT32.update(outputs(comfy_host))
    finally:
        release(comfy_host)
    print(f"full-size test: load + sample + decode {time.monotonic() - start:.1f} s")


# Bounds on the (max, mean) relative difference from the float32 run (half_precision.difference): twice the
# largest measured by this test (ComfyUI 0.3.75 and 0.33.0, torch 2.14.1, an Intel Xeon with AVX512-FP16 and
# AMX), rounded up. Measured max / mean: condition latent (VAE bf16 in both modes) 0.019 / 0.021; fp16:
# diffusion 0.0035 / 0.0031, decode 0.021 / 0.0037; bf16: diffusion 0.027 / 0.024, decode 0.041 / 0.0082.
HALF_BOUNDS = {
    "fp16": {"condition latent": (0.04, 0.042), "diffusion": (0.0071, 0.0062), "decode": (0.042, 0.0075)},
    "bf16": {"condition latent": (0.04, 0.042), "diffusion": (0.054, 0.048), "decode": (0.082, 0.017)},
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", hp.MODES)
def test_full_size_step_in_half_precision(comfy_host, full_size_files, mode):
    """The same step with the dtypes a GPU picks (tests/half_precision.py): UNet and ControlNet in the mode's dtype,
    VAE bf16; finite, and each stage within its bound of the float32 run."""
    if reason := hp.cpu_lacks_kernels({hp.UNET_DTYPES[mode], hp.VAE_DTYPE}):
        pytest.skip(reason)
    if not _FLOAT32:  # run alone
        test_full_size_sd21_and_controlnet_sample_through_stock_nodes(comfy_host, full_size_files)
    start = time.monotonic()
    with hp.gpu_dtype_policy(comfy_host, mode):
        comfy_host.run(prompt())
        want = hp.UNET_DTYPES[mode]
        model, control = node_output(comfy_host, "1", 0), node_output(comfy_host, "2", 1)
        assert model.model.diffusion_model.dtype == want and model.model.manual_cast_dtype is None
        assert control.dtype == want and node_output(comfy_host, "1", 2).vae_dtype == hp.VAE_DTYPE
        del model, control
        half = outputs(comfy_host)
    for stage, tensor in half.items():
        assert torch.isfinite(tensor).all(), f"{stage}: not finite in {mode}"
        hp.within(f"full-size {stage} in {mode}", tensor, _FLOAT32[stage], HALF_BOUNDS[mode][stage],
                  "SD 2.1 + v2 ControlNet, 256 px, 1 step", (f"full-size {stage}", mode))
    print(f"full-size test in {mode}: load + sample + decode {time.monotonic() - start:.1f} s")
