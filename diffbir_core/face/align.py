"""Face alignment: the FFHQ five-point template, the similarity transform onto it and the affine warp.

Official behaviour (DiffBIR `utils/face.py`, a copy of facexlib's `FaceRestoreHelper`):

* the template holds the left eye, right eye, nose tip and the two mouth corners of an FFHQ face at
  512 x 512, scaled by ``face_size / 512`` for other crop sizes;
* the matrix is the 4-degree-of-freedom similarity (rotation, uniform scale, translation) from the five
  detected landmarks to the template, officially ``cv2.estimateAffinePartial2D(..., method=cv2.LMEDS)``.
  With five points and no outliers LMEDS ends in the least-squares fit of the inliers, which is what we
  compute directly (no random sampling, so the same landmarks always give the same matrix);
* crops are ``cv2.warpAffine`` with bilinear interpolation and a constant grey border. DiffBIR hands RGB
  arrays to this BGR-minded code, so the border (135, 133, 132) lands on R, G, B in that order.

Matrices are (..., 2, 3) float64 in OpenCV's convention: they map source pixel coordinates to destination
pixel coordinates, pixel centres at integers. `warp_affine` turns them into `grid_sample` grids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FACE_SIZE = 512
# facexlib's "standard 5 landmarks for FFHQ faces with 512 x 512": left eye, right eye, nose, mouth left, right.
FFHQ_TEMPLATE_512 = (
    (192.98138, 239.94708), (318.90277, 240.1936), (256.63416, 314.01935),
    (201.26117, 371.41043), (313.08905, 371.15118),
)
# cv2.warpAffine's borderValue in align_warp_face, read as R, G, B (see the module docstring).
CROP_BORDER_RGB = (135 / 255, 133 / 255, 132 / 255)


def face_template(face_size: int = FACE_SIZE) -> torch.Tensor:
    """The five template points (5, 2) for a square crop of `face_size` pixels (official scaling)."""
    return torch.tensor(FFHQ_TEMPLATE_512, dtype=torch.float64) * (face_size / FACE_SIZE)


def similarity_transform(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity mapping points `src` (..., K, 2) onto `dst` (..., K, 2): (..., 2, 3) float64.

    Solves x' = a x - b y + tx, y' = b x + a y + ty for (a, b, tx, ty) over all K points.
    """
    src = torch.as_tensor(src, dtype=torch.float64)
    dst = torch.as_tensor(dst, dtype=torch.float64).expand_as(src)
    x, y = src[..., 0], src[..., 1]
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_x = torch.stack([x, -y, one, zero], -1)
    rows_y = torch.stack([y, x, zero, one], -1)
    a_mat = torch.cat([rows_x, rows_y], -2)  # (..., 2K, 4)
    rhs = torch.cat([dst[..., 0], dst[..., 1]], -1).unsqueeze(-1)
    a, b, tx, ty = torch.linalg.lstsq(a_mat, rhs).solution.squeeze(-1).unbind(-1)
    return torch.stack([torch.stack([a, -b, tx], -1), torch.stack([b, a, ty], -1)], -2)


def invert_affine(matrix: torch.Tensor) -> torch.Tensor:
    """The inverse of (..., 2, 3) affine matrices (``cv2.invertAffineTransform``)."""
    matrix = torch.as_tensor(matrix, dtype=torch.float64)
    inv = torch.linalg.inv(matrix[..., :2])
    return torch.cat([inv, -(inv @ matrix[..., 2:])], -1)


def compose_affine(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """outer o inner: apply `inner`, then `outer` (both (..., 2, 3))."""
    outer = torch.as_tensor(outer, dtype=torch.float64)
    inner = torch.as_tensor(inner, dtype=torch.float64)
    return torch.cat([outer[..., :2] @ inner[..., :2], outer[..., :2] @ inner[..., 2:] + outer[..., 2:]], -1)


def apply_affine(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Points (..., K, 2) mapped by (..., 2, 3)."""
    matrix = torch.as_tensor(matrix, dtype=torch.float64)
    points = torch.as_tensor(points, dtype=torch.float64)
    return points @ matrix[..., :2].transpose(-1, -2) + matrix[..., 2].unsqueeze(-2)


def resize_matrix(from_size: tuple[int, int], to_size: tuple[int, int]) -> torch.Tensor:
    """Pixel-centre mapping from an image of (H, W) `from_size` to the same picture at `to_size`."""
    sy, sx = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return torch.tensor([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]], dtype=torch.float64)


def warp_affine(image: torch.Tensor, matrix: torch.Tensor, size: tuple[int, int],
                border: float | tuple[float, ...] = 0.0) -> torch.Tensor:
    """``cv2.warpAffine(image, matrix, (W, H), INTER_LINEAR, BORDER_CONSTANT, border)`` for float images.

    `image` (C, H, W) or (1, C, H, W); `matrix` (2, 3) maps source to destination pixels; `size` is the
    destination (H, W). Bilinear, with samples outside the source taking `border` (per channel or one value),
    which is exactly zero-padded sampling of ``image - border`` plus ``border``.
    """
    squeeze = image.dim() == 3
    x = image.unsqueeze(0) if squeeze else image
    _, c, h_src, w_src = x.shape
    back = invert_affine(matrix)  # destination pixel -> source pixel
    h, w = size
    ys = torch.arange(h, dtype=torch.float64, device=x.device).view(h, 1)
    xs = torch.arange(w, dtype=torch.float64, device=x.device).view(1, w)
    back = back.to(x.device)
    sx = back[0, 0] * xs + back[0, 1] * ys + back[0, 2]
    sy = back[1, 0] * xs + back[1, 1] * ys + back[1, 2]
    # grid_sample with align_corners=False puts pixel i's centre at (2i + 1) / n - 1.
    grid = torch.stack([(2 * sx + 1) / w_src - 1, (2 * sy + 1) / h_src - 1], -1).unsqueeze(0).to(x.dtype)
    border_t = torch.as_tensor(border, dtype=x.dtype, device=x.device).reshape(-1)
    if border_t.numel() not in (1, c):
        raise ValueError(f"border: expected 1 or {c} values, got {border_t.numel()}")
    border_t = border_t.view(1, -1, 1, 1)
    has_border = bool((border_t != 0).any())
    src = x - border_t if has_border else x
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if has_border:
        out = out + border_t
    return out[0] if squeeze else out


def crop_face(image: torch.Tensor, matrix: torch.Tensor, face_size: int = FACE_SIZE) -> torch.Tensor:
    """The aligned square crop (C, S, S) of `image` (C, H, W) under `matrix`, with the official grey border."""
    return warp_affine(image, matrix, (face_size, face_size), CROP_BORDER_RGB[: image.shape[-3]])
