"""What is in a checkpoint: detection from keys and shapes, by a table of signatures.

Every file a DiffBIR user may pick, right or wrong, is described by one `Signature`:
the keys it must have (with a shape pattern where the shape tells kinds apart) and the
key prefixes it must not have. The first signature that matches, in table order, names
the kind. Kinds we cannot run are still listed, so that a wrong file gets an error saying
what it looks like rather than "unknown".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

ANY = None  # wildcard in a shape pattern


@dataclass(frozen=True)
class Signature:
    kind: str
    looks_like: str
    keys: dict  # key -> shape pattern (tuple with ANY wildcards) or ANY for presence only
    absent: tuple = ()  # key prefixes that must not occur
    loadable: bool = True  # False: known only so that errors can name it

    def matches(self, sd: dict) -> bool:
        for key, pattern in self.keys.items():
            t = sd.get(key)
            if t is None:
                return False
            if pattern is not ANY and (
                t.dim() != len(pattern) or any(p is not ANY and p != s for p, s in zip(pattern, t.shape))
            ):
                return False
        return not any(k.startswith(self.absent) for k in sd) if self.absent else True


_UNET = "model.diffusion_model."
_CROSS_ATTN_K = "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"

SIGNATURES: tuple[Signature, ...] = (
    Signature(
        "diffbir_v1_full",
        "a DiffBIR v1 full checkpoint (stage-1 SwinIR + LAControlNet + SD 2.1 in one file)",
        {"control_model.input_blocks.0.0.weight": (ANY, 8, 3, 3), f"{_UNET}input_blocks.0.0.weight": (ANY, 4, 3, 3)},
    ),
    Signature(
        "controlnet",
        "a DiffBIR IRControlNet / LAControlNet (8-channel input, no hint encoder)",
        {"input_blocks.0.0.weight": (ANY, 8, 3, 3), "zero_convs.0.0.weight": ANY, "middle_block_out.0.weight": ANY},
        absent=("input_hint_block.",),
    ),
    Signature(
        "controlnet",
        "a DiffBIR ControlNet stored with the 'control_model.' prefix",
        {"control_model.input_blocks.0.0.weight": (ANY, 8, 3, 3), "control_model.zero_convs.0.0.weight": ANY},
        absent=("control_model.input_hint_block.", _UNET),
    ),
    Signature(
        "sd21",
        "a Stable Diffusion 2.x checkpoint (UNet + VAE + OpenCLIP-H text encoder)",
        {f"{_UNET}input_blocks.0.0.weight": (ANY, 4, 3, 3), f"{_UNET}{_CROSS_ATTN_K}": (ANY, 1024)},
        absent=("control_model.",),
    ),
    Signature(
        "swinir",
        "a DiffBIR stage-1 SwinIR (PixelUnshuffle variant)",
        {"conv_first.1.weight": (ANY, ANY, 3, 3), "layers.0.residual_group.blocks.0.attn.qkv.weight": ANY},
    ),
    Signature(
        "bsrnet",
        "a BSRNet / RRDBNet stage-1 model (KAIR key names)",
        {"conv_first.weight": ANY, "RRDB_trunk.0.RDB1.conv1.weight": ANY, "upconv1.weight": ANY, "HRconv.weight": ANY},
    ),
    Signature(
        "scunet",
        "an SCUNet stage-1 denoiser (KAIR key names)",
        {"m_head.0.weight": ANY, "m_tail.0.weight": ANY},
    ),
    Signature(
        "retinaface",
        "a RetinaFace face detector (facexlib's detection_Resnet50_Final.pth / detection_mobilenet0.25_Final.pth)",
        {"fpn.output1.0.weight": ANY, "ssh1.conv3X3.0.weight": ANY, "ClassHead.0.conv1x1.weight": ANY,
         "LandmarkHead.0.conv1x1.weight": (ANY, ANY, 1, 1)},
    ),
    # ---- recognised only to explain a wrong choice
    Signature(
        "controlnet_standard",
        "a standard ControlNet with a hint encoder (for canny/depth etc.), not a DiffBIR ControlNet",
        {"input_hint_block.0.weight": ANY},
        loadable=False,
    ),
    Signature(
        "controlnet_standard",
        "a standard ControlNet with a hint encoder (for canny/depth etc.), not a DiffBIR ControlNet",
        {"control_model.input_hint_block.0.weight": ANY},
        loadable=False,
    ),
    Signature(
        "sd15",
        "a Stable Diffusion 1.x checkpoint (768-dim text context)",
        {f"{_UNET}{_CROSS_ATTN_K}": (ANY, 768)},
        loadable=False,
    ),
    Signature("sdxl", "an SDXL checkpoint", {"conditioner.embedders.0.transformer.text_model.embeddings.position_ids": ANY}, loadable=False),
    Signature("sdxl", "an SDXL checkpoint", {f"{_UNET}label_emb.0.0.weight": ANY}, loadable=False),
    Signature("vae", "a standalone VAE", {"encoder.conv_in.weight": ANY, "decoder.conv_out.weight": ANY}, loadable=False),
    Signature("unet", "a bare diffusion UNet", {"input_blocks.0.0.weight": (ANY, 4, 3, 3), "out.2.weight": ANY}, loadable=False),
    Signature(
        "esrgan",
        "an ESRGAN / Real-ESRGAN upscaler (new key names; load it with ComfyUI's Load Upscale Model)",
        {"conv_first.weight": ANY, "body.0.rdb1.conv1.weight": ANY},
        loadable=False,
    ),
)

KIND_NAMES = {
    "diffbir_v1_full": "a DiffBIR v1 full checkpoint",
    "controlnet": "a DiffBIR ControlNet (v2.pth, DiffBIR_v2.1.pt, v1_general.pth, v1_face.pth)",
    "sd21": "a Stable Diffusion 2.1 checkpoint",
    "swinir": "a DiffBIR SwinIR (general_swinir_v1.ckpt, face_swinir_v1.ckpt, realesrgan_s4_swinir_100k.pth)",
    "bsrnet": "BSRNet.pth",
    "scunet": "scunet_color_real_psnr.pth",
    "retinaface": "a RetinaFace face detector (detection_Resnet50_Final.pth or detection_mobilenet0.25_Final.pth)",
}

STAGE1_KINDS = ("swinir", "bsrnet", "scunet")

# Prefixes of the parts of a v1 full checkpoint; the SD parts keep their LDM prefixes so
# the host can load them as an ordinary SD checkpoint.
V1_PARTS = {
    "controlnet": "control_model.",
    "stage1": "preprocess_model.",
    "cond_encoder": "cond_encoder.",
    "unet": _UNET,
    "vae": "first_stage_model.",
    "clip": "cond_stage_model.",
}
SD_PREFIXES = (_UNET, "first_stage_model.", "cond_stage_model.")

# DiffBIR version from a file name, most specific first. The weights of v1, v2 and v2.1
# ControlNets have identical layouts, so only the name or our metadata can tell them apart.
_VERSION_BY_NAME = (
    (re.compile(r"v2[._-]?1(?!\d)"), "v2.1"),
    (re.compile(r"(?<![\d.])v2(?![._-]?\d)"), "v2"),
    (re.compile(r"(?<![\d.])v1(?!\d)"), "v1"),
)


@dataclass
class Detection:
    kind: str
    looks_like: str
    loadable: bool
    version: str | None = None
    notes: list = field(default_factory=list)

    @property
    def is_stage1(self) -> bool:
        return self.kind in STAGE1_KINDS


def _describe_unknown(sd: dict) -> str:
    prefixes = sorted({k.split(".")[0] for k in sd})
    shown = ", ".join(prefixes[:6]) + (", ..." if len(prefixes) > 6 else "")
    return f"an unrecognised model ({len(sd)} tensors; top-level names: {shown})"


def version_from_name(name: str) -> str | None:
    low = name.lower()
    for pattern, version in _VERSION_BY_NAME:
        if pattern.search(low):
            return version
    return None


def detect(sd: dict[str, torch.Tensor], name: str = "", metadata: dict | None = None) -> Detection:
    """Identify a (unwrapped, `module.`-stripped) state dict."""
    metadata = metadata or {}
    sig = next((s for s in SIGNATURES if s.matches(sd)), None)
    if sig is None:
        return Detection("unknown", _describe_unknown(sd), loadable=False)
    det = Detection(sig.kind, sig.looks_like, sig.loadable)
    if sig.kind == "diffbir_v1_full":
        det.version = "v1"
    elif sig.kind == "controlnet":
        det.version = metadata.get("diffbir_version") or version_from_name(name)
    elif sig.kind == "sd21":
        # SD names carry the SD version ("v2-1_512"), not DiffBIR's; only the zero-terminal-SNR
        # fine-tune that v2.1 needs is recognisable.
        det.version = metadata.get("diffbir_version") or ("v2.1" if "zsnr" in name.lower() else None)
    return det


def split_v1_full(sd: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Split a v1 full checkpoint into its parts.

    `controlnet`, `stage1` and `cond_encoder` lose their prefixes (they load into our
    networks); `sd` keeps the LDM prefixes of UNet, VAE and CLIP so any SD loader accepts it.
    Schedule buffers (betas, alphas_cumprod, ...) are dropped: they are recomputed.
    """
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for part in ("controlnet", "stage1", "cond_encoder"):
        prefix = V1_PARTS[part]
        sub = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        if sub:
            parts[part] = sub
    parts["sd"] = {k: v for k, v in sd.items() if k.startswith(SD_PREFIXES)}
    return parts
