"""Bottom/right padding of NCHW images and latents, as every official DiffBIR stage pads.

The official `pad_to_multiples_of` pads with zeros at the bottom and right only, so the top-left pixel grid
(and every crop back to the original size) is unchanged; SCUNet replicates the border instead, and the
guidance weight map replicates to even sides. One helper serves them all (`mode` as in `F.pad`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Stage 2: the official code pads the stage-1 image with zeros (bottom/right) to a multiple of 64 before the VAE
# encode (main `Pipeline.apply_cldm` untiled, v2.0.0 `run_stage2` always), to a multiple of 8 when the main code
# tiles the encoder or the diffusion. The VAE's mid-block attention sees the whole padded latent, so the pad size
# changes every latent pixel slightly: the nodes keep 64 for every run (also tiled ones, see nodes/sampler.py).
CONDITION_PAD = 64
TILED_CONDITION_PAD = 8


def condition_pad(tiled: bool = False) -> int:
    """The multiple the stage-1 image is padded to before the condition latent is encoded (see CONDITION_PAD)."""
    return TILED_CONDITION_PAD if tiled else CONDITION_PAD


def padded_size(height: int, width: int, multiple: int = CONDITION_PAD) -> tuple[int, int]:
    """(height, width) padded up to multiples of `multiple`: the size `pad_to_multiple` returns."""
    return tuple(side + (-side) % multiple for side in (height, width))


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "constant") -> torch.Tensor:
    """Pad bottom/right so both sides are multiples of `multiple` (zeros unless `mode` says otherwise).

    Returns `x` itself when nothing needs padding (callers never write into the result in place).
    """
    if multiple <= 1:
        return x
    return pad_to_size(x, *padded_size(*x.shape[-2:], multiple), mode)


def pad_to_size(x: torch.Tensor, h: int, w: int, mode: str = "constant") -> torch.Tensor:
    """Pad bottom/right to at least (h, w), then crop to exactly (h, w); `x` itself when it has that size."""
    if tuple(x.shape[-2:]) == (h, w):
        return x
    ph, pw = max(h - x.shape[-2], 0), max(w - x.shape[-1], 0)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x[..., :h, :w]
