"""Network architectures: one module per architecture (as spandrel does) and one `Architecture` record each.

Every module exposes OFFICIAL_CONFIG (official hyper-parameter names) and build(config=None) -> nn.Module whose
state_dict keys are exactly the official ones. The record in `ARCHITECTURES` says everything else the rest of the
core needs: how a file of it is recognised (`signatures`, read by diffbir_core.detect), what a slot asking for
it calls it (`name`), which loader slot takes it (`slot`), how its config is read from the weights (`config`),
and the memory format its weights are kept in (`memory_format`, applied by diffbir_core.loader). Adding an
architecture is adding its module and one record here.

Network modules are imported only when a record is used, so importing the registry (and detect) stays light.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .ldm_config import clip_text_config, unet_family_config, vae_config

ANY = None  # wildcard in a Signature shape pattern


@dataclass(frozen=True)
class Signature:
    """One way a file of a kind looks: keys it must have (each with a shape pattern where the shape tells kinds
    apart, ANY for presence only) and key prefixes it must not have."""

    looks_like: str  # what the file is, for messages: "a BSRNet / RRDBNet stage-1 model (KAIR key names)"
    keys: dict  # key -> shape pattern (tuple with ANY wildcards) or ANY
    absent: tuple = ()

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


def _stored_or(read: Callable[[dict], dict]) -> Callable[[dict, dict | None], dict]:
    """Config reader for networks whose whole config our converter may store: metadata `diffbir_config` wins
    over what the shapes say (the shapes cannot tell e.g. a SwinIR's window size)."""

    def config(sd: dict, metadata: dict | None) -> dict:
        if metadata and metadata.get("diffbir_config"):
            return json.loads(metadata["diffbir_config"])
        return read(sd)

    return config


def _module_reader(module: str) -> Callable[[dict], dict]:
    """The architecture module's own config_from_state_dict (imported on first use)."""
    return lambda sd: importlib.import_module(f"{__name__}.{module}").config_from_state_dict(sd)


@dataclass(frozen=True)
class Architecture:
    kind: str  # the name detect() reports and build_network() takes
    module: str  # diffbir_core.arch.<module>: build(config)
    config: Callable[[dict, dict | None], dict]  # (state dict, file metadata) -> build config
    name: str = ""  # what a slot that takes it asks for, in errors
    slot: str | None = None  # the loader slot that takes such files; None: loaded only as a part of another file
    signatures: tuple[Signature, ...] = ()  # how detect() recognises a file of it, tried in order
    memory_format: torch.memory_format | None = None  # re-applied after the weights are loaded

    @property
    def loadable(self) -> bool:
        return self.slot is not None

    def network_module(self):
        return importlib.import_module(f"{__name__}.{self.module}")

    def build(self, config: dict | None = None) -> torch.nn.Module:
        return self.network_module().build(config)


_UNET = "model.diffusion_model."  # where an LDM checkpoint keeps its UNet

# Order is detection order (first match wins): keep signatures that could overlap most specific first.
ARCHITECTURES: dict[str, Architecture] = {a.kind: a for a in (
    Architecture(
        "controlnet", "controlnet", lambda sd, md: unet_family_config(sd, controlnet=True, metadata=md),
        name="a DiffBIR ControlNet (v2.pth, DiffBIR_v2.1.pt, v1_general.pth, v1_face.pth)", slot="ControlNet",
        signatures=(
            Signature("a DiffBIR IRControlNet / LAControlNet (8-channel input, no hint encoder)",
                      {"input_blocks.0.0.weight": (ANY, 8, 3, 3), "zero_convs.0.0.weight": ANY,
                       "middle_block_out.0.weight": ANY},
                      absent=("input_hint_block.",)),
            Signature("a DiffBIR ControlNet stored with the 'control_model.' prefix",
                      {"control_model.input_blocks.0.0.weight": (ANY, 8, 3, 3), "control_model.zero_convs.0.0.weight": ANY},
                      absent=("control_model.input_hint_block.", _UNET)),
        ),
    ),
    Architecture(
        "swinir", "swinir", _stored_or(_module_reader("swinir")),
        name="a DiffBIR SwinIR (general_swinir_v1.ckpt, face_swinir_v1.ckpt, realesrgan_s4_swinir_100k.pth)",
        slot="stage 1",
        signatures=(Signature("a DiffBIR stage-1 SwinIR (PixelUnshuffle variant)",
                              {"conv_first.1.weight": (ANY, ANY, 3, 3),
                               "layers.0.residual_group.blocks.0.attn.qkv.weight": ANY}),),
        # Channels-last convolution weights: oneDNN (CPU) and cuDNN run 3x3 convolutions on NHWC without the
        # per-call layout reorders they need for NCHW, which makes the full-resolution upsampling tail ~35% and
        # the whole network ~10% faster on the CPU.
        memory_format=torch.channels_last,
    ),
    Architecture(
        "bsrnet", "bsrnet", _stored_or(_module_reader("bsrnet")), name="BSRNet.pth", slot="stage 1",
        signatures=(Signature("a BSRNet / RRDBNet stage-1 model (KAIR key names)",
                              {"conv_first.weight": ANY, "RRDB_trunk.0.RDB1.conv1.weight": ANY, "upconv1.weight": ANY,
                               "HRconv.weight": ANY}),),
        # The 23 RRDB blocks are all 3x3 convolutions: ~15% faster in NHWC on the CPU (no oneDNN reorders).
        memory_format=torch.channels_last,
    ),
    Architecture(
        "scunet", "scunet", _stored_or(_module_reader("scunet")), name="scunet_color_real_psnr.pth", slot="stage 1",
        signatures=(Signature("an SCUNet stage-1 denoiser (KAIR key names)",
                              {"m_head.0.weight": ANY, "m_tail.0.weight": ANY}),),
    ),
    Architecture(
        "retinaface", "retinaface", _stored_or(_module_reader("retinaface")),
        name="a RetinaFace face detector (detection_Resnet50_Final.pth or detection_mobilenet0.25_Final.pth)",
        slot="face detector",
        signatures=(Signature("a RetinaFace face detector (facexlib's detection_Resnet50_Final.pth / "
                              "detection_mobilenet0.25_Final.pth)",
                              {"fpn.output1.0.weight": ANY, "ssh1.conv3X3.0.weight": ANY,
                               "ClassHead.0.conv1x1.weight": ANY, "LandmarkHead.0.conv1x1.weight": (ANY, ANY, 1, 1)}),),
    ),
    # The SD 2.1 parts the reference engine runs: loaded from an SD checkpoint (reference.sd_parts), never picked
    # in a slot; their signatures only explain a standalone file picked by mistake.
    Architecture(
        "unet", "unet", lambda sd, md: unet_family_config(sd, controlnet=False, metadata=md),
        signatures=(Signature("a bare diffusion UNet", {"input_blocks.0.0.weight": (ANY, 4, 3, 3), "out.2.weight": ANY}),),
    ),
    Architecture(
        "vae", "vae", _stored_or(vae_config),
        signatures=(Signature("a standalone VAE", {"encoder.conv_in.weight": ANY, "decoder.conv_out.weight": ANY}),),
    ),
    Architecture("clip_text", "clip_text", _stored_or(clip_text_config)),
)}


def architecture(kind: str) -> Architecture:
    try:
        return ARCHITECTURES[kind]
    except KeyError:
        raise ValueError(f"no network architecture '{kind}'; known: {', '.join(ARCHITECTURES)}") from None
