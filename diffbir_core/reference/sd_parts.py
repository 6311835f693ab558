"""The reference engine's SD 2.1 networks from an SD checkpoint: our UNet, VAE and CLIP text encoder.

The nodes never build these: ComfyUI loads the user's SD 2.1 checkpoint itself (`nodes/host/loaders.load_sd_parts`
for the SD part of a v1 full checkpoint).
"""

from __future__ import annotations

import torch

from ..loader import WrongCheckpointError, build_network

# The parts of an SD checkpoint the reference engine runs, by the official module prefixes.
SD_PART_PREFIXES = {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "clip_text": "cond_stage_model."}


def load_sd_parts(sd: dict[str, torch.Tensor], name: str = "SD checkpoint") -> dict[str, torch.nn.Module]:
    """UNet, VAE and CLIP text encoder of an SD 2.1 (or v1 full) state dict, each loaded strictly.

    Keys outside the three prefixes (EMA copies, schedule buffers) are ignored, as the
    official `load_pretrained_sd` ignores them.
    """
    parts = {}
    for kind, prefix in SD_PART_PREFIXES.items():
        sub = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        if not sub:
            raise WrongCheckpointError(f"'{name}' has no '{prefix}*' weights, so it is not a complete SD 2.1 checkpoint.")
        parts[kind], _ = build_network(kind, sub, f"{name} [{prefix}*]")
    return parts
