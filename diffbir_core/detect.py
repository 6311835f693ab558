"""What is in a checkpoint: detection from keys and shapes, by a table of signatures.

Every file a DiffBIR user may pick, right or wrong, is described by a `Signature`: the keys it must have (with a
shape pattern where the shape tells kinds apart) and the key prefixes it must not have. The first signature that
matches, in table order, names the kind. The table is, in order: files holding several networks (the v1 full
checkpoint), each network architecture's own signatures (its record in diffbir_core.arch.ARCHITECTURES), the SD
checkpoint, then kinds we cannot run, listed so that a wrong file gets an error saying what it looks like rather
than "unknown".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from .arch import ANY, ARCHITECTURES, Signature


@dataclass(frozen=True)
class FileKind:
    """A kind of file that is not one network: a container of parts, or a file known only to explain a wrong
    choice. (Networks are `arch.Architecture` records; both have kind, name, signatures and loadable.)"""

    kind: str
    signatures: tuple[Signature, ...]
    name: str = ""  # what a slot that takes it asks for, in errors
    loadable: bool = False  # False: known only so that errors can name it


_UNET = "model.diffusion_model."
_CROSS_ATTN_K = "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
_STANDARD_CONTROLNET = "a standard ControlNet with a hint encoder (for canny/depth etc.), not a DiffBIR ControlNet"

_V1_FULL = FileKind(
    "diffbir_v1_full",
    (Signature("a DiffBIR v1 full checkpoint (stage-1 SwinIR + LAControlNet + SD 2.1 in one file)",
               {"control_model.input_blocks.0.0.weight": (ANY, 8, 3, 3), f"{_UNET}input_blocks.0.0.weight": (ANY, 4, 3, 3)}),),
    name="a DiffBIR v1 full checkpoint", loadable=True,
)
_SD21 = FileKind(
    "sd21",
    (Signature("a Stable Diffusion 2.x checkpoint (UNet + VAE + OpenCLIP-H text encoder)",
               {f"{_UNET}input_blocks.0.0.weight": (ANY, 4, 3, 3), f"{_UNET}{_CROSS_ATTN_K}": (ANY, 1024)},
               absent=("control_model.",)),),
    name="a Stable Diffusion 2.1 checkpoint", loadable=True,
)
_EXPLAINED = (
    FileKind("controlnet_standard", (Signature(_STANDARD_CONTROLNET, {"input_hint_block.0.weight": ANY}),
                                     Signature(_STANDARD_CONTROLNET, {"control_model.input_hint_block.0.weight": ANY}))),
    FileKind("sd15", (Signature("a Stable Diffusion 1.x checkpoint (768-dim text context)",
                                {f"{_UNET}{_CROSS_ATTN_K}": (ANY, 768)}),)),
    FileKind("sdxl", (Signature("an SDXL checkpoint",
                                {"conditioner.embedders.0.transformer.text_model.embeddings.position_ids": ANY}),
                      Signature("an SDXL checkpoint", {f"{_UNET}label_emb.0.0.weight": ANY}))),
    FileKind("esrgan", (Signature("an ESRGAN / Real-ESRGAN upscaler (new key names; load it with ComfyUI's Load "
                                  "Upscale Model)", {"conv_first.weight": ANY, "body.0.rdb1.conv1.weight": ANY}),)),
)

# Every kind detect() can report, in detection order.
FILE_KINDS = (_V1_FULL, *ARCHITECTURES.values(), _SD21, *_EXPLAINED)
# (kind, signature, loadable) in the order they are tried.
SIGNATURES = tuple((k.kind, sig, k.loadable) for k in FILE_KINDS for sig in k.signatures)
# What a slot expecting a kind calls it.
KIND_NAMES = {k.kind: k.name for k in FILE_KINDS if k.loadable}

STAGE1_KINDS = tuple(a.kind for a in ARCHITECTURES.values() if a.slot == "stage 1")

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
    match = next(((kind, sig, loadable) for kind, sig, loadable in SIGNATURES if sig.matches(sd)), None)
    if match is None:
        return Detection("unknown", _describe_unknown(sd), loadable=False)
    kind, sig, loadable = match
    det = Detection(kind, sig.looks_like, loadable)
    if kind == "diffbir_v1_full":
        det.version = "v1"
    elif kind == "controlnet":
        det.version = metadata.get("diffbir_version") or version_from_name(name)
    elif kind == "sd21":
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
