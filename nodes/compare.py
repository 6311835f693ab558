"""Compare node: PSNR and SSIM between two IMAGE batches (degrade -> restore -> measure).

Thin adapter over ``diffbir_core.degrade.metrics``; imports nothing from ComfyUI.
"""

from __future__ import annotations

import math

from ..diffbir_core.degrade import metrics as _metrics
from .images import rgb_image


def _fmt_psnr(v: float) -> str:
    return "inf (identical)" if math.isinf(v) else f"{v:.4f} dB"


class DiffBIRCompare:
    """Full-reference quality of image_a against image_b."""

    DESCRIPTION = (
        "Measure how close two images are: PSNR (dB, higher is better) and SSIM (0..1, higher is better), "
        "computed on RGB in [0, 1] with data range 1 (RGBA loses its alpha, grayscale is repeated to RGB). SSIM "
        "uses the standard Gaussian window (11x11, sigma 1.5) per RGB channel, averaged (not on luma Y), matching scikit-image's structural_similarity. For batches the "
        "outputs are the mean and the report lists every image. Both inputs must have the same size; a batch of 1 "
        "is compared with every image of the other input. LPIPS is not computed: it needs network weights that this "
        "pack does not download."
    )
    CATEGORY = "DiffBIR"
    FUNCTION = "compare"
    RETURN_TYPES = ("FLOAT", "FLOAT", "STRING")
    RETURN_NAMES = ("psnr", "ssim", "report")
    OUTPUT_TOOLTIPS = (
        "Mean PSNR in dB over the batch (inf when the images are identical).",
        "Mean SSIM over the batch (1 = identical).",
        "Human-readable summary with per-image values.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image_a": ("IMAGE", {"tooltip": "Image(s) to score, e.g. the restored output."}),
                "image_b": ("IMAGE", {"tooltip": "Reference image(s) of the same size, e.g. the Degrade node's hq output."}),
            }
        }

    def compare(self, image_a, image_b):
        # RGB (alpha dropped, gray repeated); empty batches and NaN/Inf pixels are refused, naming the input.
        a, b = _metrics.pair_batches(rgb_image(image_a, "image_a"), rgb_image(image_b, "image_b"))
        if a.shape[1] < _metrics.SSIM_WIN or a.shape[2] < _metrics.SSIM_WIN:
            raise ValueError(
                f"image_a / image_b: images must be at least {_metrics.SSIM_WIN}x{_metrics.SSIM_WIN} pixels for SSIM, "
                f"got {a.shape[2]}x{a.shape[1]}"
            )
        psnrs = [_metrics.psnr(a[i], b[i]) for i in range(a.shape[0])]
        ssims = [_metrics.ssim(a[i], b[i]) for i in range(a.shape[0])]
        mean_psnr = sum(psnrs) / len(psnrs)  # inf if any pair is identical
        mean_ssim = sum(ssims) / len(ssims)
        n, h, w = a.shape[0], a.shape[1], a.shape[2]
        lines = [f"PSNR {_fmt_psnr(mean_psnr)}   SSIM {mean_ssim:.4f}   ({n} image{'s' if n > 1 else ''}, {w}x{h}, RGB, data range 1)"]
        if n > 1:
            for i, (p, s) in enumerate(zip(psnrs, ssims)):
                lines.append(f"  [{i}] PSNR {_fmt_psnr(p)}   SSIM {s:.4f}")
        lines.append("LPIPS: not computed (no LPIPS weights in this pack)")
        return (float(mean_psnr), float(mean_ssim), "\n".join(lines))


NODE_CLASS_MAPPINGS = {"DiffBIRCompare": DiffBIRCompare}
NODE_DISPLAY_NAME_MAPPINGS = {"DiffBIRCompare": "DiffBIR Compare"}
