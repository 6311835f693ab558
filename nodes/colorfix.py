"""DiffBIR Color Fix: the official wavelet / AdaIN colour correction (diffbir_core.colorfix)."""

from __future__ import annotations

import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.latest import io

from diffbir_core.colorfix import METHODS, check_method, color_fix

from .host import schema
from .host.images import rgb_image

NODE = "DiffBIR Color Fix"


class DiffBIRColorFix(io.ComfyNode):
    """Take the colours of the stage-1 image and the detail of the stage-2 image."""

    @classmethod
    def define_schema(cls):
        return schema.schema(
            node_id="DiffBIRColorFix",
            display_name=NODE,
            category=schema.IMAGE,
            search_aliases=["color fix", "colour fix", "color correction", "wavelet", "adain", "color match"],
            description=(
                "Official DiffBIR colour correction of the diffusion result against the stage-1 image (diffusion "
                "tends to shift colours). wavelet (official default, always used by v2/v2.1): keeps the high "
                "frequencies of 'image' and takes the low frequencies (5-level wavelet blur) of 'reference'. adain "
                "(v1 option): matches each channel's mean and standard deviation to the reference. none: passes "
                "'image' through. The reference is resized (bicubic) to the image's size when they differ; the "
                "result is clamped to [0, 1]."),
            inputs=[
                io.Image.Input("image", tooltip="Image(s) to correct: the stage-2 (diffusion) result."),
                io.Image.Input("reference", tooltip="Colour reference: the stage-1 output (Stage1 SwinIR Restore), "
                                                    "not the low-quality input. Same batch size as 'image', or a "
                                                    "single image used for the whole batch."),
                io.Combo.Input("method", options=list(METHODS), default="wavelet",
                               tooltip="wavelet: official default; adain: per-channel mean/std transfer (v1 option); "
                                       "none: no correction."),
            ],
            outputs=[io.Image.Output("image_out", display_name="image",
                                     tooltip="The colour-corrected image(s), same size as 'image', RGB in [0, 1].")],
        )

    @classmethod
    def execute(cls, image, reference, method) -> io.NodeOutput:
        check_method(method)  # before any work on the batch
        content = rgb_image(image, "image")
        style = rgb_image(reference, "reference")
        n, m = content.shape[0], style.shape[0]
        if m != n and m != 1:
            raise ValueError(f"{NODE}: 'reference' has {m} images but 'image' has {n}; connect a reference batch of "
                             "the same size or a single reference image.")
        device = mm.get_torch_device()
        out_device = mm.intermediate_device()
        results = []
        bar = comfy.utils.ProgressBar(n)  # one bar over the batch, Cancel between frames
        for i in range(n):
            mm.throw_exception_if_processing_interrupted()
            c = content[i: i + 1].movedim(-1, 1).to(device, torch.float32)
            s = style[i if m == n else 0:][:1].movedim(-1, 1).to(device, torch.float32)
            y = color_fix(c, s, method).clamp(0, 1)
            results.append(y.movedim(1, -1).to(out_device, torch.float32))
            bar.update_absolute(i + 1, n)
        return io.NodeOutput(torch.cat(results, 0))
