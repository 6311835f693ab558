"""Bottom/right padding of NCHW images and latents, as every official DiffBIR stage pads.

The official `pad_to_multiples_of` pads with zeros at the bottom and right only, so the top-left pixel grid
(and every crop back to the original size) is unchanged; SCUNet replicates the border instead, and the
guidance weight map replicates to even sides. One helper serves them all (`mode` as in `F.pad`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "constant") -> torch.Tensor:
    """Pad bottom/right so both sides are multiples of `multiple` (zeros unless `mode` says otherwise).

    Returns `x` itself when nothing needs padding (callers never write into the result in place).
    """
    if multiple <= 1:
        return x
    h, w = x.shape[-2:]
    return pad_to_size(x, h + (-h) % multiple, w + (-w) % multiple, mode)


def pad_to_size(x: torch.Tensor, h: int, w: int, mode: str = "constant") -> torch.Tensor:
    """Pad bottom/right to at least (h, w), then crop to exactly (h, w); `x` itself when it has that size."""
    if tuple(x.shape[-2:]) == (h, w):
        return x
    ph, pw = max(h - x.shape[-2], 0), max(w - x.shape[-1], 0)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x[..., :h, :w]
