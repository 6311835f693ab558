"""DiffBIR Compare: PSNR and SSIM between two IMAGE batches (degrade -> restore -> measure).

Thin adapter over ``diffbir_core.degrade.metrics``.
"""

from __future__ import annotations

import math

from comfy_api.latest import io

from diffbir_core.degrade import metrics as _metrics

from .host import schema
from .host.images import rgb_image


def _fmt_psnr(v: float) -> str:
    return "inf (identical)" if math.isinf(v) else f"{v:.4f} dB"


class DiffBIRCompare(io.ComfyNode):
    """Full-reference quality of image_a against image_b."""

    @classmethod
    def define_schema(cls):
        return schema.schema(
            node_id="DiffBIRCompare",
            display_name="DiffBIR Compare",
            category=schema.TESTING,
            search_aliases=["psnr", "ssim", "image quality", "metrics", "compare images"],
            description=(
                "Measure how close two images are: PSNR (dB, higher is better) and SSIM (0..1, higher is better), "
                "computed on RGB in [0, 1] with data range 1 (RGBA loses its alpha, grayscale is repeated to RGB). "
                "SSIM uses the standard Gaussian window (11x11, sigma 1.5) per RGB channel, averaged (not on luma Y), "
                "matching scikit-image's structural_similarity. For batches the outputs are the mean and the report "
                "lists every image. Both inputs must have the same size; a batch of 1 is compared with every image "
                "of the other input. LPIPS is not computed: it needs network weights that this pack does not "
                "download."),
            inputs=[
                io.Image.Input("image_a", tooltip="Image(s) to score, e.g. the restored output."),
                io.Image.Input("image_b", tooltip="Reference image(s) of the same size, e.g. the Degrade node's hq "
                                                  "output."),
            ],
            outputs=[
                io.Float.Output("psnr", display_name="psnr",
                                tooltip="Mean PSNR in dB over the batch (inf when the images are identical)."),
                io.Float.Output("ssim", display_name="ssim", tooltip="Mean SSIM over the batch (1 = identical)."),
                io.String.Output("report", display_name="report",
                                 tooltip="Human-readable summary with per-image values."),
            ],
        )

    @classmethod
    def execute(cls, image_a, image_b) -> io.NodeOutput:
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
        return io.NodeOutput(float(mean_psnr), float(mean_ssim), "\n".join(lines))
