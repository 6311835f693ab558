"""Paste restored faces back into the whole image through the inverse affine, with the official soft mask.

Official (DiffBIR `utils/face.py` `paste_faces_to_input_image`, upscale_factor 1, square mask part):

    inv_restored = warpAffine(face, inverse, (W, H))                   # zero border
    inv_mask     = warpAffine(ones(face_size), inverse, (W, H))
    eroded       = erode(inv_mask, 2 x 2)                              # "remove the black borders"
    pasted       = eroded * inv_restored
    w_edge       = int(sum(eroded) ** 0.5) // 20                       # face side / 20
    soft         = GaussianBlur(erode(eroded, 2 w_edge), 2 w_edge + 1)
    image        = soft * pasted + (1 - soft) * image                  # face after face, in order

`erosion` and `feather` generalise the two ``2 * w_edge`` sizes as fractions of the face side (both 0.1
officially; the defaults give exactly the official integer sizes). DiffBIR additionally multiplies this
mask with a face-parsing mask (ParseNet, `use_parse=True`); that network is not part of this pack, so the
square mask alone is used (it is facexlib's own default).

Every face is processed in a window around its footprint, wide enough that the erosion and the blur see
the same zeros there as on the whole image, so memory follows the face, not the photo. Pixels where the
mask is exactly zero are copied from the background untouched (bit-identical).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .align import apply_affine, warp_affine
from .morphology import erode, gaussian_blur

OFFICIAL_EROSION = 0.1  # erosion kernel: 2 * (side // 20)
OFFICIAL_FEATHER = 0.1  # blur kernel: 2 * (side // 20) + 1
BORDER_EROSION = 2  # int(2 * upscale_factor) with the official upscale_factor 1


def edge_size(side: int, fraction: float) -> int:
    """``2 * (side * fraction / 2)`` in whole pixels, exactly ``2 * (side // 20)`` for fraction 0.1.

    Integer arithmetic on per-mille fractions so that the official sizes never suffer float rounding.
    """
    return 2 * ((side * round(fraction * 1000)) // 2000)


def face_window(inverse: torch.Tensor, face_hw: tuple[int, int], image_hw: tuple[int, int], margin_fraction: float
                ) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of the image region a face can touch, with a margin for erosion and blur; None if the
    face lies entirely outside the image."""
    fh, fw = face_hw
    corners = torch.tensor([[-0.5, -0.5], [fw - 0.5, -0.5], [-0.5, fh - 0.5], [fw - 0.5, fh - 0.5]],
                           dtype=torch.float64)
    pts = apply_affine(inverse, corners)
    x_min, y_min = pts.min(0).values.tolist()
    x_max, y_max = pts.max(0).values.tolist()
    if not all(math.isfinite(v) for v in (x_min, y_min, x_max, y_max)):
        raise ValueError("alignment: a face matrix is not finite; run Face Detect & Align again")
    margin = math.ceil(max(x_max - x_min, y_max - y_min) * margin_fraction) + BORDER_EROSION + 4
    h, w = image_hw
    x0, y0 = max(0, math.floor(x_min) - margin), max(0, math.floor(y_min) - margin)
    x1, y1 = min(w, math.ceil(x_max) + margin + 1), min(h, math.ceil(y_max) + margin + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    return y0, y1, x0, x1


def paste_masks(inverse: torch.Tensor, face_hw: tuple[int, int], size: tuple[int, int],
                erosion: float = OFFICIAL_EROSION, feather: float = OFFICIAL_FEATHER,
                dtype=torch.float32, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(eroded hard mask, soft mask), both (H, W), of a face of `face_hw` pasted by `inverse` into `size`."""
    ones = torch.ones(1, *face_hw, dtype=dtype, device=device)
    inv_mask = warp_affine(ones, inverse, size)[0]
    eroded = erode(inv_mask, BORDER_EROSION)
    side = int(float(eroded.sum()) ** 0.5)
    center = erode(eroded, edge_size(side, erosion))
    soft = gaussian_blur(center, edge_size(side, feather) + 1)
    return eroded, soft


@dataclass
class PasteResult:
    image: torch.Tensor  # (C, H, W) the background with every face pasted
    faces_only: torch.Tensor  # (C, H, W) the same faces pasted over black
    mask: torch.Tensor  # (H, W) the union (maximum) of the soft masks


def paste_faces(background: torch.Tensor, faces: list[torch.Tensor] | torch.Tensor, inverses: torch.Tensor,
                erosion: float = OFFICIAL_EROSION, feather: float = OFFICIAL_FEATHER) -> PasteResult:
    """Paste `faces` (each (C, h, w)) into `background` (C, H, W) through `inverses` ((N, 2, 3), crop -> image)."""
    out = background.clone()
    faces_only = torch.zeros_like(background)
    union = torch.zeros(background.shape[-2:], dtype=background.dtype, device=background.device)
    image_hw = tuple(background.shape[-2:])
    for face, inverse in zip(faces, inverses):
        face = face.to(device=background.device, dtype=background.dtype)
        face_hw = tuple(face.shape[-2:])
        window = face_window(inverse, face_hw, image_hw, erosion + feather)
        if window is None:
            continue
        y0, y1, x0, x1 = window
        shifted = inverse.clone().to(torch.float64)
        shifted[:, 2] -= torch.tensor([x0, y0], dtype=torch.float64)
        size = (y1 - y0, x1 - x0)
        inv_restored = warp_affine(face, shifted, size)
        eroded, soft = paste_masks(shifted, face_hw, size, erosion, feather, background.dtype, background.device)
        pasted = eroded * inv_restored
        inside = soft > 0
        for target in (out, faces_only):
            region = target[:, y0:y1, x0:x1]
            target[:, y0:y1, x0:x1] = torch.where(inside, soft * pasted + (1 - soft) * region, region)
        union[y0:y1, x0:x1] = torch.maximum(union[y0:y1, x0:x1], soft)
    return PasteResult(out, faces_only, union)
