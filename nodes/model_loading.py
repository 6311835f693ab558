"""Load DiffBIR Models: the stage-1 restorer and the IRControlNet/LAControlNet from the model folders.

Files are listed from ``models/diffbir`` (registered here through folder_paths, so extra_model_paths.yaml
entries named ``diffbir`` are honoured) and, prefixed with their folder name, from ComfyUI's own
``upscale_models`` (stage 1) and ``controlnet`` (ControlNet) folders. What a file is, and which DiffBIR
version it belongs to, is decided by ``diffbir_core.loader.load_network`` from its keys and shapes (plus the
file name or our converter's metadata for the version); a file of the wrong kind fails with the core's
message naming the file, what it looks like and what the slot expects.
"""

from __future__ import annotations

import logging
import os
from collections import Counter

import comfy.model_management
import folder_paths
import torch

from ..diffbir_core.checkpoint import read_checkpoint
from ..diffbir_core.detect import STAGE1_KINDS, split_v1_full
from ..diffbir_core.loader import load_network
from .control import DiffBIRControl, cast_controlnet, use_comfy_ops, wrap_in_patcher
from .types import STAGE1_TYPE, Stage1Model

log = logging.getLogger(__name__)

FOLDER = "diffbir"
NONE = "none"
STAGE1_EXTRA_FOLDER = "upscale_models"
CONTROLNET_EXTRA_FOLDER = "controlnet"
DTYPES = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def register_model_folder(name: str = FOLDER) -> None:
    """models/<name> as the folder type `name` (kept beside any paths extra_model_paths.yaml added)."""
    default = os.path.join(folder_paths.models_dir, name)
    exts = set(folder_paths.supported_pt_extensions)
    entry = folder_paths.folder_names_and_paths.get(name)
    if entry is None:
        folder_paths.folder_names_and_paths[name] = ([default], exts)
        return
    paths, old_exts = entry
    if default not in paths:
        paths.append(default)
    # A folder first created by extra_model_paths.yaml (or another pack) has no extension filter: list only
    # model files.
    folder_paths.folder_names_and_paths[name] = (paths, exts | set(old_exts))


register_model_folder()


def _files(folder: str) -> list[str]:
    try:
        return list(folder_paths.get_filename_list(folder))
    except KeyError:  # folder type unknown to this ComfyUI
        return []


def choices(extra_folder: str) -> list[str]:
    """'none', the diffbir files, then '<extra_folder>/<file>' for the host folder's files (deduplicated)."""
    own = _files(FOLDER)
    seen = set(own)
    extra = []
    for name in _files(extra_folder):
        label = f"{extra_folder}/{name}"
        if label not in seen:
            seen.add(label)
            extra.append(label)
    return [NONE] + own + extra


def resolve(name: str, extra_folder: str) -> str | None:
    """Full path of a combo entry (None for 'none')."""
    if not name or name == NONE:
        return None
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None and name.startswith(extra_folder + "/"):
        path = folder_paths.get_full_path(extra_folder, name[len(extra_folder) + 1 :])
    if path is None:
        raise FileNotFoundError(
            f"DiffBIR: model file '{name}' not found in models/{FOLDER} or models/{extra_folder} (moved or "
            "deleted?). Refresh the node list (press R) and pick an existing file.")
    return path


def _file_key(path: str | None):
    if path is None:
        return None
    st = os.stat(path)
    return (os.path.realpath(path), st.st_mtime_ns, st.st_size)


def _resolve_dtype(dtype_name: str, device: torch.device, params: int) -> torch.dtype:
    requested = DTYPES[dtype_name]
    mm = comfy.model_management
    if requested is None:
        requested = mm.unet_dtype(device=device, model_params=params,
                                  supported_dtypes=[torch.float16, torch.bfloat16, torch.float32])
    if requested not in _DTYPE_NAMES:  # e.g. fp8 forced on the command line: not supported here
        requested = torch.float16 if mm.should_use_fp16(device) else torch.float32
    cast = mm.unet_manual_cast(requested, device)
    # Weights are stored in the compute dtype: a dtype the device cannot compute in falls back to ComfyUI's
    # choice for it (e.g. fp16 on a CPU runs as float32).
    return cast if cast is not None else requested


# One entry per slot: re-running a prompt with the same file, mtime and dtype reuses the loaded network,
# and choosing another file releases the previous one.
_CACHE: dict[str, tuple] = {}
# Files read from disk, per slot, since start-up (each read is also logged): shows that nothing loads twice.
LOAD_COUNTS: Counter = Counter()


def _cached(slot: str, key, build, path: str):
    hit = _CACHE.get(slot)
    if hit is not None and hit[0] == key:
        return hit[1]
    _CACHE.pop(slot, None)
    LOAD_COUNTS[slot] += 1
    log.info("DiffBIR: reading the %s file %s from disk (%s read #%d)", slot, os.path.basename(path), slot,
             LOAD_COUNTS[slot])
    value = build()
    _CACHE[slot] = (key, value)
    return value


def _load_stage1(path: str) -> tuple[Stage1Model, dict, str]:
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


def _load_controlnet(path: str, dtype_name: str) -> tuple[DiffBIRControl, dict, str]:
    net = load_network(path, ("controlnet",), "ControlNet")
    device = comfy.model_management.get_torch_device()
    params = sum(p.numel() for p in net.model.parameters())
    dtype = _resolve_dtype(dtype_name, device, params)
    model = use_comfy_ops(cast_controlnet(net.model, dtype).eval())
    control = DiffBIRControl(wrap_in_patcher(model), version=net.version, name=net.name, dtype=dtype)
    needs = {
        "v2.1": "needs the zero-terminal-SNR v-prediction SD 2.1 (sd2.1-base-zsnr-laionaes5.ckpt)",
        "v2": "needs SD 2.1-base (v2-1_512-ema-pruned.ckpt, eps)",
        "v1": "needs SD 2.1-base (v2-1_512-ema-pruned.ckpt, eps)",
    }.get(net.version, "version unknown: name the file with v1/v2/v2.1 or convert it with "
                       "`python -m diffbir_core.convert --version`")
    info = (f"ControlNet: {net.name} -> {net.detection.looks_like}; version {net.version or 'unknown'} ({needs}); "
            f"{control.num_controls} controls, {params / 1e6:.1f} M parameters, {_DTYPE_NAMES[dtype]} on {device}")
    return control, "sd" in net.extras, info


def _load_sd_parts(path: str, dtype_name: str):
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


class DiffBIRLoadModels:
    DESCRIPTION = (
        "Load DiffBIR's stage-1 restorer and its ControlNet (IRControlNet; LAControlNet in v1) from models/diffbir "
        "(also listed: models/upscale_models for stage 1 and models/controlnet for the ControlNet, shown with that "
        "folder as prefix). Kind and DiffBIR version are detected from the file; a wrong file is refused with a "
        "message saying what it is. Connect CONTROL_NET to 'LAControlNet Apply' and the stage-1 model to "
        "'Stage1 SwinIR Restore'. The SD 2.1 model itself comes from the stock Load Checkpoint: v2.1 needs "
        "sd2.1-base-zsnr-laionaes5.ckpt, v1/v2 need v2-1_512-ema-pruned.ckpt."
    )
    CATEGORY = "DiffBIR"
    FUNCTION = "load"
    RETURN_TYPES = (STAGE1_TYPE, "CONTROL_NET", "MODEL", "CLIP", "VAE", "STRING")
    RETURN_NAMES = ("stage1", "control_net", "model", "clip", "vae", "info")
    OUTPUT_TOOLTIPS = (
        "The stage-1 restorer (SwinIR, BSRNet or SCUNet) for the DiffBIR stage-1 node; empty when stage1_name is "
        "'none'.",
        "The DiffBIR ControlNet for 'LAControlNet Apply'; empty when controlnet_name is 'none'.",
        "Only for a DiffBIR v1 full checkpoint (stage 1 + ControlNet + SD 2.1 in one file): its SD 2.1 UNet. "
        "Empty (None) for any other file: use the stock Load Checkpoint instead.",
        "Only for a DiffBIR v1 full checkpoint: its SD 2.1 text encoder. Empty (None) otherwise.",
        "Only for a DiffBIR v1 full checkpoint: its SD 2.1 VAE. Empty (None) otherwise.",
        "What was detected in each file: kind, DiffBIR version, sizes, precision and which SD 2.1 it needs.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "stage1_name": (choices(STAGE1_EXTRA_FOLDER), {
                    "tooltip": "Stage-1 restorer file: general_swinir_v1.ckpt / face_swinir_v1.ckpt / "
                    "realesrgan_s4_swinir_100k.pth (SwinIR), BSRNet.pth or scunet_color_real_psnr.pth, from "
                    "models/diffbir or (prefixed) models/upscale_models. 'none' = no stage 1."}),
                "controlnet_name": (choices(CONTROLNET_EXTRA_FOLDER), {
                    "tooltip": "DiffBIR ControlNet file: DiffBIR_v2.1.pt, v2.pth, v1_general.pth or v1_face.pth "
                    "(or a file converted with diffbir_core.convert), from models/diffbir or (prefixed) "
                    "models/controlnet. The version is read from the file name or the converter's metadata. "
                    "'none' = no ControlNet."}),
                "dtype": (list(DTYPES), {
                    "default": "auto",
                    "tooltip": "Precision of the ControlNet. auto = what ComfyUI picks for the UNet on this device "
                    "(fp16 on most GPUs, fp32 on CPU). fp16/bf16 follow DiffBIR's half mode (time embedding and "
                    "GroupNorms stay float32). Stage-1 restorers always run in float32."}),
            }
        }

    @classmethod
    def IS_CHANGED(cls, stage1_name, controlnet_name, dtype):
        # Re-run when a file is replaced on disk under the same name.
        keys = []
        for name, folder in ((stage1_name, STAGE1_EXTRA_FOLDER), (controlnet_name, CONTROLNET_EXTRA_FOLDER)):
            try:
                keys.append(_file_key(resolve(name, folder)))
            except (FileNotFoundError, OSError):
                keys.append(name)
        return repr((keys, dtype))

    def load(self, stage1_name, controlnet_name, dtype="auto"):
        stage1_path = resolve(stage1_name, STAGE1_EXTRA_FOLDER)
        controlnet_path = resolve(controlnet_name, CONTROLNET_EXTRA_FOLDER)
        lines = []
        stage1 = control = None
        sd_parts = (None, None, None)
        v1_sd = None  # path of a v1 full checkpoint picked in either slot

        if stage1_path is not None:
            stage1, has_sd, info = _cached("stage1", (_file_key(stage1_path),), lambda: _load_stage1(stage1_path),
                                           stage1_path)
            lines.append(info)
            v1_sd = stage1_path if has_sd else v1_sd
        if controlnet_path is not None:
            control, has_sd, info = _cached("controlnet", (_file_key(controlnet_path), dtype),
                                            lambda: _load_controlnet(controlnet_path, dtype), controlnet_path)
            lines.append(info)
            v1_sd = controlnet_path if has_sd else v1_sd
        if v1_sd is not None:
            path = v1_sd
            sd_parts = _cached("sd", (_file_key(path), dtype), lambda: _load_sd_parts(path, dtype), path)
            lines.append(f"SD 2.1 (MODEL, CLIP, VAE) loaded from the v1 full checkpoint {os.path.basename(path)}")
        for slot, used in (("stage1", stage1_path), ("controlnet", controlnet_path), ("sd", v1_sd)):
            if used is None:
                _CACHE.pop(slot, None)  # release what an earlier run loaded into an emptied slot
        if not lines:
            lines.append("nothing loaded (both slots are 'none')")
        info = "\n".join(lines)
        log.info("DiffBIR: %s", info.replace("\n", "; "))
        return (stage1, control, *sd_parts, info)


NODE_CLASS_MAPPINGS = {"DiffBIRLoadModels": DiffBIRLoadModels}
NODE_DISPLAY_NAME_MAPPINGS = {"DiffBIRLoadModels": "Load DiffBIR Models"}
