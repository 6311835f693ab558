"""Building each network the DiffBIR loaders offer from its file, the ComfyUI way (ModelPatcher, device, dtype).

What a file is, and which DiffBIR version it belongs to, is decided by ``diffbir_core.loader.load_network`` from
its keys and shapes (plus the file name or our converter's metadata for the version); a file of the wrong kind
fails with the core's message naming the file, what it looks like and what the slot expects.
"""

from __future__ import annotations

import comfy.model_management
import folder_paths
import torch

from diffbir_core.checkpoint import read_checkpoint
from diffbir_core.detect import STAGE1_KINDS, split_v1_full
from diffbir_core.loader import WrongCheckpointError, load_network

from .control import DiffBIRControl
from .model_files import FACE_FOLDER
from .patching import cast_controlnet, use_comfy_ops, wrap_in_patcher
from .types import Stage1Model

# The `dtype` choices of Load DiffBIR Models, in the order the widget lists them (new ones are appended, so saved
# workflows keep their values). fp8: weights stored in 8 bits, computed in ComfyUI's manual-cast dtype.
DTYPES = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
          "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
               torch.float8_e4m3fn: "float8_e4m3fn", torch.float8_e5m2: "float8_e5m2"}
FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)

DETECTORS = ("detection_Resnet50_Final.pth", "detection_mobilenet0.25_Final.pth")  # facexlib's; DiffBIR uses the first
GET_DETECTOR = (f"Pick facexlib's {DETECTORS[0]} (or {DETECTORS[1]}): the node downloads it into "
                f"models/{FACE_FOLDER} when it runs (offline: put it there from github.com/xinntao/facexlib/releases "
                f"v0.1.0, or run `python -m diffbir_cli download {DETECTORS[0]}` where there is a network).")


def resolve_dtype(dtype_name: str, device: torch.device, params: int) -> tuple[torch.dtype, torch.dtype]:
    """(storage, compute) dtypes of the ControlNet's half-precision blocks for the loader's `dtype` input on `device`.

    fp8 (chosen, or `auto` when ComfyUI stores UNets in fp8, e.g. `--fp8_e4m3fn-unet`) is stored as such and
    computed in the dtype ComfyUI's manual cast gives an fp8 UNet on `device` (fp16 or bf16 on a GPU, float32 on a
    CPU), exactly as the stock ControlNet loader does. Otherwise weights are stored in the compute dtype: a dtype
    the device cannot compute in falls back to ComfyUI's choice for it (e.g. fp16 on a CPU runs as float32).
    """
    requested = DTYPES[dtype_name]
    mm = comfy.model_management
    if requested is None:
        requested = mm.unet_dtype(device=device, model_params=params,
                                  supported_dtypes=[torch.float16, torch.bfloat16, torch.float32])
    if requested not in DTYPE_NAMES:  # another 8-bit type forced on the command line (e8m0fnu): not supported here
        requested = torch.float16 if mm.should_use_fp16(device) else torch.float32
    cast = mm.unet_manual_cast(requested, device)
    if requested in FP8:
        return requested, cast if cast is not None else torch.float16
    cast = cast if cast is not None else requested
    return cast, cast


def load_stage1(path: str) -> tuple[Stage1Model, bool, str]:
    """(stage-1 payload, whether the file also holds SD 2.1 (a v1 full checkpoint), info line)."""
    net = load_network(path, STAGE1_KINDS, "stage 1")
    model = net.model.float().eval()
    stage1 = Stage1Model(
        patcher=wrap_in_patcher(model),
        kind=net.kind,
        version=net.version,
        scale=int(getattr(model, "scale", 1)),
        size_multiple=int(getattr(model, "size_multiple", 1)),
        name=net.name,
    )
    info = (f"stage 1: {net.name} -> {net.detection.looks_like}; kind {net.kind}, version {net.version or 'unknown'}, "
            f"scale x{stage1.scale}, size multiple {stage1.size_multiple}, float32")
    return stage1, "sd" in net.extras, info


_NEEDS = {
    "v2.1": "needs the zero-terminal-SNR v-prediction SD 2.1 (sd2.1-base-zsnr-laionaes5.ckpt)",
    "v2": "needs SD 2.1-base (v2-1_512-ema-pruned.ckpt, eps)",
    "v1": "needs SD 2.1-base (v2-1_512-ema-pruned.ckpt, eps)",
}


def load_controlnet(path: str, dtype_name: str) -> tuple[DiffBIRControl, bool, str]:
    """(the ControlNet as a CONTROL_NET, whether the file also holds SD 2.1, info line)."""
    net = load_network(path, ("controlnet",), "ControlNet")
    device = comfy.model_management.get_torch_device()
    params = sum(p.numel() for p in net.model.parameters())
    dtype, compute = resolve_dtype(dtype_name, device, params)
    model = use_comfy_ops(cast_controlnet(net.model, dtype, compute).eval())
    control = DiffBIRControl(wrap_in_patcher(model), version=net.version, name=net.name, dtype=compute)
    needs = _NEEDS.get(net.version, "version unknown: name the file with v1/v2/v2.1 or convert it with "
                                    "`python -m diffbir_core.convert --version`")
    info = (f"ControlNet: {net.name} -> {net.detection.looks_like}; version {net.version or 'unknown'} ({needs}); "
            f"{control.num_controls} controls, {params / 1e6:.1f} M parameters, {_precision(dtype, compute)} on {device}")
    return control, "sd" in net.extras, info


def _precision(storage: torch.dtype, compute: torch.dtype) -> str:
    if storage == compute:
        return DTYPE_NAMES[storage]
    return f"{DTYPE_NAMES[storage]} weights computed in {DTYPE_NAMES[compute]}"


def load_sd_parts(path: str, dtype_name: str):
    """MODEL, CLIP, VAE of the SD 2.1 part of a v1 full checkpoint, loaded by ComfyUI itself.

    The file is read again (safely) rather than keeping its SD tensors alive in the network cache.
    """
    import comfy.sd

    sd = split_v1_full(read_checkpoint(path)[0])["sd"]
    model_options = {} if DTYPES[dtype_name] is None else {"dtype": DTYPES[dtype_name]}
    out = comfy.sd.load_state_dict_guess_config(
        sd, output_vae=True, output_clip=True,
        embedding_directory=folder_paths.get_folder_paths("embeddings"), model_options=model_options)
    if out is None:
        raise ValueError("DiffBIR: ComfyUI did not recognise the SD part of this v1 checkpoint.")
    return tuple(out[:3])


def load_detector(path: str):
    """(RetinaFace in a ModelPatcher, info line); a file of another kind names where to get the right one."""
    try:
        net = load_network(path, ("retinaface",), "face detector")
    except WrongCheckpointError as err:
        raise WrongCheckpointError(f"detector_name: {err} {GET_DETECTOR}") from None
    patcher = wrap_in_patcher(net.model.float().eval())
    params = sum(p.numel() for p in net.model.parameters())
    return patcher, f"RetinaFace {net.config['backbone']} ({params / 1e6:.2f} M parameters) from {net.name}"
