"""Every shipped workflow in half-precision compute, and the DiffBIR ControlNet stored in fp8.

The half-precision test mode (tests/half_precision.py) makes ComfyUI's dtype policy choose what an NVIDIA GPU of
compute capability >= 8.0 chooses (``fp16``: default flags; ``bf16``: ``--bf16-unet``) while everything runs on
this machine's device. Each workflow runs with the tiny models of tests/test_workflows.py (2 steps, the 64-pixel
minimum short edge) once in float32 (the CPU's own policy) and once per mode; then:

* no node fails (a dtype mismatch raises in torch), and every model is where the mode puts it: the UNet in the
  mode's dtype without manual cast, the ControlNet (``auto``) in the same dtype, the VAE bf16, and torch did run
  convolutions in that dtype;
* every tensor output (images, latents, the condition latent) is finite, and its difference from float32 is within
  the bound of its stage (``BOUNDS``); stage 1 (float32 in every mode) is bit-identical.

The fp8 tests load the ControlNet in float8_e4m3fn / float8_e5m2 beside a UNet that ComfyUI's stock UNETLoader
loaded in fp8 (``weight_dtype``), and with ``auto`` under ``--fp8_e4m3fn-unet``. The differences measured are
printed at the end of the run (``half_precision.MEASURED``, also with -q).
"""

from __future__ import annotations

import collections
import copy

import pytest
import torch
from torch.overrides import TorchFunctionMode

import half_precision as hp
from comfy_host import node_module, node_output
from test_workflows import WORKFLOWS, by_class, for_test, input_png, load, tiny_files  # noqa: F401 - fixtures
from tiny_models import face_node_module, one_face

pytestmark = pytest.mark.usefixtures("one_thread")

# Which stage a node's outputs belong to. Stage 1 (with everything before it) and the sampling schedule are
# float32 in every mode.
STAGES = {
    "stage 1": ("LoadImage", "GetVideoComponents", "DiffBIRStage1Restore", "DiffBIRDegrade", "DiffBIRFaceDetectAlign",
                "BasicScheduler", "EmptyLatentImage"),
    "condition latent": ("DiffBIRLAControlNetApply", "VAEEncode"),
    "diffusion": ("DiffBIRSampler", "KSampler", "SamplerCustomAdvanced"),
    "decode and after": ("DiffBIRVAEDecode", "VAEDecode", "DiffBIRColorFix", "DiffBIRKeepAlpha", "ImageScale",
                         "DiffBIRFacePasteBack",
                         "SaveImage", "PreviewImage"),
}
STAGE_OF = {kind: stage for stage, kinds in STAGES.items() for kind in kinds}

# Bounds per stage and mode on (max |half - f32| / max |f32|, mean |half - f32| / mean |f32|) of each output
# (half_precision.difference). Each is twice the largest value measured by this test over the nine workflows, on
# ComfyUI 0.3.75 and 0.33.0 alike (torch 2.14.1, an Intel Xeon with AVX512-FP16 and AMX, one thread), rounded up:
# measured max / mean 0.039 / 0.023 (condition latent, the VAE in bf16 in both modes), fp16: 0.038 / 0.037
# (diffusion), 0.062 / 0.018 (decode and after); bf16: 0.13 / 0.11, 0.19 / 0.045. Stage 1 is float32: exactly
# equal.
BOUNDS = {
    ("stage 1", "fp16"): (0.0, 0.0), ("stage 1", "bf16"): (0.0, 0.0),
    ("condition latent", "fp16"): (0.08, 0.05), ("condition latent", "bf16"): (0.08, 0.05),
    ("diffusion", "fp16"): (0.08, 0.08), ("diffusion", "bf16"): (0.26, 0.22),
    ("decode and after", "fp16"): (0.13, 0.04), ("decode and after", "bf16"): (0.38, 0.1),
}


_FLOAT32: dict[str, dict[str, torch.Tensor]] = {}  # workflow -> its float32 outputs (computed once per session)


class ConvDtypes(TorchFunctionMode):
    """Counts the convolutions torch runs, by input dtype."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.conv2d or getattr(func, "__name__", "") == "conv2d":
            self.counts[args[0].dtype] += 1
        return func(*args, **(kwargs or {}))


def _prompt(comfy_host, path, png, monkeypatch):
    api = for_test(comfy_host.workflow_to_api(load(path)), png)
    if by_class(api, "DiffBIRFaceDetectAlign"):  # random detector weights cannot decide where faces are
        monkeypatch.setattr(face_node_module(), "detect_faces", one_face)
    return api


def _float32_outputs(comfy_host, path, api) -> dict[str, torch.Tensor]:
    if path.name not in _FLOAT32:
        comfy_host.run(api)
        _FLOAT32[path.name] = hp.stage_tensors(comfy_host, api)
    return _FLOAT32[path.name]


def _check_dtypes(comfy_host, api, mode, convs):
    want = hp.UNET_DTYPES[mode]
    for node_id, node in api.items():
        if node["class_type"] == "CheckpointLoaderSimple":
            model, vae = node_output(comfy_host, node_id, 0), node_output(comfy_host, node_id, 2)
            assert model.model.diffusion_model.dtype == want and model.model.manual_cast_dtype is None, \
                f"node {node_id}: UNet {model.model.diffusion_model.dtype}, cast {model.model.manual_cast_dtype}"
            assert vae.vae_dtype == hp.VAE_DTYPE, f"node {node_id}: VAE {vae.vae_dtype}"
        elif node["class_type"] == "DiffBIRLoadModels":
            control = node_output(comfy_host, node_id, 1)
            if control is not None:
                blocks = control.control_model.input_blocks
                assert control.dtype == want and blocks[1][0].in_layers[2].weight.dtype == want, \
                    f"node {node_id}: ControlNet {control.dtype}"
            stage1 = node_output(comfy_host, node_id, 0)
            if stage1 is not None:
                assert all(p.dtype == torch.float32 for p in stage1.patcher.model.parameters())
    assert convs.counts[want] > 0 and (want != torch.float16 or convs.counts[torch.bfloat16] > 0), convs.counts


@pytest.mark.parametrize("mode", hp.MODES)
@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_in_half_precision(comfy_host, tiny_files, input_png, monkeypatch, path, mode):
    if reason := hp.cpu_lacks_kernels({hp.VAE_DTYPE}):  # the full-size SD VAE; tiny fp16 networks are cheap anyway
        pytest.skip(reason)
    api = _prompt(comfy_host, path, input_png, monkeypatch)
    full = _float32_outputs(comfy_host, path, api)
    with hp.gpu_dtype_policy(comfy_host, mode):
        with ConvDtypes() as convs:
            comfy_host.run(api)
        _check_dtypes(comfy_host, api, mode, convs)
        half = hp.stage_tensors(comfy_host, api)
    assert half.keys() == full.keys()
    for key, tensor in half.items():
        assert torch.isfinite(tensor).all(), f"{key}: not finite in {mode}"
        assert tensor.shape == full[key].shape, key
        stage = STAGE_OF[key.split()[1].split("[")[0]]  # KeyError: a node without a stage here
        hp.within(f"{key} ({stage}) in {mode}", tensor, full[key], BOUNDS[(stage, mode)], f"{path.stem} {key}",
               (stage, mode))


# ------------------------------------------------------------------------------------------------ fp8 ControlNet

V21 = next(p for p in WORKFLOWS if p.name == "diffbir_v2.1_sr_x4.json")
# Bounds on the (max, mean) relative difference of the runs with fp8 weights from the same run with every weight in
# the mode's dtype (same compute dtype), as BOUNDS: twice the largest measured by this test (same machine, both
# hosts), rounded up. Measured max / mean, ControlNet fp8 alone: e4m3fn 0.16 / 0.13 (diffusion), 0.24 / 0.057
# (decode and after); e5m2 0.28 / 0.28, 0.47 / 0.13. ControlNet and UNet fp8: e4m3fn 0.28 / 0.24, 0.46 / 0.099;
# e5m2 0.44 / 0.43, 0.73 / 0.19. Rounding the tiny ControlNet's weights alone moves them by 2.7 % (e4m3fn) and
# 5.2 % (e5m2) in norm (bf16: 0.16 %, fp16: 0.02 %); two steps through random networks amplify that.
FP8_BOUNDS = {
    ("diffusion", "ControlNet fp8", "fp8_e4m3fn"): (0.33, 0.27),
    ("decode and after", "ControlNet fp8", "fp8_e4m3fn"): (0.48, 0.12),
    ("diffusion", "ControlNet fp8", "fp8_e5m2"): (0.57, 0.57),
    ("decode and after", "ControlNet fp8", "fp8_e5m2"): (0.95, 0.25),
    ("diffusion", "both fp8", "fp8_e4m3fn"): (0.56, 0.47),
    ("decode and after", "both fp8", "fp8_e4m3fn"): (0.92, 0.2),
    ("diffusion", "both fp8", "fp8_e5m2"): (0.88, 0.86),
    ("decode and after", "both fp8", "fp8_e5m2"): (1.5, 0.39),
}
FP8_STAGES = ("diffusion", "decode and after")


def _with_unet_loader(api: dict, unet_name: str, weight_dtype: str, controlnet_dtype: str) -> dict:
    """The workflow's prompt with the MODEL from the stock Load Diffusion Model (UNETLoader, `weight_dtype`) instead
    of the checkpoint, and the ControlNet loaded in `controlnet_dtype`."""
    api = copy.deepcopy(api)
    api["90"] = {"class_type": "UNETLoader", "inputs": {"unet_name": unet_name, "weight_dtype": weight_dtype}}
    (apply,) = by_class(api, "DiffBIRLAControlNetApply")
    apply["inputs"]["model"] = ["90", 0]
    (loader,) = by_class(api, "DiffBIRLoadModels")
    loader["inputs"]["dtype"] = controlnet_dtype
    return api


def _id_of(api: dict, class_type: str) -> str:
    (node_id,) = [i for i, n in api.items() if n["class_type"] == class_type]
    return node_id


def weight_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


@pytest.mark.parametrize("fp8, mode", [("fp8_e4m3fn", "fp16"), ("fp8_e5m2", "bf16")])
def test_fp8_controlnet_beside_an_fp8_unet(comfy_host, tiny_files, input_png, monkeypatch, fp8, mode):
    """Load DiffBIR Models' fp8 choice, beside a UNet in the mode's dtype and beside one that the stock UNETLoader
    loaded in the same fp8 type (`weight_dtype`): fp8 weights are stored in 8 bits and computed in the mode's dtype
    (ComfyUI's manual cast); the ControlNet's weights take about half the memory of fp16, and each result stays
    within FP8_BOUNDS of the same run with every weight in the mode's dtype."""
    from tiny_models import tiny_sd21_unet

    if reason := hp.cpu_lacks_kernels({hp.VAE_DTYPE}):
        pytest.skip(reason)
    unet = tiny_sd21_unet(tiny_files)
    api = _prompt(comfy_host, V21, input_png, monkeypatch)
    loader = _id_of(api, "DiffBIRLoadModels")
    compute, stored = hp.UNET_DTYPES[mode], getattr(torch, fp8.replace("fp8_", "float8_"))
    runs, planned = {}, []
    memory = node_module(comfy_host, "host.tiled_stage").memory  # the planner as the nodes call it
    plan_stage = memory.plan_stage
    monkeypatch.setattr(memory, "plan_stage", lambda stage, *a, **k: planned.append((stage, a[3])) or
                        plan_stage(stage, *a, **k))
    with hp.gpu_dtype_policy(comfy_host, mode):
        for name, unet_dtype, controlnet_dtype in (("half", "default", "auto"), ("ControlNet fp8", "default", fp8),
                                                   ("both fp8", fp8, fp8)):
            comfy_host.run(_with_unet_loader(api, unet, unet_dtype, controlnet_dtype))
            model, control = node_output(comfy_host, "90", 0), node_output(comfy_host, loader, 1)
            weight = model.model.diffusion_model.input_blocks[1][0].in_layers[2].weight.dtype
            assert weight == (compute if unet_dtype == "default" else stored), f"{name}: UNet weights {weight}"
            assert model.model.manual_cast_dtype == (None if unet_dtype == "default" else compute)
            weight = control.control_model.input_blocks[1][0].in_layers[2].weight.dtype
            assert weight == (compute if controlnet_dtype == "auto" else stored), f"{name}: ControlNet {weight}"
            assert control.control_model.block_dtype == compute and control.dtype == compute
            # the tiles are planned for activations in the compute dtype, not the weights' 8 bits
            assert [dtype for stage, dtype in planned if stage == "diffusion"] == [compute], planned
            planned.clear()
            runs[name] = hp.stage_tensors(comfy_host, api), weight_bytes(control.control_model)
            del model, control
            hp.release(comfy_host)
    half, half_bytes = runs.pop("half")
    for name, (out, size) in runs.items():
        ratio = size / half_bytes
        assert ratio < 0.6, f"{name}: fp8 ControlNet weights are {ratio:.2f} of the {mode} ones"
        assert out.keys() == half.keys()
        for key, tensor in out.items():
            assert torch.isfinite(tensor).all(), f"{name}: {key} not finite"
            stage = STAGE_OF[key.split()[1].split("[")[0]]
            if stage not in FP8_STAGES:  # stage 1 and the condition latent involve neither network
                assert torch.equal(tensor, half[key]), f"{name}: {key} changed ({stage})"
                continue
            hp.within(f"{name}: {key} ({stage})", tensor, half[key], FP8_BOUNDS[(stage, name, fp8)],
                   f"{V21.stem} {key}", (f"{stage}, {name} vs {mode} weights", fp8))
    hp.NOTES.append(f"{fp8}: tiny ControlNet weight bytes / {mode}'s {ratio:.3f}")


def test_auto_controlnet_follows_an_fp8_unet_command_line(comfy_host, tiny_files, input_png, monkeypatch):
    """`--fp8_e4m3fn-unet` (ComfyUI stores every UNet in fp8): the `auto` ControlNet is stored in fp8 too, as
    ComfyUI's own ControlNet loader does, and on this CPU's own policy both compute in float32 (manual cast)."""
    import comfy.model_management as mm

    api = _prompt(comfy_host, V21, input_png, monkeypatch)
    loader, ckpt = _id_of(api, "DiffBIRLoadModels"), _id_of(api, "CheckpointLoaderSimple")
    hp.release(comfy_host)
    monkeypatch.setattr(mm.args, "fp8_e4m3fn_unet", True)
    try:
        outputs = comfy_host.run(api)
        model, control = node_output(comfy_host, ckpt, 0), node_output(comfy_host, loader, 1)
        want = None if mm.get_torch_device().type != "cpu" else torch.float32  # CUDA: the GPU's own choice
        assert model.model.diffusion_model.input_blocks[1][0].in_layers[2].weight.dtype == torch.float8_e4m3fn
        assert control.control_model.input_blocks[1][0].in_layers[2].weight.dtype == torch.float8_e4m3fn
        assert control.dtype == model.model.manual_cast_dtype and (want is None or control.dtype == want)
        tensors = hp.stage_tensors(comfy_host, api)
    finally:
        hp.release(comfy_host)
    assert all(torch.isfinite(t).all() for t in tensors.values())
    (save,) = [i for i, n in api.items() if n["class_type"] == "SaveImage"]
    assert outputs[save]["images"]


# ------------------------------------------------------------------------------------------------ other paths


def _variant(api: dict, variant: str) -> dict:
    """The v2.1 prompt with every stage tiled by hand (128-pixel tiles, stride 64), or with rgb-space restoration
    guidance at the first of its two steps (a gradient through the VAE decoder in the mode's VAE dtype; guidance
    needs untiled diffusion)."""
    api = copy.deepcopy(api)
    (sampler,) = by_class(api, "DiffBIRSampler")
    if variant == "tiled":
        (apply,) = by_class(api, "DiffBIRLAControlNetApply")
        (decode,) = by_class(api, "DiffBIRVAEDecode")
        sampler["inputs"].update(tile_size=128, tile_stride=64, tile_plan="manual")
        apply["inputs"].update(vae_tile_size=128, vae_tile_stride=64, vae_tile_plan="manual")
        decode["inputs"].update(tile_size=128, tile_stride=64, tile_plan="manual")
    else:
        (ckpt,) = [i for i, n in api.items() if n["class_type"] == "CheckpointLoaderSimple"]
        sampler["inputs"].update(guidance="w_mse", guidance_space="rgb", guidance_t_stop=500, vae=[ckpt, 2])
    return api


@pytest.mark.parametrize("mode", hp.MODES)
@pytest.mark.parametrize("variant", ["tiled", "guided"])
def test_tiled_or_guided_restore_in_half_precision(comfy_host, tiny_files, input_png, monkeypatch, variant, mode):
    """Tiled condition encode, diffusion and decode; rgb-space restoration guidance: each mode against float32."""
    if reason := hp.cpu_lacks_kernels({hp.VAE_DTYPE}):
        pytest.skip(reason)
    api = _variant(_prompt(comfy_host, V21, input_png, monkeypatch), variant)
    name = f"{variant} {V21.name}"
    if name not in _FLOAT32:
        comfy_host.run(api)
        _FLOAT32[name] = hp.stage_tensors(comfy_host, api)
    full = _FLOAT32[name]
    with hp.gpu_dtype_policy(comfy_host, mode):
        comfy_host.run(api)
        half = hp.stage_tensors(comfy_host, api)
    assert half.keys() == full.keys()
    for key, tensor in half.items():
        assert torch.isfinite(tensor).all(), f"{key}: not finite in {mode}"
        stage = STAGE_OF[key.split()[1].split("[")[0]]
        hp.within(f"{variant}: {key} ({stage}) in {mode}", tensor, full[key], BOUNDS[(stage, mode)],
                  f"{variant} {V21.stem} {key}", (stage, mode))
