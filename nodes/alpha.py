"""DiffBIR Keep Alpha: the alpha plane of the input put back on the restored RGB (diffbir_core.alpha)."""

from __future__ import annotations

import comfy.model_management as mm
import torch
from comfy_api.latest import io

from diffbir_core.alpha import alpha_from_mask, is_opaque, join_alpha

from .host import schema
from .host.images import rgb_image

NODE = "DiffBIR Keep Alpha"


class DiffBIRKeepAlpha(io.ComfyNode):
    """Restore in RGB, keep the transparency: Load Image's MASK resized to the restored image and joined to it."""

    @classmethod
    def define_schema(cls):
        return schema.schema(
            node_id="DiffBIRKeepAlpha",
            display_name=NODE,
            category=schema.IMAGE,
            search_aliases=["alpha", "transparency", "transparent", "rgba", "join image with alpha", "png"],
            description=(
                "DiffBIR restores RGB only. This node puts the input's transparency back: the 'mask' output of "
                "Load Image (1 - alpha) is resized to the restored image's size (unchanged at the same size, "
                "bilinear otherwise, as the stock Join Image with Alpha) and joined to it as an alpha channel, "
                "which Save Image writes as a transparent PNG. An image without transparency (Load Image's mask "
                "then is all zeros: fully opaque) passes through as RGB, so opaque inputs stay plain RGB files."),
            inputs=[
                io.Image.Input("image", tooltip="The restored image(s) (RGB; an alpha channel already there is "
                                                "replaced)."),
                io.Mask.Input("mask", tooltip="The 'MASK' output of the Load Image that loaded the input: its "
                                              "transparency (1 = transparent, Load Image's convention). One mask "
                                              "for the whole batch, or one per image."),
            ],
            outputs=[io.Image.Output("image_out", display_name="image",
                                     tooltip="RGBA at the restored size when the input had transparency, else the "
                                             "restored RGB unchanged.")],
        )

    @classmethod
    def execute(cls, image, mask) -> io.NodeOutput:
        rgb = rgb_image(image, "image")
        if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3) or mask.numel() == 0:
            raise ValueError(f"{NODE}: 'mask' must be a MASK (connect the MASK output of Load Image), got "
                             f"{getattr(mask, 'shape', type(mask).__name__)}.")
        alpha = alpha_from_mask(mask)
        if is_opaque(alpha):  # no transparency: keep the image RGB (no needless alpha channel in the PNG)
            return io.NodeOutput(rgb)
        if alpha.ndim == 3 and alpha.shape[0] not in (1, rgb.shape[0]):
            raise ValueError(f"{NODE}: 'mask' holds {alpha.shape[0]} masks but 'image' {rgb.shape[0]} images; "
                             "connect the mask of the same Load Image (one per image, or one for all).")
        return io.NodeOutput(join_alpha(rgb, alpha).to(mm.intermediate_device()))
