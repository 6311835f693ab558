"""Colour fix node: the official wavelet / AdaIN colour correction (diffbir_core.colorfix)."""

from __future__ import annotations

import comfy.model_management as mm
import torch

from ..diffbir_core.colorfix import METHODS, check_method, color_fix
from .images import rgb_image


class DiffBIRColorFix:
    """Take the colours of the stage-1 image and the detail of the stage-2 image."""

    DESCRIPTION = (
        "Official DiffBIR colour correction of the diffusion result against the stage-1 image (diffusion tends to "
        "shift colours). wavelet (official default, always used by v2/v2.1): keeps the high frequencies of 'image' "
        "and takes the low frequencies (5-level wavelet blur) of 'reference'. adain (v1 option): matches each "
        "channel's mean and standard deviation to the reference. none: passes 'image' through. The reference is "
        "resized (bicubic) to the image's size when they differ; the result is clamped to [0, 1]."
    )
    CATEGORY = "DiffBIR"
    FUNCTION = "fix"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The colour-corrected image(s), same size as 'image', RGB in [0, 1].",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "Image(s) to correct: the stage-2 (diffusion) result."}),
                "reference": ("IMAGE", {"tooltip": "Colour reference: the stage-1 output (Stage1 SwinIR Restore), "
                                                   "not the low-quality input. Same batch size as 'image', or a "
                                                   "single image used for the whole batch."}),
                "method": (list(METHODS), {"default": "wavelet",
                                           "tooltip": "wavelet: official default; adain: per-channel mean/std "
                                                      "transfer (v1 option); none: no correction."}),
            }
        }

    def fix(self, image, reference, method):
        check_method(method)  # before any work on the batch
        content = rgb_image(image, "image")
        style = rgb_image(reference, "reference")
        n, m = content.shape[0], style.shape[0]
        if m != n and m != 1:
            raise ValueError(f"DiffBIR Color Fix: 'reference' has {m} images but 'image' has {n}; connect a "
                             f"reference batch of the same size or a single reference image.")
        device = mm.get_torch_device()
        out_device = mm.intermediate_device()
        results = []
        for i in range(n):
            mm.throw_exception_if_processing_interrupted()
            c = content[i : i + 1].movedim(-1, 1).to(device, torch.float32)
            s = style[i if m == n else 0 :][:1].movedim(-1, 1).to(device, torch.float32)
            y = color_fix(c, s, method).clamp(0, 1)
            results.append(y.movedim(1, -1).to(out_device, torch.float32))
        return (torch.cat(results, 0),)


NODE_CLASS_MAPPINGS = {"DiffBIRColorFix": DiffBIRColorFix}
NODE_DISPLAY_NAME_MAPPINGS = {"DiffBIRColorFix": "DiffBIR Color Fix"}
